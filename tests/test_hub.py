"""Hub format: save, load with hf_adaprune, load with stock transformers where hf_adaprune is absent."""

from __future__ import annotations

import copy
from functools import partial
import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForSequenceClassification, BertTokenizerFast, pipeline
from transformers.testing_utils import CaptureLogger

from hf_adaprune import AutoPrunedModel, attach_masks, compact, save_pruned
from hf_adaprune.engine.masks import get_masks
from hf_adaprune.layout import decode_kept

from conftest import text_batch, tiny_config, tiny_model
from test_surgery import outputs, random_masks


def pruned_tiny(family="bert", head="AutoModelForSequenceClassification"):
    model = tiny_model(family, head)
    random_masks(model)
    return model


def tiny_tokenizer(tmp_path, vocab_size=99):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab))  # transformers 5 ignores vocab_file=: 5 tokens, all text [UNK]
    assert len(tokenizer) == vocab_size and tokenizer("w1 w2").input_ids == [2, 6, 7, 3]
    return tokenizer


@pytest.mark.parametrize("family", ["bert", "distilbert", "electra"])
def test_round_trip_with_hf_adaprune(family, tmp_path):
    model = pruned_tiny(family)
    batch = text_batch()
    masked = outputs(model, batch)
    save_pruned(model, tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "config.json", "modeling_adaprune.py"} <= files
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    groups = config["adaprune"]["groups"]
    assert groups[next(iter(groups))]["kind"] in {"heads", "ffn"}
    assert config["model_type"] == f"adaprune_{model.config.model_type}"
    stock_name = type(model).__name__
    assert config["auto_map"]["AutoModelForSequenceClassification"] == f"modeling_adaprune.{stock_name}"
    assert config["auto_map"]["AutoConfig"] == f"modeling_adaprune.{type(model.config).__name__}"
    loaded = AutoPrunedModel.from_pretrained(tmp_path / "out").eval()
    assert (outputs(loaded, batch) - masked).abs().max() <= 1e-5
    assert (outputs(loaded, batch) - outputs(model, batch)).abs().max() <= 1e-6


def test_folder_saved_under_a_pruned_class_name_loads_the_transformers_class(tmp_path):
    """Folders saved before pruned classes kept their transformers names say ``architectures:
    ["PrunedBertForSequenceClassification"]``: AutoPrunedModel builds BertForSequenceClassification for them, with
    the same logits as the model saved (<= 1e-5, float32 reload)."""
    model = pruned_tiny("bert")
    batch = text_batch()
    expected = outputs(model, batch)
    save_pruned(model, tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    config["architectures"] = ["PrunedBertForSequenceClassification"]
    path.write_text(json.dumps(config))
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, transformers.BertForSequenceClassification)
    assert (outputs(loaded, batch) - expected).abs().max() <= 1e-5


def test_saved_record_lists_kept_heads_and_widths(tmp_path):
    model = tiny_model("bert")
    masks = attach_masks(model)
    masks.set("encoder.layer.1.attention", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    width = torch.ones(37)
    width[:10] = 0
    masks.set("encoder.layer.0.ffn", width)
    save_pruned(model, tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())["adaprune"]
    assert decode_kept(record["groups"]["encoder.layer.1.attention"]) == [1, 3]
    assert decode_kept(record["groups"]["encoder.layer.0.ffn"]) == list(range(10, 37))
    weights = load_file(tmp_path / "model.safetensors")
    assert weights["bert.encoder.layer.1.attention.self.query.weight"].shape == (16, 32)
    assert weights["bert.encoder.layer.0.intermediate.dense.weight"].shape == (27, 32)


def test_other_head_class_loads_base_model(tmp_path):
    from transformers import AutoModel

    model = pruned_tiny("roberta")
    compact(model)
    save_pruned(model, tmp_path)
    base = AutoPrunedModel.from_pretrained(tmp_path, auto_class=AutoModel).eval()
    batch = text_batch()
    with torch.no_grad():
        expected = model.base_model(**batch).last_hidden_state
        got = base(**batch).last_hidden_state
    assert (expected - got).abs().max() <= 1e-6


def test_stock_transformers_loads_without_hf_adaprune(tmp_path):
    model = pruned_tiny("bert")
    batch = text_batch()
    expected = outputs(model, batch)
    save_pruned(model, tmp_path / "model")
    torch.save({"batch": batch, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_adaprune"] = None  # make the package unimportable
        try:
            import hf_adaprune
        except ImportError:
            pass
        else:
            raise SystemExit("hf_adaprune should not be importable here")
        import torch
        from transformers import AutoModelForSequenceClassification
        io = torch.load({str(tmp_path / 'io.pt')!r})
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True)
        model.eval()
        with torch.no_grad():
            got = model(**io["batch"]).logits
        diff = (got - io["expected"]).abs().max().item()
        print("maxdiff", diff)
        assert diff <= 1e-6, diff
        assert "hf_adaprune" not in type(model).__module__
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "maxdiff" in result.stdout


def test_the_shipped_loader_switches_attention_implementation(tmp_path):
    """transformers decides whether a class may switch attention by reading its module's source: the shipped
    module's EmptyAttention (no attention function) made set_attn_implementation a no-op there (eager asked for,
    sdpa kept: no attention weights). A fresh process: an earlier switch of the stock class would hide it."""
    model = pruned_tiny("bert")
    save_pruned(model, tmp_path / "model")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True,
                                                                   attn_implementation="sdpa").eval()
        model.set_attn_implementation("eager")
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), output_attentions=True)
        print("implementation", model.config._attn_implementation, "attentions", len(out.attentions))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"implementation eager attentions {model.config.num_hidden_layers}" in result.stdout


