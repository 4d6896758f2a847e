"""What to do when the loss or the gradients stop being finite: never train on silently."""
from __future__ import annotations

from runner.errors import UserError


class NonFiniteError(UserError):
    """Training stopped because of non-finite values, as the configured policy says. Not a
    mistake in the input but a failed run: exit status 1, shown without a stack trace."""

    exit_status = 1


class NonFinitePolicy:
    """``skip``: drop the step and count it; ``abort_after``: also abort after ``patience`` in a
    row; ``abort``: abort at the first one."""

    def __init__(self, policy: str = "abort_after", patience: int = 3):
        self.policy = policy
        self.patience = patience
        self.skipped = 0
        self.in_a_row = 0

    def ok(self) -> None:
        self.in_a_row = 0

    def bad(self, where: str, what: str) -> None:
        """Record a non-finite step; raise when the policy says to stop."""
        self.skipped += 1
        self.in_a_row += 1
        if self.policy == "abort" or (self.policy == "abort_after" and self.in_a_row >= self.patience):
            rule = "abort" if self.policy == "abort" else f"abort_after with patience {self.patience}"
            raise NonFiniteError(
                f"training stopped: non-finite {what} at {where} ({self.in_a_row} bad step(s) in a row, "
                f"{self.skipped} in all; train.nonfinite.policy={rule}). Check the data for NaN/Inf, "
                "lower train.lr, or set train.grad_clip."
            )
