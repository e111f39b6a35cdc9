"""A pruned folder pushed to the Hub, loaded for another task (another head, one stack of an encoder-decoder)
and pruned again after a remote-code load."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

from huggingface_hub import ModelCard
import pytest
import torch
import transformers
from transformers import GenerationConfig

from hf_adaprune import AutoPrunedModel, attach_masks, compact, save_pruned
from hf_adaprune.hub import pruned_class
from hf_adaprune.hub.remote_code import REMOTE_CODE_FILE

from conftest import text_batch, tiny_model
from test_seq2seq_families import seq2seq_batch, tiny_seq2seq
from test_wavlm import audio_batch, tiny_wavlm

TOL = 1e-6


def tiny_whisper(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=29, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        init_std=0.25, suppress_tokens=[], begin_suppress_tokens=[])
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=3, bos_token_id=1, eos_token_id=2,
                                               pad_token_id=0)
    return model


def whisper_batch(seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return {"input_features": torch.randn(2, 8, 32, generator=generator),
            "decoder_input_ids": torch.randint(4, 64, (2, 5), generator=generator)}


def prune_unevenly(model, seed: int = 0, layers: bool = True):
    """Random heads and neurons (the first of each kept), and the middle layer of every stack that can lose one."""
    masks = attach_masks(model, layers=layers)
    generator = torch.Generator().manual_seed(seed)
    for name, group in masks.groups.items():
        mask = torch.ones_like(masks.masks[name])
        if group.kind != "layers":
            mask = (torch.rand(mask.shape, generator=generator) > 0.4).float()
            mask[0] = 1
        elif not group.refuse and len(mask) > 2:
            mask[1] = 0
        masks.set(name, mask)
    compact(model)
    return model


def stack_output(model, stack: str, batch: dict):
    """The last hidden state of one layer stack (``encoder`` / ``decoder``) of ``model``'s base model, from its own
    token embeddings (BART's decoder-only class finds the encoder-decoder's shared table, saved once as
    ``model.shared``; stock transformers starts it at random, dense models too)."""
    module = model.base_model.get_submodule(stack)
    inputs = {key: value for key, value in batch.items() if not key.startswith("decoder_")}
    with torch.no_grad():
        if stack == "decoder":
            inputs = {"input_ids": batch["decoder_input_ids"]}
        return module(**inputs).last_hidden_state


# -- pushing to the Hub -------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """transformers' Hub client, recording each commit as a folder holding exactly the files it uploads."""
    import transformers.modeling_utils
    import transformers.utils.hub

    commits = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=f"user/{repo_id}")

        def create_branch(self, *args, **kwargs):
            pass

        def create_commit(self, repo_id, operations, **kwargs):
            repo = tmp_path / f"hub-commit-{len(commits)}"
            repo.mkdir()
            for operation in operations:
                (repo / operation.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(operation.path_or_fileobj, repo / operation.path_in_repo)
            commits.append(SimpleNamespace(repo_id=repo_id, folder=repo))

    def card(repo_id, tags=None, token=None):  # the stock card, without looking for one on the Hub
        return ModelCard("---\nlibrary_name: transformers\n---\n\nA model.\n")

    for module in (transformers.utils.hub, transformers.modeling_utils):
        monkeypatch.setattr(module, "hf_api", lambda: FakeApi())
        monkeypatch.setattr(module, "create_and_tag_model_card", card)
    return commits


@pytest.mark.parametrize("route", ["save_pretrained", "save_pruned", "push_to_hub"])
def test_every_push_uploads_the_remote_code_config_json_points_at(route, tmp_path, fake_hub):
    # transformers uploads at the end of its own save_pretrained(push_to_hub=True), before hf_adaprune wrote
    # modeling_adaprune.py: the repo had a config.json whose auto_map pointed at a file it did not hold
    model = prune_unevenly(tiny_model("bert"))
    batch = text_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / REMOTE_CODE_FILE).write_text("# an older save's remote code\n")
    if route == "save_pretrained":
        model.save_pretrained(tmp_path / "my-model", push_to_hub=True, repo_id="pruned")
    elif route == "save_pruned":  # the repo is named after the folder, not the temporary folder it is written in
        from test_hub import tiny_tokenizer

        save_pruned(model, tmp_path / "my-model", tokenizer=tiny_tokenizer(tmp_path), push_to_hub=True)
    else:
        model.push_to_hub("pruned")
    (commit,) = fake_hub
    assert commit.repo_id == ("user/my-model" if route == "save_pruned" else "user/pruned")
    uploaded = {path.name for path in commit.folder.iterdir()}
    assert {"config.json", "model.safetensors", REMOTE_CODE_FILE} <= uploaded
    if route == "save_pruned":  # the tokenizer given is uploaded with the model, as it is saved beside it
        assert {"tokenizer.json", "tokenizer_config.json"} <= uploaded
        assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "my-model").iterdir()}
    auto_map = json.loads((commit.folder / "config.json").read_text())["auto_map"]
    assert {target.partition(".")[0] for target in auto_map.values()} == {REMOTE_CODE_FILE[:-3]}
    # what the repo holds loads with stock transformers alone and gives the pruned model's outputs
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(commit.folder, trust_remote_code=True)
    assert type(loaded).__module__.rpartition(".")[2] == "modeling_adaprune"
    with torch.no_grad():
        assert (loaded.eval()(**batch).logits - expected).abs().max() <= TOL