def test_pipeline_with_tokenizer(tmp_path):
    model = pruned_tiny("bert")
    tokenizer = tiny_tokenizer(tmp_path)
    save_pruned(model, tmp_path / "model", tokenizer=tokenizer)
    assert (tmp_path / "model" / "tokenizer.json").exists() or (tmp_path / "model" / "vocab.txt").exists()
    logger = transformers.utils.logging.get_logger("transformers.pipelines.base")
    with CaptureLogger(logger) as captured:
        classify = pipeline("text-classification", model=str(tmp_path / "model"), trust_remote_code=True)
    assert "is not supported" not in captured.out  # the shipped class keeps the transformers name
    assert type(classify.model).__name__ == "BertForSequenceClassification"
    result = classify("w1 w2 w3")
    assert result[0]["label"].startswith("LABEL_") and 0.0 <= result[0]["score"] <= 1.0


def test_mismatched_weights_fail_loudly(tmp_path):
    model = pruned_tiny("bert")
    save_pruned(model, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = "bert.encoder.layer.2.attention.self.query.weight"
    weights[key] = torch.zeros(weights[key].shape[0] + 8, weights[key].shape[1])
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoPrunedModel.from_pretrained(tmp_path)


def test_missing_weights_fail_loudly(tmp_path):
    model = pruned_tiny("bert")
    save_pruned(model, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["bert.encoder.layer.2.intermediate.dense.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not match the pruned structure"):
        AutoPrunedModel.from_pretrained(tmp_path)


def test_folder_without_record(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no hf_adaprune record"):
        AutoPrunedModel.from_pretrained(tmp_path)


def test_stock_loader_without_remote_code_asks_for_it(tmp_path):
    """model_type adaprune_<family> makes stock transformers ask for trust_remote_code instead of building a
    dense model and failing on a weight's size; once loaded, the config is the family's own."""
    save_pruned(pruned_tiny("bert"), tmp_path)
    for trust in (False, None):
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=trust)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        transformers.AutoConfig.from_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert isinstance(config, transformers.BertConfig) and config.model_type == "bert"
    assert type(config).__name__ == "BertConfig"  # what the tokenizer / feature-extractor mappings look up
    assert AutoPrunedModel.from_pretrained(tmp_path).config.model_type == "bert"


def test_remote_code_is_the_layout_codec_plus_the_family_forward():
    """The shipped file is generated from hf_adaprune/layout.py and the family's own attention forward."""
    import ast
    import inspect

    from hf_adaprune import layout
    from hf_adaprune.families.t5 import T5SharedBias
    from hf_adaprune.hub.remote_code import remote_code_source

    source = remote_code_source({"T5ForConditionalGeneration"}, "T5Config", T5SharedBias)
    assert inspect.getsource(layout).strip() in source
    assert "@register_shared_bias\nclass T5SharedBias(SharedBiasMixin):" in source
    assert "WavLMSharedBias" not in source
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported <= {"__future__", "functools", "json", "sys", "warnings", "torch", "transformers"}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    namespace = {"__name__": "modeling_adaprune_check"}
    exec(compile(source, "modeling_adaprune.py", "exec"), namespace)
    assert namespace["SHARED_BIAS_WRAPPERS"]["t5"] is namespace["T5SharedBias"]
    assert issubclass(namespace["T5ForConditionalGeneration"], namespace["PrunedModelMixin"])
    assert issubclass(namespace["T5ForConditionalGeneration"], transformers.T5ForConditionalGeneration)
    assert namespace["T5ForConditionalGeneration"].config_class is namespace["T5Config"]
    assert issubclass(namespace["T5Config"], transformers.T5Config)


@pytest.mark.parametrize("lost", ["layout", "groups"])
def test_config_that_lost_its_layout_record_is_refused_clearly(tmp_path, lost):
    save_pruned(pruned_tiny("bert"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["adaprune"][lost]
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = rf"record \(adaprune\) in {tmp_path}/config.json is incomplete \(missing: {lost};.*restore config.json"
    with pytest.raises(ValueError, match=message):
        AutoPrunedModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):  # the shipped loader says the same
        AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)


@pytest.mark.parametrize("loader", ["hf_adaprune", "trust_remote_code"])
def test_model_pruned_twice_loads(tmp_path, loader):
    """Load a pruned folder (with either loader), prune it again, save it: both loaders read the second folder."""
    save_pruned(pruned_tiny("bert"), tmp_path / "once")
    if loader == "hf_adaprune":
        model = AutoPrunedModel.from_pretrained(tmp_path / "once").eval()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "once", trust_remote_code=True).eval()
    masks = attach_masks(model)
    heads = torch.zeros_like(masks.masks["encoder.layer.1.attention"])
    heads[0] = 1
    masks.set("encoder.layer.1.attention", heads)
    ffn = torch.ones_like(masks.masks["encoder.layer.2.ffn"])
    ffn[::2] = 0
    masks.set("encoder.layer.2.ffn", ffn)
    batch = text_batch()
    expected = outputs(model, batch)
    save_pruned(model, tmp_path / "twice")
    loaded = AutoPrunedModel.from_pretrained(tmp_path / "twice").eval()
    assert (outputs(loaded, batch) - expected).abs().max() <= 1e-5
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "twice", trust_remote_code=True).eval()
    assert (outputs(stock, batch) - expected).abs().max() <= 1e-5
    assert type(model) is type(loaded)  # one pruned class per name, whichever loader: pickled by reference
    pickle.loads(pickle.dumps(model))


