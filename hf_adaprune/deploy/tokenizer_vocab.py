"""Tokenizers with a smaller vocabulary: the same segmentation, new ids.

One entry per tokenizer family in :data:`TOKENIZER_FAMILIES`, each saying which
extra tokens must stay for the kept ones to be produced (``required``) and how
to rewrite the saved files for the new ids (``rewrite``). Texts whose tokens are
all kept segment exactly as before; other text goes where the family sends it:

- WordPiece (BERT family): a word that cannot be split into kept pieces becomes
  the unknown token, as any out-of-vocabulary word does.
- BPE (tokenizers' ``BPE``, byte-level or not): merges that need a dropped
  token are removed, so an unseen word falls back to smaller kept pieces, down
  to single characters (all kept, also with the model's subword prefix or
  end-of-word suffix); with a byte-level alphabet, or byte fallback (the
  ``<0x..>`` pieces are kept), any text still encodes without an unknown token.
- Unigram (tokenizers' ``Unigram``): the best segmentation into kept pieces;
  pieces no longer reachable become the unknown token.
- Marian (SentencePiece + ``vocab.json``): SentencePiece segments as before and
  a piece missing from ``vocab.json`` becomes ``<unk>``, as Marian already does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


# a byte piece of a BPE model with byte_fallback (SentencePiece BPE: Llama, Mistral)
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class TokenizerFamily:
    name: str
    # (tokenizer, tokenizer.json dict or None, kept old ids) -> more old ids that must stay
    required: Callable[[object, dict | None, set[int]], set[int]]
    # (folder the tokenizer was saved to, old id -> new id) -> None; edits the files in place
    rewrite: Callable[[Path, dict[int, int]], None]


def _no_extra(tokenizer, spec, kept):
    return set()


def _bpe_merge_result(left: str, right: str, prefix: str | None) -> str:
    return left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)


def _bpe_merges(spec: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]


def _bpe_required(tokenizer, spec, kept):
    """Every token a kept token is merged from (recursively) and the one-character alphabet: each character alone,
    with the continuing-subword prefix (``##é``) and with the end-of-word suffix (``é</w>``), and, where the model
    falls back to bytes, the 256 byte pieces (``<0xE9>``), so that unseen text still splits as it did.

    Without the intermediate tokens BPE could not reach the kept ones; with them, every merge
    the unpruned tokenizer applies to a text of kept tokens is still there and still the
    lowest-ranked, so the segmentation is the same. A token some merges list more than once (a SentencePiece BPE
    converted to tokenizer.json has a merge for every split of a token: ``o ss`` and ``os s``) is reached by
    whichever its text meets first, so the parts of every one of them are kept.
    """
    model = spec["model"]
    vocab = model["vocab"]
    prefix = model.get("continuing_subword_prefix")
    suffix = model.get("end_of_word_suffix")
    made_from: dict[str, set[str]] = {}
    for left, right in _bpe_merges(spec):
        made_from.setdefault(_bpe_merge_result(left, right, prefix), set()).update((left, right))
    id_to_token = {i: t for t, i in vocab.items()}

    def alphabet(token: str) -> bool:
        return (len(token) == 1 or bool(prefix) and token.startswith(prefix) and len(token) == len(prefix) + 1
                or bool(suffix) and token.endswith(suffix) and len(token) == len(suffix) + 1
                or bool(model.get("byte_fallback")) and BYTE_PIECE.fullmatch(token) is not None)

    required = {i for t, i in vocab.items() if alphabet(t)}
    stack = [id_to_token[i] for i in kept if i in id_to_token]
    while stack:
        token = stack.pop()
        for part in made_from.get(token, ()):
            if vocab[part] not in required and vocab[part] not in kept:
                required.add(vocab[part])
                stack.append(part)
    return required


def _remap_json_ids(node, old_to_new: dict[int, int]):
    """Special-token ids inside a post-processor (Template, Bert, Roberta, Sequence of them)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [old_to_new[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                out[key] = [value[0], old_to_new[value[1]]]
            else:
                out[key] = _remap_json_ids(value, old_to_new)
        return out
    if isinstance(node, list):
        return [_remap_json_ids(item, old_to_new) for item in node]
    return node


def _rewrite_tokenizer_json(folder: Path, old_to_new: dict[int, int]):
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    model = spec["model"]
    if model["type"] == "Unigram":
        pieces = model["vocab"]
        # tokens added after training (tokenizer.add_tokens) have ids past the pieces: added_tokens holds them
        kept_pieces = [old for old in sorted(old_to_new, key=old_to_new.get) if old < len(pieces)]
        if any(old_to_new[old] < len(kept_pieces) for old in old_to_new if old >= len(pieces)):
            raise ValueError("a token added to this Unigram tokenizer would be numbered among its pieces; keep "
                             "added tokens after the pieces (decoder_vocabulary cannot reorder them)")
        model["vocab"] = [pieces[old] for old in kept_pieces]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[model["unk_id"]]
    else:
        model["vocab"] = {t: old_to_new[i] for t, i in model["vocab"].items() if i in old_to_new}
    if model["type"] == "BPE":
        prefix = model.get("continuing_subword_prefix")
        vocab = model["vocab"]
        model["merges"] = [[left, right] for left, right in _bpe_merges(spec)
                           if left in vocab and right in vocab and _bpe_merge_result(left, right, prefix) in vocab]
    for added in spec.get("added_tokens", []):
        added["id"] = old_to_new[added["id"]]
    spec["post_processor"] = _remap_json_ids(spec.get("post_processor"), old_to_new)
    path.write_text(json.dumps(spec, ensure_ascii=False))
    _rewrite_added_tokens_decoder(folder, old_to_new)
    vocab_txt = folder / "vocab.txt"  # a slow-tokenizer copy, if one was saved, must agree
    if vocab_txt.exists() and model["type"] == "WordPiece":
        by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
        vocab_txt.write_text("".join(token + "\n" for token, _ in by_id))


def _rewrite_added_tokens_decoder(folder: Path, old_to_new: dict[int, int]):
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return
    config = json.loads(path.read_text())
    if "added_tokens_decoder" in config:
        config["added_tokens_decoder"] = {str(old_to_new[int(i)]): v for i, v in config["added_tokens_decoder"].items()}
        path.write_text(json.dumps(config, ensure_ascii=False, indent=2))


def _rewrite_marian(folder: Path, old_to_new: dict[int, int]):
    path = folder / "vocab.json"
    vocab = json.loads(path.read_text())
    path.write_text(json.dumps({t: old_to_new[i] for t, i in vocab.items() if i in old_to_new}, ensure_ascii=False))
    _rewrite_added_tokens_decoder(folder, old_to_new)


TOKENIZER_FAMILIES = {
    "WordPiece": TokenizerFamily("WordPiece", _no_extra, _rewrite_tokenizer_json),
    "BPE": TokenizerFamily("BPE", _bpe_required, _rewrite_tokenizer_json),
    "Unigram": TokenizerFamily("Unigram", _no_extra, _rewrite_tokenizer_json),
    "Marian": TokenizerFamily("Marian", _no_extra, _rewrite_marian),
}


def tokenizer_family(tokenizer) -> tuple[TokenizerFamily, dict | None]:
    """The family of ``tokenizer`` and its ``tokenizer.json`` as a dict (None for Marian)."""
    if type(tokenizer).__name__ == "MarianTokenizer":
        if getattr(tokenizer, "separate_vocabs", False):
            raise ValueError("vocabulary pruning supports Marian tokenizers with one shared vocab.json; "
                             "this one has separate source and target vocabularies")
        return TOKENIZER_FAMILIES["Marian"], None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        if spec["model"]["type"] in TOKENIZER_FAMILIES:
            return TOKENIZER_FAMILIES[spec["model"]["type"]], spec
        kind = f"a tokenizers {spec['model']['type']} model"
    else:
        kind = type(tokenizer).__name__
    raise ValueError(f"vocabulary pruning does not support {kind}; supported: tokenizers WordPiece, BPE and Unigram "
                     "models (fast tokenizers) and MarianTokenizer (SentencePiece + vocab.json)")