# -- another head ---------------------------------------------------------------------------------------


def test_a_pruned_folder_loads_pruned_for_another_task_through_the_stock_auto_classes(tmp_path):
    # the auto_map used to name only the saved class and AutoModel: AutoModelForTokenClassification built the dense
    # stock class, failing on sizes, or with ignore_mismatched_sizes=True re-initialising the pruned layers
    model = prune_unevenly(tiny_model("bert"))
    save_pruned(model, tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForTokenClassification"] == "modeling_adaprune.BertForTokenClassification"
    assert auto_map["AutoModelForMaskedLM"] == "modeling_adaprune.BertForMaskedLM"
    batch = text_batch()
    with torch.no_grad():
        expected = model.bert(**batch).last_hidden_state
    query = model.bert.encoder.layer[0].attention.self.query.weight.shape
    assert query[0] < 32 and model.config.num_hidden_layers == 2
    for auto_class, kwargs in ((transformers.AutoModelForTokenClassification,
                                dict(num_labels=5, ignore_mismatched_sizes=True)),
                               (transformers.AutoModelForTokenClassification, {}),
                               (transformers.AutoModelForMaskedLM, {}),
                               (transformers.AutoModelForQuestionAnswering, {})):
        loaded = auto_class.from_pretrained(tmp_path, trust_remote_code=True, **kwargs).eval()
        assert type(loaded).__module__.rpartition(".")[2] == "modeling_adaprune", auto_class
        assert loaded.bert.encoder.layer[0].attention.self.query.weight.shape == query
        with torch.no_grad():
            assert (loaded.bert(**batch).last_hidden_state - expected).abs().max() <= TOL, auto_class


def test_an_encoder_decoder_folder_loads_pruned_for_another_task_through_the_stock_auto_classes(tmp_path):
    model = prune_unevenly(tiny_seq2seq("bart", encoder_layers=3, decoder_layers=3))
    save_pruned(model, tmp_path)
    batch = seq2seq_batch()
    with torch.no_grad():
        expected = model.model(**batch).last_hidden_state
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, trust_remote_code=True, num_labels=3).eval()
    assert type(loaded).__name__ == "BartForSequenceClassification"
    with torch.no_grad():
        assert (loaded.model(**batch).last_hidden_state - expected).abs().max() <= TOL


# the encoder-only or decoder-only head classes of an encoder-decoder: (family, auto class, the stack it has)
ONE_STACK = [("t5", "AutoModelForTextEncoding", "encoder"), ("t5", "AutoModelForTokenClassification", "encoder"),
             ("whisper", "AutoModelForAudioClassification", "encoder"), ("whisper", "AutoModelForCausalLM", "decoder"),
             ("bart", "AutoModelForCausalLM", "decoder")]