def test_config_stays_small_with_wide_ffn_layers(tmp_path):
    """Loading needs only widths: kept indices are stored as one bitmap per group, not one line per index."""
    model = tiny_model("bert", intermediate_size=3072)
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(0)
    for name in masks.of_kind("ffn"):
        masks.set(name, (torch.rand(3072, generator=generator) > 0.5).float())
    kept = {name: masks.kept_indices(name) for name in masks.of_kind("ffn")}
    batch = text_batch()
    expected = outputs(model, batch)
    save_pruned(model, tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert len(text) < 6000, len(text)  # 3 x 3072 indices were ~40 KB, one per line
    record = json.loads(text)["adaprune"]
    assert {name: decode_kept(record["groups"][name]) for name in kept} == kept
    assert (outputs(AutoPrunedModel.from_pretrained(tmp_path).eval(), batch) - expected).abs().max() <= 1e-5


def test_save_pretrained_after_compaction_writes_a_remote_code_folder(tmp_path):
    """model.save_pretrained (what push_to_hub and Trainer.save_model call) gives the save_pruned folder."""
    model = pruned_tiny("bert")
    batch = text_batch()
    expected = outputs(model, batch)
    compact(model)
    assert isinstance(model, transformers.BertForSequenceClassification)
    model.save_pretrained(tmp_path / "plain")
    assert (tmp_path / "plain" / "modeling_adaprune.py").exists()
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_adaprune.")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain", trust_remote_code=True).eval()
    assert (outputs(loaded, batch) - expected).abs().max() <= 1e-5
    loaded.save_pretrained(tmp_path / "again")  # a remote-code model saves its own file again
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "again", trust_remote_code=True).eval()
    assert (outputs(again, batch) - expected).abs().max() <= 1e-5
    assert copy.deepcopy(model).config.adaprune == model.config.adaprune
    pickle.loads(pickle.dumps(model))  # the pruned class is importable by name


@pytest.mark.parametrize("forward", [None, "t5", "wavlm"])
def test_remote_code_reads_nothing_itself(forward):
    """The shipped file opens no file, loads no pickle, runs no other code and reaches no network: transformers
    hands it config.json's record and the folder's weights (safetensors), nothing else."""
    import ast

    from hf_adaprune.families.t5 import T5SharedBias
    from hf_adaprune.families.wavlm import WavLMSharedBias
    from hf_adaprune.hub.remote_code import remote_code_source

    source = remote_code_source({"BertModel"}, "BertConfig",
                                {None: None, "t5": T5SharedBias, "wavlm": WavLMSharedBias}[forward])
    tree = ast.parse(source)
    called = {node.func.id if isinstance(node.func, ast.Name) else node.func.attr
              for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, (ast.Name, ast.Attribute))}
    assert not called & {"open", "exec", "eval", "compile", "__import__", "import_module", "load", "loads",
                         "urlopen", "system", "popen", "run", "read_text", "read_bytes"}
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= {"__future__", "functools", "json", "sys", "warnings", "torch", "transformers"}


