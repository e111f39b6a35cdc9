"""How a pruning step's candidate masks enter the model and how a rolled-back one leaves it.

The selected 0/1 masks are set at once, or along a ramp (:mod:`.ramp`, ``--pruning_ramp_steps``);
once they are in place the output projections of the groups they cut may be re-fitted
(:mod:`.search_refit`, ``--pruning_refit``). Before a decision the ramp is ended, so the metric is
measured on 0/1 masks; a roll-back restores the accepted masks and undoes the re-fit.
"""

from __future__ import annotations

import contextlib
import logging

from ..engine.masks import get_masks
from ..post_training.refit import DEFAULT_RIDGE
from .decision_rng import decision_rng
from .ramp import MaskRamp
from .search_refit import refit_calibration_batches, refit_candidate, undo_refit

logger = logging.getLogger(__name__)


class CandidateMasksMixin:
    """Trainer methods for the candidate masks; expects ``pruned_model``, ``pruning_groups``, ``_accepted_masks``."""

    def _reset_candidate(self) -> None:
        self._ramp: MaskRamp | None = None
        self._refit_change: dict | None = None  # what the re-fit of the pending candidate changed
        self._refit_batches: list[dict] | None = None
        self._refit_warned: set[str] = set()  # groups a re-fit warned about (too few tokens): named once a run

    def _set_candidate(self, selected: dict, step: int) -> None:
        """Put the selected masks in place (end of optimizer ``step``): at once, or the ramp's first values."""
        masks = get_masks(self.pruned_model)
        if self.args.pruning_ramp_steps > 0:
            self._ramp = MaskRamp(step, self.args.pruning_ramp_steps, dict(self._accepted_masks),
                                  {name: mask.detach().cpu().clone() for name, mask in selected.items()})
            masks.update(self._ramp.masks_at(step))
        else:
            masks.update(selected)
            self._candidate_in_place()

    def _advance_ramp(self, step: int) -> None:
        """At the end of optimizer ``step``: the masks the next step trains with."""
        if self._ramp is not None and step > self._ramp.start_step:
            get_masks(self.pruned_model).update(self._ramp.masks_at(step))
            if self._ramp.finished(step):
                self._ramp = None
                self._candidate_in_place()

    def _end_ramp(self) -> None:
        """Before a decision: the candidate's 0/1 masks, even if the ramp was cut short (training ended)."""
        if self._ramp is not None:
            get_masks(self.pruned_model).update(self._ramp.target)
            self._ramp = None
            self._candidate_in_place()

    def _candidate_in_place(self) -> None:
        if not self.args.pruning_refit:
            return
        if self._refit_batches is None:
            # under the decision RNG: a collator that draws (masked-LM masking) takes none of the training's draws
            with decision_rng(self.args.seed, self.args.device, self.data_collator):
                self._refit_batches = refit_calibration_batches(
                    self.pruned_model, self.train_dataset, self.data_collator, self.args.pruning_refit_samples,
                    self.args.per_device_eval_batch_size, self.args.seed, self.args.pruning_refit_long_share,
                    self.args.remove_unused_columns, self.label_names)
        logger.info("re-fitting the output projections the candidate cut (%d batches of training rows)",
                    len(self._refit_batches))
        self._refit_change = refit_candidate(self.pruned_model, get_masks(self.pruned_model), self.pruning_groups,
                                             self._accepted_masks, self._refit_batches, self.accelerator,
                                             DEFAULT_RIDGE, self.args.pruning_refit_target,
                                             progress=not self.args.disable_tqdm and self.is_local_process_zero(),
                                             warned=self._refit_warned)
        logger.info("re-fitted the output projections of %d groups", len(self._refit_change))

    def _accept_candidate(self) -> None:
        self._accepted_masks = get_masks(self.pruned_model).state_dict()
        self._refit_change = None

    def _drop_candidate(self) -> None:
        """Back to the accepted masks and weights (a roll-back, or a candidate no training is left for)."""
        self._ramp = None
        get_masks(self.pruned_model).load_state_dict(self._accepted_masks)
        if self._refit_change is not None:
            undo_refit(self.pruned_model, self._refit_change)
            self._refit_change = None

    def _as_last_decided(self, pruned) -> None:
        """Give ``pruned`` (a copy of the masked model, about to be saved) the structure the last decision left: a
        candidate not judged yet (a save between decisions, or after an interrupted ``train()``) is left out, its
        re-fit undone, with a warning."""
        pending = self.controller.state.pending
        if pending is None:
            return
        logger.warning("pruning: the candidate at sparsity %.3f has not been judged yet; the model is saved as the "
                       "last decision left it (sparsity %.3f)", pending, self.controller.state.ratio)
        get_masks(pruned).load_state_dict(self._accepted_masks)
        if self._refit_change is not None:
            undo_refit(pruned, self._refit_change)

    @contextlib.contextmanager
    def _last_decided_masks(self):
        """The live model under the masks the last decision left while a candidate waits to be judged (the
        structure a save writes, so the report and card read it), its own masks back afterwards."""
        masks = get_masks(self.pruned_model)
        if self.controller.state.pending is None or masks is None or masks.detached:
            yield
            return
        current = masks.state_dict()
        masks.load_state_dict(self._accepted_masks)
        try:
            yield
        finally:
            masks.load_state_dict(current)

    def candidate_state_dict(self) -> dict:
        return {"ramp": None if self._ramp is None else self._ramp.state_dict(), "refit_change": self._refit_change}

    def load_candidate_state_dict(self, state: dict) -> None:
        self._ramp = MaskRamp.from_state_dict(state.get("ramp"))
        self._refit_change = state.get("refit_change")
