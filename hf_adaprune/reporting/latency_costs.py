"""Measured cost of each structure: the lookup table behind ``--pruning_target_type latency``.

Before training, the model runs a few times on the current device with forward hooks timing every module a
group consists of (the attention block, the FFN linears, each whole layer). An encoder (or any model that does not
generate) runs ``forward`` at ``pruning_latency_batch_size`` x ``pruning_latency_seq_len``; an encoder-decoder runs
``generate`` of exactly ``pruning_generation_tokens`` tokens, so the decoder's modules are timed over every token
and the encoder's once, as a user waiting on ``generate`` pays them; a decoder-only language model runs ``generate``
of as many tokens after a prompt of ``pruning_latency_seq_len`` tokens (the prompt's pass, then every token). A
module's time is the median over the runs; one structure costs its module's time divided by the structures it holds
(a layer: its whole time, which includes the fixed per-layer overhead no width pruning removes). The target is then
a fraction of the measured time of the prunable modules instead of their FLOPs.

Noise: the times come from the machine as it is at start-up (other jobs, frequency scaling), so the table differs
from run to run by a few percent on an idle machine and more on a busy one; :func:`latency_costs` logs the spread
(90th percentile / median of the total per run). Selection only needs the costs' proportions, which move less.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
from torch import nn

from ..modes import restore_modes, training_modes
from ..plain_forward import plain_forward
from .flops import example_inputs, per_layer_costs, structure_modules

logger = logging.getLogger(__name__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ModuleTimer:
    """Forward pre/post hooks adding each module's wall time to ``totals`` (device synchronised around it)."""

    def __init__(self, base: nn.Module, paths: list[str], device: torch.device):
        self.totals = dict.fromkeys(paths, 0.0)
        self.device = device
        self._started: dict[str, list[float]] = {p: [] for p in paths}
        self._handles = []
        for path in paths:
            module = base.get_submodule(path)
            self._handles.append(module.register_forward_pre_hook(self._pre(path)))
            self._handles.append(module.register_forward_hook(self._post(path)))

    def _pre(self, path):
        def hook(module, args):
            _synchronize(self.device)
            self._started[path].append(time.perf_counter())
        return hook

    def _post(self, path):
        def hook(module, args, output):
            _synchronize(self.device)
            self.totals[path] += time.perf_counter() - self._started[path].pop()
        return hook

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def timing_device_note(model: nn.Module, training_device) -> str | None:
    """A warning when the cost table would time ``model`` on another kind of device than the one training runs on
    (None when they agree): the table is measured where the model is while the trainer is built."""
    where = next(model.parameters()).device
    training = torch.device(training_device)
    if where.type == training.type:
        return None
    return (f"pruning_target_type=latency times every structure on {where.type}, where the model is while the trainer "
            f"is built, but training runs on {training} (the Trainer places the model there later under "
            f"fp16_full_eval / bf16_full_eval, DeepSpeed or FSDP): the cost table measures another device. Move the "
            f"model to the device you will serve on before building the trainer")


def generates_tokens(model: nn.Module) -> bool:
    """Whether the table times ``generate`` (an encoder-decoder that generates, or a decoder-only language model:
    ``...ForCausalLM``) rather than ``forward``."""
    if getattr(model.config, "is_encoder_decoder", False):
        return hasattr(model, "generate")
    can_generate = getattr(model, "can_generate", None)
    return callable(can_generate) and bool(can_generate())


@torch.no_grad()
def latency_costs(model: nn.Module, groups, batch_size: int = 1, seq_len: int = 128, generation_tokens: int = 16,
                  repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Seconds per structure of each group, measured on ``model``'s device (see the module docstring)."""
    base = model.base_model
    device = next(model.parameters()).device
    paths = sorted({p for g in groups for p in structure_modules(base, g)})
    inputs = example_inputs(model, seq_len=seq_len, batch_size=batch_size)
    generates = generates_tokens(model)
    if generates:
        inputs = {k: v for k, v in inputs.items() if not k.startswith("decoder_")}

    def run():
        if not generates:
            model(**inputs)
            return
        try:
            model.generate(**inputs, min_new_tokens=generation_tokens, max_new_tokens=generation_tokens,
                           num_beams=1, do_sample=False)
        except ValueError as err:  # e.g. the tokens and the decoder prompt generate() adds (Whisper's language and
            # task tokens) beyond the decoder's positions
            raise ValueError(f"--pruning_generation_tokens {generation_tokens}: generating that many tokens to time "
                             f"the decoder failed ({' '.join(str(err).split())}); give a smaller "
                             "--pruning_generation_tokens") from err

    modes = training_modes(model)
    model.eval()
    timer = _ModuleTimer(base, paths, device)
    runs = []
    try:
        with plain_forward(model):  # a model trained with bf16 / fp16 before: timed in float32, as it is saved
            for index in range(warmup + repeats):
                timer.reset()
                run()
                if index >= warmup:
                    runs.append(dict(timer.totals))
    finally:
        timer.remove()
        restore_modes(modes)
    median = {p: statistics.median(r[p] for r in runs) for p in paths}
    # each module once: a layer's time holds its attention's and FFN's
    outer = [p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths)]
    totals = sorted(sum(r[p] for p in outer) for r in runs)
    logger.info("latency table: %d runs, prunable modules %.2f ms median, slowest run / median %.3f",
                len(runs), 1000 * statistics.median(totals), totals[-1] / max(statistics.median(totals), 1e-12))
    return per_layer_costs(base, groups, median)