def test_saving_over_an_earlier_model_leaves_none_of_its_weight_files(tmp_path):
    from conftest import text_batch, tiny_model
    from test_surgery import random_masks

    from hf_adaprune import AutoPrunedModel, save_pruned

    tiny_model("bert").save_pretrained(tmp_path)  # an earlier, dense model: one model.safetensors
    (tmp_path / "notes.txt").write_text("the user's own file")
    model = tiny_model("bert")
    random_masks(model)
    batch = text_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    save_pruned(model, tmp_path, max_shard_size="20KB")  # shards and an index now
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"  # only weight files are replaced
    with torch.no_grad():
        torch.testing.assert_close(AutoPrunedModel.from_pretrained(tmp_path)(**batch).logits, expected)


def test_weight_files_no_loader_reads_stay(tmp_path):
    """Only the names transformers (or load_int8) loads are replaced: a user's EMA or teacher weights beside them stay."""
    from conftest import tiny_model
    from test_surgery import random_masks

    from hf_adaprune import save_pruned

    theirs = {"model_ema.safetensors": b"EMA weights", "pytorch_model_teacher.bin": b"teacher", "model.onnx": b"graph"}
    for name, content in theirs.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "pytorch_model.bin").write_bytes(b"an earlier model, which from_pretrained would read")
    model = tiny_model("bert")
    random_masks(model)
    save_pruned(model, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in theirs} == theirs
    assert not (tmp_path / "pytorch_model.bin").exists() and (tmp_path / "model.safetensors").exists()


