"""How the trainer walks to its ratio (``--pruning_schedule``) and the re-check of the final model.

* ``gradual``: prune a step, fine-tune ``pruning_interval`` steps, decide, repeat; the controller
  grows its steps from the last kept ratio (``search="grow"``).
* ``search_then_recover``: after the warm-up the target is tried at once and the controller
  bisects between the largest kept and the smallest rolled-back ratio (``search="bisect"``), each
  candidate judged ``pruning_search_steps`` steps after masking (0: at once, the whole search in
  one step); the rest of the budget fine-tunes at the chosen shape.

Under both, the metric of the model handed back is measured once more after training
(:func:`final_check`): the last decision may predate much of the training that followed it.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

SCHEDULES = ("gradual", "search_then_recover")
_SEARCH = {"gradual": "grow", "search_then_recover": "bisect"}


def controller_search(args) -> str:
    """The :class:`AdaptiveController` ``search`` mode of ``--pruning_schedule``."""
    return _SEARCH[args.pruning_schedule]


def interval_option(args) -> str:
    """The argument holding the training steps between applying a ratio and judging it."""
    return "pruning_search_steps" if args.pruning_schedule == "search_then_recover" else "pruning_interval"


def decision_interval(args) -> int:
    return getattr(args, interval_option(args))


def final_check(controller, metric: float, step: int, metric_name: str) -> dict:
    """The final model's ``metric`` against the controller's reference and tolerance (warns when beyond)."""
    check = {"step": step, "metric": metric, "reference": controller.state.reference,
             "drop": controller.drop(metric), "allowed_drop": controller.allowed_drop(),
             "within_tolerance": controller.within_tolerance(metric)}
    if not (math.isfinite(metric) and math.isfinite(check["reference"])):
        logger.warning("the final model's %s is %s against the reference %s: no finite pair to compare, so it "
                       "does not count as within the tolerance", metric_name, metric, check["reference"])
    elif not check["within_tolerance"]:
        worse = "below" if controller.greater_is_better else "above"
        logger.warning("the final model's %s %.4f is %.4f %s the reference %.4f, beyond the tolerance %.4f",
                       metric_name, metric, check["drop"], worse, check["reference"], check["allowed_drop"])
    return check
