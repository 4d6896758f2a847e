"""Model: config tree -> torch modules with stable dotted names, access and summary."""
from runner.model.build import Network, build_model, check_model
from runner.model.ties import tie_map

__all__ = ["Network", "build_model", "check_model", "tie_map"]
