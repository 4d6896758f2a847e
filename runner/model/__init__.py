"""Model: config tree -> torch modules with stable dotted names, access and summary."""
from runner.model.build import Network, build_model, check_model

__all__ = ["Network", "build_model", "check_model"]
