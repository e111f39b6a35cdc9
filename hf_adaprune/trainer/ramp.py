"""``pruning_ramp_steps``: the structures a pruning step removes fade out instead of vanishing at once.

Without a ramp, a pruning step sets the selected 0/1 masks at the end of an optimizer step. With
``R`` ramp steps the masks move from the accepted ones to the selected ones over the next ``R``
optimizer steps: during the k-th step after the pruning step (k = 1 .. R) they are
``accepted + (selected - accepted) * k / (R + 1)`` (a removed structure is scaled by ``1 - k / (R + 1)``),
and from the end of the R-th step on they are exactly the selected 0/1 masks. The decision comes
``pruning_interval`` (or ``pruning_search_steps``) steps after the pruning step, never before the ramp
has ended (refused when parsed), so decisions, roll-backs and compaction see 0/1 masks only.

The values are a function of step counts alone: every process computes the same masks, and a run
resumed from a checkpoint taken mid-ramp continues with the masks the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskRamp:
    start_step: int  # the optimizer step at whose end the masks were selected
    steps: int  # R
    start: dict[str, torch.Tensor]  # the accepted 0/1 masks it leaves
    target: dict[str, torch.Tensor]  # the selected 0/1 masks it reaches

    def progress(self, step: int) -> float:
        """The fraction of the way from ``start`` to ``target`` for the optimizer step after ``step``."""
        return min(1.0, (step - self.start_step + 1) / (self.steps + 1))

    def finished(self, step: int) -> bool:
        return step - self.start_step >= self.steps

    def masks_at(self, step: int) -> dict[str, torch.Tensor]:
        """The masks the optimizer step after ``step`` trains with (``target`` itself once finished)."""
        if self.finished(step):
            return self.target
        fraction = self.progress(step)
        return {name: self.start[name] + (mask - self.start[name]) * fraction for name, mask in self.target.items()}

    def state_dict(self) -> dict:
        return {"start_step": self.start_step, "steps": self.steps, "start": self.start, "target": self.target}

    @classmethod
    def from_state_dict(cls, state: dict | None) -> "MaskRamp | None":
        return None if state is None else cls(**state)


def ramp_problem(args, interval: int, interval_name: str) -> str | None:
    """Why ``--pruning_ramp_steps`` cannot work with this schedule (None when it can)."""
    ramp = args.pruning_ramp_steps
    if ramp < 0:
        return f"--pruning_ramp_steps must be >= 0 (0: no ramp); got {ramp}"
    if ramp > interval:
        return (f"--pruning_ramp_steps {ramp} exceeds --{interval_name} {interval}: a candidate would be judged "
                f"before its removed structures have faded to 0. Use --pruning_ramp_steps <= {interval} or raise "
                f"--{interval_name}.")
    return None
