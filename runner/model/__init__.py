"""Model: config tree (or your own module) -> torch model with stable dotted names, access and summary."""
from runner.model.build import build_model, check_model, parse_model
from runner.model.layers import BuildContext
from runner.model.network import ModuleInfo, Network
from runner.model.ties import tie_map

__all__ = ["BuildContext", "ModuleInfo", "Network", "build_model", "check_model", "parse_model", "tie_map"]