def test_a_save_by_another_process_than_the_main_one_writes_and_removes_nothing(tmp_path):
    """As transformers' save_pretrained(is_main_process=False): every rank may call it; rank 0's files stay."""
    from conftest import text_batch, tiny_model
    from test_surgery import random_masks

    from hf_adaprune import AutoPrunedModel, save_pruned

    main, other = tiny_model("bert"), tiny_model("bert")
    random_masks(main, seed=0)
    random_masks(other, seed=0)
    save_pruned(main, tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert "model.safetensors" in before
    save_pruned(other, tmp_path, is_main_process=False)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert not [path for path in tmp_path.iterdir() if path.is_dir()]  # no temporary folder left either
    batch = text_batch()
    with torch.no_grad():  # the other process's model was compacted all the same, as the main one
        torch.testing.assert_close(other(**batch).logits, AutoPrunedModel.from_pretrained(tmp_path)(**batch).logits)


def test_saving_over_an_earlier_variant_save_leaves_none_of_its_weight_files(tmp_path):
    """variant="fp16" names the files model.fp16.safetensors / model.fp16-0000N-of-0000M.safetensors: a single file
    left beside new shards would be what from_pretrained(variant=...) reads, against the new config."""
    from conftest import text_batch, tiny_model
    from test_surgery import random_masks

    model = tiny_model("bert")
    random_masks(model, seed=0)
    save_pruned(model, tmp_path, variant="fp16")
    assert (tmp_path / "model.fp16.safetensors").exists()
    model = tiny_model("bert")
    random_masks(model, seed=1)
    batch = text_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    save_pruned(model, tmp_path, variant="fp16", max_shard_size="20KB")
    assert not (tmp_path / "model.fp16.safetensors").exists()
    assert (tmp_path / "model.safetensors.index.fp16.json").exists()
    with torch.no_grad():
        torch.testing.assert_close(AutoPrunedModel.from_pretrained(tmp_path, variant="fp16")(**batch).logits, expected)
        stock = AutoModelForSequenceClassification.from_pretrained(tmp_path, variant="fp16", trust_remote_code=True)
        torch.testing.assert_close(stock(**batch).logits, expected)


@pytest.mark.parametrize("family", ["bart", "whisper"])
def test_a_decoder_only_head_whose_cache_the_encoder_layer_count_would_size_is_not_offered(tmp_path, family):
    """BART / Marian / Whisper configs map num_hidden_layers to the encoder's layer count, and their ForCausalLM
    heads size the KV cache by it: with encoder layers removed and more decoder layers kept, such a head would fail
    in generate() with the cache. The folder does not offer it, AutoPrunedModel refuses it; the seq2seq class
    generates with the cache as without."""
    from test_layers import build_seq2seq, tiny_whisper3, whisper_inputs

    model = tiny_whisper3() if family == "whisper" else build_seq2seq("bart")
    masks = attach_masks(model, layers=True)
    encoder = masks.masks["encoder.layers"]
    masks.set("encoder.layers", torch.zeros_like(encoder).index_fill_(0, torch.tensor([len(encoder) - 1]), 1.0))
    compact(model)
    save_pruned(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["encoder_layers"] == 1 < config["decoder_layers"]
    assert "AutoModelForCausalLM" not in config["auto_map"]
    with pytest.raises(ValueError, match=r"ForCausalLM sizes its KV cache by num_hidden_layers \(1\), which this "
                                         r"config maps to the encoder's layer count, while the pruned decoder keeps "):
        AutoPrunedModel.from_pretrained(tmp_path, auto_class=transformers.AutoModelForCausalLM)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    if family == "whisper":
        inputs = {"input_features": whisper_inputs()["input_features"]}
    else:
        inputs = {"input_ids": torch.tensor([[5, 6, 7, 8, 2]])}
    with torch.no_grad():
        cached = loaded.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=True)
        uncached = loaded.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("model_class, auto_class", [
    ("BartForCausalLM", "AutoModelForCausalLM"), ("T5EncoderModel", "AutoModel"),
    ("BertForMultipleChoice", "AutoModelForMultipleChoice"), ("BertForPreTraining", "AutoModelForPreTraining"),
    ("BertForNextSentencePrediction", "AutoModelForNextSentencePrediction")])
def test_stock_auto_class_builds_the_saved_head(tmp_path, model_class, auto_class):
    # the auto_map names the saved class for every AutoModel... class that maps the family to it (a decoder-only
    # BART, an encoder-only T5, multiple choice, pretraining ...), not the family's default nor a fixed short list
    from test_seq2seq_families import tiny_seq2seq_config

    family = next(name for name in ("bert", "bart", "t5") if model_class.lower().startswith(name))
    config = tiny_config("bert") if family == "bert" else tiny_seq2seq_config(family)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    masks = attach_masks(model)
    for name, mask in masks.masks.items():
        masks.set(name, (torch.arange(mask.numel()) % 2).float())
    ids = torch.tensor([[5, 6, 7, 8, 2]])
    batch = {"input_ids": ids[:, None].expand(1, 2, 5) if "MultipleChoice" in model_class else ids}
    with torch.no_grad():
        expected = model(**batch)[0]
    save_pruned(model, tmp_path / "model")
    loaded = getattr(transformers, auto_class).from_pretrained(tmp_path / "model", trust_remote_code=True).eval()
    assert type(loaded).__name__ == model_class
    with torch.no_grad():
        assert torch.allclose(loaded(**batch)[0], expected, atol=1e-5)


def test_a_compacted_bare_model_still_returns_hidden_states_and_attentions():
    model = tiny_model("bert", head="AutoModel", attn_implementation="eager")
    attach_masks(model)
    batch = text_batch()
    with torch.no_grad():
        before = model(**batch, output_hidden_states=True, output_attentions=True)
        compact(model)  # nothing removed: the class changes, what the model returns must not
        after = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(after.hidden_states) == len(before.hidden_states) == model.config.num_hidden_layers + 1
    assert len(after.attentions) == len(before.attentions) == model.config.num_hidden_layers
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after.hidden_states, before.hidden_states))


def test_auto_pruned_model_reads_config_and_weights_from_the_same_revision_cache_and_subfolder(tmp_path):
    # an offline Hub cache with two revisions of one repo: v1 has 3 layers, main the same model with layer 2 removed
    repo = tmp_path / "cache" / "models--me--pruned"

    def publish(revision, sha, model):
        save_pruned(model, repo / "snapshots" / sha)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(sha)

    model, batch = pruned_tiny(), text_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    publish("v1", "b" * 40, model)
    masks = attach_masks(model, layers=True)
    masks.set("encoder.layer", torch.tensor([1.0, 1.0, 0.0]))
    compact(model)
    publish("main", "a" * 40, model)
    hub = dict(cache_dir=str(tmp_path / "cache"), local_files_only=True)
    loaded = AutoPrunedModel.from_pretrained("me/pruned", revision="v1", **hub).eval()
    assert loaded.config.num_hidden_layers == 3  # the config of v1 (it read main's and dropped a layer)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-5)
    assert AutoPrunedModel.from_pretrained("me/pruned", **hub).config.num_hidden_layers == 2
    save_pruned(pruned_tiny(), tmp_path / "folder" / "pruned")
    with torch.no_grad():
        assert torch.allclose(AutoPrunedModel.from_pretrained(tmp_path / "folder", subfolder="pruned").eval()(
            **batch).logits, expected, atol=1e-5)


