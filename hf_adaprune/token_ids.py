"""Id settings of configs and generation configs (``eos_token_id``, ``suppress_tokens``, ...) as flat lists."""

from __future__ import annotations

import torch


def token_id_list(value) -> list[int]:
    """None -> [], 3 -> [3], [1, [2, 3]] -> [1, 2, 3], a tensor -> its values."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(i) for i in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [i for item in value for i in token_id_list(item)]
    return [int(value)]
