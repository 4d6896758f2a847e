"""Init: initializers by name, per-pattern rules with a report, direct edits, warm starts."""
from runner.init.edits import apply_edits, edit_param
from runner.init.rules import InitReport, apply_init, check_init, generator_for, stream_seed

__all__ = ["InitReport", "apply_init", "apply_edits", "check_init", "edit_param", "generator_for", "stream_seed"]