@pytest.mark.parametrize("loader", ["hf_adaprune", "trust_remote_code"])
def test_config_values_and_a_new_head_are_taken_as_transformers_takes_them(tmp_path, loader):
    model = pruned_tiny()
    save_pruned(model, tmp_path)
    labels = {i: f"class {i}" for i in range(model.config.num_labels)}
    load = (AutoPrunedModel.from_pretrained if loader == "hf_adaprune" else partial(
        AutoModelForSequenceClassification.from_pretrained, trust_remote_code=True))
    relabeled = load(tmp_path, id2label=labels, output_hidden_states=True)
    assert relabeled.config.id2label == labels and relabeled.config.output_hidden_states
    # a new classifier (ignore_mismatched_sizes) is re-initialised; the pruned layers still must match
    five = load(tmp_path, num_labels=5, id2label={i: str(i) for i in range(5)}, ignore_mismatched_sizes=True).eval()
    with torch.no_grad():
        assert five(**text_batch()).logits.shape[-1] == 5


def test_a_layout_version_the_loader_cannot_read_says_what_to_do(tmp_path):
    save_pruned(pruned_tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for version, message in ((99, r"newer than this loader \(\d+\): upgrade hf_adaprune, or load it with "
                                   "trust_remote_code=True"), ("x", "is not a number")):
        config["adaprune"]["version"] = version
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=message):
            AutoPrunedModel.from_pretrained(tmp_path)


def test_loader_errors_name_what_is_missing(tmp_path):
    save_pruned(pruned_tiny(), tmp_path / "model")
    with pytest.raises(ValueError, match="AutoModelForSpeechSeq2Seq has no bert model class"):
        AutoPrunedModel.from_pretrained(tmp_path / "model", auto_class=transformers.AutoModelForSpeechSeq2Seq)
    assert type(AutoPrunedModel.from_pretrained(tmp_path / "model", auto_class=transformers.AutoModel)).__name__ == \
        "BertModel"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no config.json"):
        AutoPrunedModel.from_pretrained(tmp_path / "empty")


def test_save_pruned_takes_safe_serialization_and_refuses_other_formats_before_compacting(tmp_path):
    model = pruned_tiny()
    batch = text_batch()
    masked = outputs(model, batch)
    with pytest.raises(ValueError, match="safetensors only"):
        save_pruned(model, tmp_path / "bin", safe_serialization=False)
    assert get_masks(model) is not None  # refused before compact: the model keeps its masks
    save_pruned(model, tmp_path / "out", safe_serialization=True)
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert (outputs(AutoPrunedModel.from_pretrained(tmp_path / "out"), batch) - masked).abs().max() <= 1e-5


def test_wrong_auto_class_or_a_config_without_the_record_say_what_is_wrong(tmp_path):
    model = pruned_tiny()
    save_pruned(model, tmp_path / "out")
    for wrong in ("AutoModel", transformers.BertModel):
        with pytest.raises(TypeError, match="auto_class must be a transformers auto class"):
            AutoPrunedModel.from_pretrained(tmp_path / "out", auto_class=wrong)
    with pytest.raises(ValueError, match="the config passed has no hf_adaprune record"):
        AutoPrunedModel.from_pretrained(tmp_path / "out", config=transformers.BertConfig())
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out", trust_remote_code=True)  # what it suggests
    loaded = AutoPrunedModel.from_pretrained(tmp_path / "out", config=config)
    batch = text_batch()
    assert (outputs(loaded.eval(), batch) - outputs(model, batch)).abs().max() <= 1e-6


