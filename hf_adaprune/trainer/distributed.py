"""What keeps several processes pruning one model: averaged scores, a check that the masks agree."""

from __future__ import annotations

import torch


def reduced_scores(accelerator, scores: dict[str, torch.Tensor], names: list[str], device) -> dict[str, torch.Tensor]:
    """``scores`` averaged over all processes, so that every rank selects the same structures."""
    missing = [n for n in names if n not in scores]
    if missing:
        raise RuntimeError(f"no importance scores yet for {missing[:3]}...: did any gradient reach them?")
    flat = torch.cat([scores[n].float().to(device) for n in names])
    if accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, reduction="mean")
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = flat[offset:offset + size].cpu()
        offset += size
    return out


def reduce_layer_taylor(accelerator, masks) -> None:
    """Average each layer stack's dL/dg over the processes, in place, before the importance reads it.

    Head and neuron scores read ``.grad``, which DDP has averaged; a layer gate's hook sees only its own process's
    micro-batches. Averaging the signed sums, before the importance takes their absolute value, gives what one
    process with the whole batch would read (a mean of absolute values would not)."""
    if accelerator.num_processes == 1 or masks is None or not masks.layer_taylor:
        return
    names = sorted(masks.layer_taylor)
    flat = accelerator.reduce(torch.cat([masks.layer_taylor[n] for n in names]), reduction="mean")
    offset = 0
    for n in names:
        accumulator = masks.layer_taylor[n]
        accumulator.copy_(flat[offset:offset + accumulator.numel()])
        offset += accumulator.numel()


def from_main_process(accelerator, value):
    """``value`` as the main process holds it, on every process: for what each rank measures for itself (a latency
    table), which would otherwise let the ranks select different structures."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def failing_processes(accelerator, failed: bool, device) -> list[int]:
    """The processes where ``failed`` is true, on every process (so that all take the same branch after a step
    that may fail on some: one going on alone would wait in the next collective for ever)."""
    if accelerator.num_processes == 1:
        return [0] if failed else []
    flags = accelerator.gather(torch.tensor([float(failed)], device=device))
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def check_masks_agree(accelerator, masks: dict[str, torch.Tensor], groups, device) -> None:
    """All ranks must select the same masks (``{group: mask}``), checked before they touch the model: a mismatch
    would silently corrupt it, and the re-fit's collectives would not even match. The checksums are compared
    exactly: float64 sums of position-weighted mask values are exact for 0/1 masks (below 2**53) and the same
    on every rank for the same values, where a relative tolerance let two swapped neurons of a BERT-base pass."""
    if accelerator.num_processes == 1:
        return
    flat = torch.cat([masks[g.name].float().flatten().to(device) for g in groups])
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
    checksum = torch.stack([(flat.double() * weights).sum(), flat.double().sum()]).unsqueeze(0)
    gathered = accelerator.gather(checksum)
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise RuntimeError(f"pruning masks differ across processes (checksums {gathered.tolist()}); refusing to train on")