@pytest.fixture(scope="module")
def pruned_encoder_decoders(tmp_path_factory):
    """family -> (pruned model, its batch, its saved folder)."""
    found = {}
    for family, build, batch in (("t5", lambda: tiny_seq2seq("t5", num_layers=3), seq2seq_batch),
                                 ("whisper", tiny_whisper, whisper_batch),
                                 ("bart", lambda: tiny_seq2seq("bart", encoder_layers=3, decoder_layers=3),
                                  seq2seq_batch)):
        model = prune_unevenly(build())
        assert model.config.to_dict()["adaprune"].get("layers")  # a layer removed too
        folder = tmp_path_factory.mktemp(family)
        save_pruned(model, folder)
        found[family] = (model, batch(), folder)
    return found


@pytest.mark.parametrize("family, auto_name, stack", ONE_STACK)
@pytest.mark.parametrize("loader", ["auto_pruned_model", "pruned_class", "trust_remote_code"])
def test_one_stack_of_a_pruned_encoder_decoder_loads_as_its_encoder_or_decoder_only_head(
        pruned_encoder_decoders, family, auto_name, stack, loader):
    # the layout of the stack the class does not have used to fail deep in apply_layout (AttributeError)
    model, batch, folder = pruned_encoder_decoders[family]
    auto_class = getattr(transformers, auto_name)
    if loader == "auto_pruned_model":
        loaded = AutoPrunedModel.from_pretrained(folder, auto_class=auto_class)
    elif loader == "pruned_class":
        base_class = auto_class._model_mapping[transformers.AutoConfig.for_model(family).__class__]
        loaded = pruned_class(base_class).from_pretrained(folder)
    else:
        loaded = auto_class.from_pretrained(folder, trust_remote_code=True)
        assert type(loaded).__module__.rpartition(".")[2] == "modeling_adaprune"
    loaded.eval()
    other = {"encoder": "decoder", "decoder": "encoder"}[stack]
    with pytest.raises(AttributeError):
        loaded.base_model.get_submodule(other)  # one stack only
    assert (stack_output(loaded, stack, batch) - stack_output(model, stack, batch)).abs().max() <= TOL
    if stack == "decoder":  # the output layer too (BART's is tied to the shared table)
        assert torch.equal(loaded.get_output_embeddings().weight, model.get_output_embeddings().weight)


# -- pruning again after a remote-code load ------------------------------------------------------------


REPRUNE = {  # family -> (build, batch, stock auto class)
    "t5": (lambda: tiny_seq2seq("t5"), seq2seq_batch, transformers.AutoModelForSeq2SeqLM),
    "wavlm": (lambda: tiny_wavlm("ctc"), audio_batch, transformers.AutoModelForCTC),
}


@pytest.mark.parametrize("family", sorted(REPRUNE))
def test_a_model_loaded_with_its_remote_code_prunes_again_exactly(family, tmp_path):
    # the attention modules of such a model have the folder's copy of the shared-bias forward: hf_adaprune took
    # them for unpruned ones and stacked its own forward on top (both slicing the bias), or reset their heads
    build, make_batch, auto_class = REPRUNE[family]
    batch = make_batch()
    save_pruned(prune_unevenly(build(), layers=False), tmp_path / "first")
    model = auto_class.from_pretrained(tmp_path / "first", trust_remote_code=True).eval()
    with torch.no_grad():
        first = model(**batch).logits
    masks = attach_masks(model)
    with torch.no_grad():
        assert (model(**batch).logits - first).abs().max() <= TOL  # masks that keep everything change nothing
    generator = torch.Generator().manual_seed(5)
    for name in masks.masks:
        mask = (torch.rand(masks.masks[name].shape, generator=generator) > 0.4).float()
        mask[0] = 1
        masks.set(name, mask)
    with torch.no_grad():
        masked = model(**batch).logits
    compact(model)
    with torch.no_grad():
        compacted = model(**batch).logits
    assert (compacted - masked).abs().max() <= 1e-5
    for module in model.modules():
        if getattr(module, "adaprune_kind", None) is not None:
            assert [c.__name__ for c in type(module).__mro__].count("SharedBiasMixin") == 1, type(module).__mro__
    save_pruned(model, tmp_path / "second")
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path / "second"),
                   auto_class.from_pretrained(tmp_path / "second", trust_remote_code=True)):
        with torch.no_grad():
            assert (loaded.eval()(**batch).logits - compacted).abs().max() <= TOL


