"""The adaptive ratio: grow sparsity while the metric stays within tolerance.

Pure bookkeeping, no model: the trainer asks :meth:`AdaptiveController.propose`
for the next ratio, prunes to it, fine-tunes, evaluates and reports the metric to
:meth:`AdaptiveController.decide`. Within tolerance of the reference the step is
kept (and the step size grows by ``growth``); beyond it the step is rolled back
and the next step is half the one just tried. It stops when the target is reached,
when the step size falls below ``min_step``, or when the trainer says training ended.

Two ways to walk towards the target (``search``):

* ``"grow"`` (the gradual schedule): steps from the last kept ratio, growing after each
  keep; a ratio rolled back may be tried again later, after more training has let the
  model recover.
* ``"bisect"`` (the search-then-recover schedule, whose candidates get little or no
  training): the target first; after a roll-back, the midpoint between the last kept ratio
  and the smallest rolled-back one (the ``ceiling``), so no ratio beyond a failed one is
  tried again and the search ends after about ``log2(target / min_step)`` evaluations.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field

KEEP, ROLLBACK = "keep", "rollback"
SEARCHES = ("grow", "bisect")
# a kept target whose masks reach this much less than it (rounding to whole structures) still counts as reached
SELECTION_SLACK = 0.02


@dataclass
class ControllerState:
    reference: float | None = None
    ratio: float = 0.0  # last accepted ratio (the schedule steps from it)
    selected: float = 0.0  # the sparsity the accepted masks actually reach (floors, whole structures)
    step: float = 0.0
    pending: float | None = None  # ratio being tried
    ceiling: float | None = None  # bisect: the smallest ratio rolled back so far
    done: bool = False
    stop_reason: str | None = None
    history: list[dict] = field(default_factory=list)


@dataclass
class AdaptiveController:
    target: float
    initial_step: float = 0.1
    min_step: float = 0.0125
    tolerance: float = 0.01
    tolerance_type: str = "absolute"  # absolute | relative
    greater_is_better: bool = True
    growth: float = 1.0
    search: str = "grow"  # grow | bisect (see the module docstring)
    # grow: may a step reach a ratio at or beyond one rolled back? Yes where training between tries may make it
    # feasible; no for tries without training (post-training pruning), whose failure stands: steps stop halfway
    retry_failed: bool = True
    state: ControllerState = field(default_factory=ControllerState)

    def __post_init__(self):
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {self.target}")
        if not self.tolerance >= 0:  # NaN too
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.tolerance_type not in ("absolute", "relative"):
            raise ValueError(f"tolerance_type must be 'absolute' or 'relative', got {self.tolerance_type!r}")
        if not 0.0 < self.min_step <= self.initial_step:
            raise ValueError(f"need 0 < min_step <= initial_step, got {self.min_step} and {self.initial_step}")
        if not self.growth >= 1.0:  # NaN too
            raise ValueError(f"growth must be >= 1, got {self.growth}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")

    # -- metric arithmetic -----------------------------------------------------------------------
    def allowed_drop(self) -> float:
        ref = self.state.reference
        return self.tolerance * abs(ref) if self.tolerance_type == "relative" else self.tolerance

    def drop(self, metric: float) -> float:
        """How much worse ``metric`` is than the reference (negative when better)."""
        delta = self.state.reference - metric
        return delta if self.greater_is_better else -delta

    def within_tolerance(self, metric: float) -> bool:
        """Whether ``metric`` is within the tolerance of the reference; never for a NaN or infinite one (or
        reference): ``inf - inf`` is NaN and ``x - inf`` is ``-inf``, which would count as no drop at all."""
        if not (math.isfinite(metric) and math.isfinite(self.state.reference)):
            return False
        return self.drop(metric) <= self.allowed_drop() + 1e-12

    # -- protocol --------------------------------------------------------------------------------
    def start(self, reference: float, propose: bool = True) -> float | None:
        """Record the dense reference metric; returns the first ratio to try (``propose=False``: None, and nothing
        is pending until :meth:`propose`)."""
        first_step = self.target if self.search == "bisect" else self.initial_step
        self.state = ControllerState(reference=float(reference), step=first_step)
        self.state.history.append({"event": "reference", "ratio": 0.0, "metric": float(reference)})
        return self.propose() if propose else None

    def propose(self) -> float:
        s = self.state
        if s.reference is None:
            raise RuntimeError("propose() before start(reference): the controller needs the dense metric first")
        s.pending = min(self.target, s.ratio + s.step)
        return s.pending

    def decide(self, metric: float, selected: float | None = None) -> str:
        """Judge the pending ratio by ``metric``; returns ``"keep"`` or ``"rollback"``.

        ``selected`` is the sparsity the masks actually reached for the pending ratio
        (selection can fall short of it: whole structures, per-layer floors); a kept
        step records that as the accepted sparsity, so reports give what was pruned.
        """
        s = self.state
        if s.pending is None or s.done:
            raise RuntimeError("decide() called with no pending pruning step")
        tried = s.pending
        selected = tried if selected is None else float(selected)
        decision = KEEP if self.within_tolerance(metric) else ROLLBACK
        s.history.append({"event": decision, "ratio": tried, "selected": selected, "metric": float(metric),
                          "step": s.step, "drop": self.drop(metric)})
        s.pending = None
        if decision == KEEP:
            s.ratio, s.selected = tried, selected
            s.step *= self.growth
            # the masks for the target itself were kept: what they reach (rounding to whole structures) is final
            if tried >= self.target - 1e-9:
                self.stop("target reached" if selected >= tried - SELECTION_SLACK else
                          f"target tried, but the selection stops at {selected:.3f} (per-layer floors, whole "
                          "structures or rounding to pruning_multiple_of keep it there)")
                return decision
        else:
            # half the step actually taken: a step cut short by the target is not retried at full length
            s.step = min(s.step, tried - s.ratio) / 2
            s.ceiling = tried if s.ceiling is None else min(s.ceiling, tried)
        if self.search == "bisect" and s.ceiling is not None:
            s.step = (s.ceiling - s.ratio) / 2  # the midpoint of what is known to keep and what is known to fail
        elif not self.retry_failed and s.ceiling is not None:
            s.step = min(s.step, (s.ceiling - s.ratio) / 2)  # never at or beyond a ratio that failed
        if s.step < self.min_step - 1e-12:
            self.stop("step below minimum")
        return decision

    def resume_towards_target(self) -> bool:
        """A state that stopped at its target, loaded under a higher ``target`` (a resume with new arguments), goes
        on pruning towards it; returns whether it does."""
        s = self.state
        if not (s.done and (s.stop_reason or "").startswith("target") and self.target > s.ratio + 1e-9):
            return False
        s.done, s.stop_reason = False, None
        s.history.append({"event": "resume", "ratio": s.ratio, "reason": f"target raised to {self.target}"})
        return True

    def stop(self, reason: str) -> None:
        if not self.state.done:
            self.state.done, self.state.stop_reason, self.state.pending = True, reason, None
            self.state.history.append({"event": "stop", "ratio": self.state.ratio, "reason": reason})

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = ControllerState(**state)