def test_a_pruned_model_unpickles_in_a_fresh_process(tmp_path):
    """torch.save(model) / spawned workers: the classes made at run time (pruned model, marked config, T5's
    shared-bias attention) are made again by name in a process that has not made them yet."""
    import subprocess
    import sys

    from conftest import text_batch, tiny_model
    from test_seq2seq_families import pattern_masks, tiny_seq2seq
    from test_surgery import random_masks

    from hf_adaprune import compact, save_pruned

    bert = tiny_model("bert")
    random_masks(bert)
    save_pruned(bert, tmp_path / "bert")  # compacted, its class and config marked
    t5 = tiny_seq2seq("t5")
    pattern_masks(t5, "B")
    compact(t5)
    ids = text_batch()["input_ids"]
    with torch.no_grad():
        expected = {"bert": bert(input_ids=ids).logits,
                    "t5": t5(input_ids=ids, decoder_input_ids=ids[:, :4]).logits}
    torch.save({"bert": bert, "t5": t5, "ids": ids, "expected": expected}, tmp_path / "models.pt")
    code = f"""
import torch, hf_adaprune
saved = torch.load({str(tmp_path / 'models.pt')!r}, weights_only=False)
ids = saved["ids"]
with torch.no_grad():
    got = {{"bert": saved["bert"](input_ids=ids).logits,
           "t5": saved["t5"](input_ids=ids, decoder_input_ids=ids[:, :4]).logits}}
for name, value in got.items():
    torch.testing.assert_close(value, saved["expected"][name], rtol=0, atol=1e-6)
print(type(saved["bert"]).__module__, type(saved["bert"].config).__module__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["hf_adaprune.hub.load", "hf_adaprune.hub.config_marker"]


def test_save_pretrained_over_an_earlier_save_leaves_none_of_its_weight_files(tmp_path):
    """model.save_pretrained writes the folder save_pruned writes: a single model.safetensors of an earlier save stayed
    beside new shards (transformers removes stale shards only), and both loaders read it and failed on its sizes."""
    model = pruned_tiny()
    compact(model)
    model.save_pretrained(tmp_path)  # one model.safetensors
    random_masks(model, seed=1)
    compact(model)  # pruned again: other sizes
    batch = text_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    (tmp_path / "notes.txt").write_text("the user's own file")
    model.save_pretrained(tmp_path, max_shard_size="20KB")  # shards and an index now
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"
    with torch.no_grad():
        torch.testing.assert_close(AutoPrunedModel.from_pretrained(tmp_path)(**batch).logits, expected)
    model.save_pretrained(tmp_path)  # and back to one file: the shards and the index go
    assert sorted(p.name for p in tmp_path.glob("model*.safetensors*")) == ["model.safetensors"]


def test_a_config_loaded_with_remote_code_builds_the_pruned_classes_without_it(tmp_path):
    """transformers matches a config to its own classes by the config class's name, which the shipped config class
    shares with the stock one: from_config(config) or from_pretrained(folder, config=config) without
    trust_remote_code built the dense stock class (a new num_labels with ignore_mismatched_sizes re-initialised every
    pruned weight at random). The shipped module registers its classes, as load_pruned_config's class does."""
    from hf_adaprune.hub.load import load_pruned_config

    model = pruned_tiny()
    compact(model)
    save_pruned(model, tmp_path)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    config = transformers.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    for built in (AutoModelForSequenceClassification.from_config(config),
                  AutoModelForSequenceClassification.from_config(load_pruned_config(tmp_path))):
        assert {k: v.shape for k, v in built.state_dict().items()} == shapes
    relabelled = transformers.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True, num_labels=5)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, config=relabelled,
                                                                ignore_mismatched_sizes=True)
    for name, value in model.state_dict().items():
        if not name.startswith("classifier"):
            assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.classifier.out_features == 5


def test_save_pretrained_of_a_pruned_model_with_masks_attached_says_they_are_not_saved(tmp_path, caplog):
    """A pruned model pruned again by hand (masks attached, not compacted) saved with save_pretrained wrote the unmasked
    weights without a word; a Trainer checkpoint (masks kept in pruning_state.pt) stays quiet."""
    import logging

    model = pruned_tiny()
    compact(model)
    random_masks(model, seed=1)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        model.save_pretrained(tmp_path / "checkpoint-12")
    assert "save_pretrained does not save" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        model.save_pretrained(tmp_path / "mine")
    assert "has pruning masks attached that remove structures, which save_pretrained does not save" in caplog.text


def test_a_pruning_checkpoint_is_refused_naming_resume(tmp_path):
    # a checkpoint of a run that started from a pruned model loaded silently as that starting model: the masks the
    # run had applied since (in pruning_state.pt) were left out
    from test_trainer import make_trainer

    model = pruned_tiny()
    compact(model)
    trainer = make_trainer(tmp_path, model=model, max_steps=18, save_strategy="steps", save_steps=12)
    trainer.train()
    trainer.save_model()
    with pytest.raises(ValueError, match="checkpoint-12 is a pruning run's checkpoint: .*Resume the run from it"):
        AutoPrunedModel.from_pretrained(tmp_path / "checkpoint-12")
    AutoPrunedModel.from_pretrained(tmp_path)  # the model the run saved