def test_save_pruned_with_a_push_keeps_and_uploads_the_folders_own_card(tmp_path, fake_hub):
    # transformers' push writes the Hub's card (here a stub) over README.md before uploading; a card the user wrote
    # for the folder is what gets uploaded, and it stays in the folder
    model = prune_unevenly(tiny_model("bert"))
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "README.md").write_text("# My pruned model\n\nNotes of my own.\n")
    save_pruned(model, folder, push_to_hub=True)
    (commit,) = fake_hub
    assert (commit.folder / "README.md").read_text() == "# My pruned model\n\nNotes of my own.\n"
    assert (folder / "README.md").read_text() == "# My pruned model\n\nNotes of my own.\n"
    assert (folder / "config.json").is_file()


def test_a_pruned_shape_built_from_its_config_gets_the_models_own_init(tmp_path):
    """from_config (training the pruned shape anew) gives the new modules the config's init, not PyTorch's default,
    and WavLM's per-head gru_rel_pos_const its init value (ones), not uninitialised memory."""
    from test_wavlm import tiny_wavlm

    from hf_adaprune.hub.load import load_pruned_config, pruned_class

    model = prune_unevenly(tiny_wavlm("ctc", num_hidden_layers=3))
    save_pruned(model, tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    torch.manual_seed(0)
    for built in (transformers.AutoModelForCTC.from_config(config, trust_remote_code=True),
                  pruned_class(transformers.WavLMForCTC)(load_pruned_config(tmp_path))):
        constants = [layer.attention.gru_rel_pos_const for layer in built.wavlm.encoder.layers]
        assert all(torch.equal(c, torch.ones_like(c)) for c in constants)
        widths = {layer.attention.q_proj.weight.shape[0] for layer in built.wavlm.encoder.layers}
        assert widths != {config.hidden_size}, "some layer lost heads"
        pruned_weights = torch.cat([layer.attention.q_proj.weight.flatten() for layer in built.wavlm.encoder.layers
                                    if layer.attention.q_proj.weight.shape[0] < config.hidden_size])
        # the config's normal(0, 0.02); PyTorch's default (kaiming uniform on 32 inputs) has a std of about 0.10
        assert 0.014 < float(pruned_weights.std()) < 0.026, float(pruned_weights.std())
        assert all(float(layer.attention.q_proj.bias.abs().max()) == 0 for layer in built.wavlm.encoder.layers)



@pytest.mark.parametrize("build, lacking", [
    (lambda: transformers.T5EncoderModel(tiny_seq2seq("t5", num_layers=3).config), "decoder.block"),
    (lambda: transformers.BartForCausalLM(tiny_seq2seq("bart", encoder_layers=3, decoder_layers=3).config),
     "encoder.layers"),
])
def test_auto_class_that_needs_a_stack_the_folder_lacks_is_refused_as_the_stock_loader_refuses_it(
        tmp_path, build, lacking):
    """A pruned T5EncoderModel (or BartForCausalLM) loaded with auto_class=AutoModelForSeq2SeqLM got a dense stack of
    random weights for the one it lacks (the stock loader with trust_remote_code fails on the sizes)."""
    save_pruned(prune_unevenly(build()), tmp_path)
    with pytest.raises(ValueError, match=rf"holds a pruned \w+, which has no {lacking}: \w+ would build it dense "
                                         r"with random weights"):
        AutoPrunedModel.from_pretrained(tmp_path, auto_class=transformers.AutoModelForSeq2SeqLM)
    assert AutoPrunedModel.from_pretrained(tmp_path) is not None  # as saved, it loads
