"""Word and character error rates of the ASR recipe: Whisper's generated ids and CTC's greedy ids."""

from __future__ import annotations

import numpy as np

from recipes.arguments import RecipeError
from recipes.skeleton import combine_metrics

ASR_METRICS = ("wer", "cer")


def error_rates(hypotheses: list[str], references: list[str], names=ASR_METRICS) -> dict[str, float]:
    """WER / CER (fractions) of normalised texts with hf_adaprune's metrics."""
    from hf_adaprune.metrics import headline_value

    out = {}
    for name in names:
        result = _metric(name).compute(predictions=hypotheses, references=references)
        out[name] = headline_value(name, result)
    return out

_METRICS: dict[str, object] = {}

def _metric(name: str):
    from hf_adaprune.metrics import load_metric

    if name not in _METRICS:
        try:
            _METRICS[name] = load_metric(name)
        except (ValueError, ImportError) as err:
            raise RecipeError(f"metric {name!r} cannot be loaded: {err}") from err
    return _METRICS[name]

def seq2seq_compute_metrics(tokenizer, normalize):
    """``compute_metrics`` for generated ids: hf_adaprune's generation metrics (decode, normalise) for WER and CER."""
    from hf_adaprune.task_metrics import generation_metrics

    return combine_metrics([generation_metrics(name, tokenizer, normalize=normalize) for name in ASR_METRICS])

def ctc_argmax(logits, labels):
    """``preprocess_logits_for_metrics``: keep only the argmax ids (the logits of a whole eval set are large)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)

def batch_dependence(config, feature_extractor) -> str | None:
    """Why a CTC model's transcripts change with the clips batched beside them, or None where they do not (an
    attention mask and a feature encoder that normalises each frame: blank_padding_frames does the rest)."""
    if not getattr(feature_extractor, "return_attention_mask", False):
        return "its feature extractor returns no attention mask, so the padding of shorter clips reaches the encoder"
    if getattr(config, "feat_extract_norm", "layer") == "group":
        return "its feature encoder's group norm (feat_extract_norm='group') normalises over the whole padded clip"
    return None


def blank_padding_frames(model) -> None:
    """In eval mode, the CTC logits of frames past each clip's end (the padding of a batch's shorter clips) predict
    the blank (``pad_token_id``), so a clip's greedy transcript is the same whatever it is batched with.

    A forward hook on ``model``: it reads the ``attention_mask`` the collator passes (models whose feature extractor
    gives none see padding as the model was trained to) and leaves training, and the loss, untouched.
    """
    import torch

    def hook(module, args, kwargs, output):
        mask = kwargs.get("attention_mask")
        if module.training or mask is None or getattr(output, "logits", None) is None:
            return None
        logits = output.logits
        frames = module._get_feat_extract_output_lengths(mask.sum(-1)).to(logits.device)
        padding = torch.arange(logits.shape[1], device=logits.device)[None, :] >= frames[:, None]
        blank = torch.full_like(logits[0, 0], float("-inf"))
        blank[module.config.pad_token_id] = 0.0
        output.logits = torch.where(padding[..., None], blank, logits)
        return output

    if hasattr(model, "_get_feat_extract_output_lengths"):
        model.register_forward_hook(hook, with_kwargs=True)


def ctc_texts(ids, tokenizer, labels: bool = False) -> list[str]:
    """CTC ids (-100 or other negatives: padding) as text: greedy ids collapsed, labels decoded without grouping."""
    ids = np.asarray(ids)
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return tokenizer.batch_decode(ids, group_tokens=False) if labels else tokenizer.batch_decode(ids)


def ctc_compute_metrics(tokenizer, normalize):
    """``compute_metrics`` for CTC: greedy ids -> collapsed text; labels decoded without grouping."""

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        hypotheses = [normalize(t) for t in ctc_texts(predictions, tokenizer)]
        references = [normalize(t) for t in ctc_texts(eval_pred.label_ids, tokenizer, labels=True)]
        return error_rates(hypotheses, references)

    return compute_metrics