@pytest.mark.parametrize("save", ["save_pretrained", "save_pruned"])
def test_a_variant_saved_beside_the_default_weights_of_the_same_structure_keeps_them(tmp_path, save, caplog):
    """fp32 weights, then the fp16 variant of the same model into the same folder (a Hub repo with two variants, as
    a stock save keeps them): model.safetensors stayed deleted and the default load failed. Pruned again, the model
    has another structure: the other variant's file no longer loads and is removed, named in a warning."""
    import logging

    def write(model, **kwargs):
        (model.save_pretrained if save == "save_pretrained" else partial(save_pruned, model))(tmp_path, **kwargs)

    model = pruned_tiny()
    compact(model)
    batch = text_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    write(model)
    write(copy.deepcopy(model).to(torch.float16), variant="fp16")
    assert {"model.safetensors", "model.fp16.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    with torch.no_grad():
        # config.json is the last save's (dtype float16, as stock): the fp32 weights are read as saved when asked
        torch.testing.assert_close(AutoPrunedModel.from_pretrained(tmp_path, dtype=torch.float32)(**batch).logits,
                                   expected, rtol=0, atol=0)
        half = AutoPrunedModel.from_pretrained(tmp_path, variant="fp16")
        assert half.dtype == torch.float16
        torch.testing.assert_close(half.float()(**batch).logits, expected, rtol=0, atol=1e-4)
    model.config.id2label = {0: "neg", 1: "pos", 2: "mixed"}  # config.json changes, the tensors' shapes do not
    write(model)
    assert (tmp_path / "model.fp16.safetensors").exists() and "removed" not in caplog.text
    random_masks(model, seed=1)
    compact(model)  # another structure: the fp16 file would fail on its sizes
    with caplog.at_level(logging.WARNING, logger="hf_adaprune.hub.save"):
        write(model)
    assert not (tmp_path / "model.fp16.safetensors").exists()
    assert "removed model.fp16.safetensors from" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(AutoPrunedModel.from_pretrained(tmp_path)(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("save", ["save_pretrained", "save_pruned"])
def test_sharded_variants_side_by_side_leave_no_index_without_its_shards(tmp_path, save):
    """The fp16 variant in shards, then the default weights in shards: transformers' own clean-up removes the fp16
    shards under save_pretrained, and the fp16 index left pointing at them made from_pretrained(variant='fp16') fail
    on a missing file. What stays loads."""
    model = pruned_tiny()
    compact(model)

    def write(m, **kwargs):
        (m.save_pretrained if save == "save_pretrained" else partial(save_pruned, m))(tmp_path, **kwargs)

    write(copy.deepcopy(model).half(), variant="fp16", max_shard_size="20KB")
    write(model, max_shard_size="20KB")
    batch = text_batch()
    with torch.no_grad():
        torch.testing.assert_close(AutoPrunedModel.from_pretrained(tmp_path, dtype=torch.float32)(**batch).logits,
                                   model(**batch).logits, rtol=0, atol=0)
    index = tmp_path / "model.safetensors.index.fp16.json"
    # save_pretrained's clean-up removes the fp16 shards, and the index goes with them; save_pruned keeps both
    assert index.exists() == (save == "save_pruned")
    if index.exists():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        assert all((tmp_path / shard).is_file() for shard in shards)
        with torch.no_grad():
            half = AutoPrunedModel.from_pretrained(tmp_path, variant="fp16")
            torch.testing.assert_close(half.float()(**batch).logits, model(**batch).logits, rtol=0, atol=1e-4)


def test_weights_an_earlier_save_left_are_named_when_removed(tmp_path, caplog):
    """A dense model's pytorch_model.bin in the folder a pruned model is saved to: removed (a loader could read it
    instead of the pruned weights), never silently."""
    import logging

    torch.save(tiny_model("bert").state_dict(), tmp_path / "pytorch_model.bin")  # as transformers 4 saved it
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        save_pruned(pruned_tiny(), tmp_path)
    assert not (tmp_path / "pytorch_model.bin").exists()
    assert f"removed pytorch_model.bin from {tmp_path}: weights an earlier save left there" in caplog.text


def test_a_save_removes_what_a_killed_save_left_and_keeps_what_a_running_one_writes(tmp_path, caplog):
    """A save killed mid-way left its temporary folder (a whole model's weights) in the output folder, which a push
    of the folder uploaded: the next save on this machine removes such folders whose process is gone."""
    import logging
    import os
    import socket

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = socket.gethostname()
    killed = tmp_path / f".adaprune-save-{int(gone.stdout)}@{host}@abc"
    running = tmp_path / f".adaprune-onnx-{os.getpid()}@{host}@def"  # this process: alive
    other_host = tmp_path / f".adaprune-save-{int(gone.stdout)}@elsewhere.example@ghi"
    longer_host = tmp_path / f".adaprune-save-{int(gone.stdout)}@{host}-12@jkl"  # host gpu-12's, seen from gpu
    for folder in (killed, running, other_host, longer_host):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        save_pruned(pruned_tiny(), tmp_path)
    assert not killed.exists() and running.exists() and other_host.exists() and longer_host.exists()
    assert f"removed {killed.name} from {tmp_path}: what a save stopped mid-way" in caplog.text
    assert not [p.name for p in tmp_path.iterdir()
                if p.name.startswith(".adaprune") and p not in (running, other_host, longer_host)]
