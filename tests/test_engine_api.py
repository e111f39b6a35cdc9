"""The engine in a user's own loop (README "The engine on its own"): several processes, wrapped models, objects
from before compact(), and bad input to the selection."""

from __future__ import annotations

import datetime
import gc
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from hf_adaprune import (TaylorImportance, attach_masks, compact, find_groups, get_masks, reduce_scores,
                         save_pruned, select_masks, select_masks_by_kind)

from conftest import ROOT, one_thread_env, random_biases, text_batch, tiny_model
from test_distributed import TORCHRUN, launch_command



def labelled(seed):
    batch = text_batch(seed=seed)
    batch["labels"] = torch.tensor([0, 1, 2])
    return batch


def scored(model, groups, steps=3, seed=0):
    importance = TaylorImportance()
    for step in range(steps):
        model(**labelled(seed + step)).loss.backward()
        importance.update(model, groups)
        model.zero_grad()
    return importance


# -- 1. several processes: the scores are averaged before selection ------------------------------------------------

def test_reduce_scores_sends_scores_held_on_the_cpu_through_the_gpu_under_nccl(monkeypatch):
    """NCCL reduces CUDA tensors only: scores of a CPU criterion (random, restored without device=) were reduced
    where they lay, which NCCL refuses."""
    import hf_adaprune.engine.importance as importance
    import hf_adaprune.trainer.distributed as distributed

    seen = []
    for name, value in (("is_initialized", lambda: True), ("get_world_size", lambda: 2),
                        ("get_backend", lambda: "nccl")):
        monkeypatch.setattr(importance.dist, name, value)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(distributed, "reduced_scores", lambda accelerator, scores, names, device: seen.append(device))
    reduce_scores({"a": torch.ones(2)})
    monkeypatch.setattr(importance.dist, "get_backend", lambda: "gloo")
    reduce_scores({"a": torch.ones(2)})
    assert seen == [torch.device("cuda", 0), torch.device("cpu")]


def test_reduce_scores_leaves_the_scores_of_one_process_as_they_are():
    scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    assert reduce_scores(scores) is scores
    with pytest.raises(TypeError, match="dict"):
        reduce_scores([torch.ones(2)])


def _worker(out):
    """Run by torchrun: each rank scores its own batches through DDP, the layers included, and selects."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # a stuck collective fails, saying where
    rank = dist.get_rank()
    model = random_biases(tiny_model("bert")).train()
    masks = attach_masks(model, layers=True)
    groups = list(masks.groups.values())
    wrapped = DistributedDataParallel(model)
    try:
        attach_masks(wrapped)
        refused = ""
    except TypeError as error:
        refused = str(error)
    importance = TaylorImportance()
    for step in range(2):
        wrapped(**labelled(10 * rank + step)).loss.backward()  # each rank its own rows
        importance.update(model, groups)
        model.zero_grad()
    raw = importance.scores(model, groups)
    scores = reduce_scores(raw)
    selected = select_masks_by_kind(groups, scores, masks.masks, 0.4, kinds=("heads", "ffn", "layers"),
                                    scope="global", normalize=False)
    torch.save({"raw": raw, "scores": scores, "selected": selected, "refused": refused},
               os.path.join(out, f"rank{rank}.pt"))
    # the DDP wrapper (its reducer holds the process group) goes first: freed at exit instead, the group's destructor
    # waited on its worker thread, which waited for the interpreter lock (one rank in four hung there)
    dist.barrier()
    del wrapped
    gc.collect()
    dist.destroy_process_group()


# One rank in about four hung at exit (the DDP reducer freed after the process group: a lock-order deadlock between
# gloo's worker thread and the interpreter lock, seen with py-spy); the worker frees the wrapper first, and 40 of 40
# runs have passed since (20 of them on a loaded machine).
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_select_the_same_layers_after_reduce_scores(tmp_path):
    env = dict(one_thread_env(), TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    # the launch the other multi-process tests use (a port outside the range the system hands out to connections)
    result = subprocess.run([*launch_command("torchrun", 2), __file__, str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert "unwrap it first" in ranks[0]["refused"].lower()
    # the layer gates read each rank's own activations: the raw layer scores differ, the heads' do not
    assert not torch.allclose(ranks[0]["raw"]["encoder.layer"], ranks[1]["raw"]["encoder.layer"])
    assert torch.allclose(ranks[0]["raw"]["encoder.layer.0.ffn"], ranks[1]["raw"]["encoder.layer.0.ffn"])
    for name, score in ranks[0]["scores"].items():  # reduced: one set of scores, so one selection
        assert torch.equal(score, ranks[1]["scores"][name]), f"ranks score {name} differently"
    for name, mask in ranks[0]["selected"].items():
        assert torch.equal(mask, ranks[1]["selected"][name]), f"ranks disagree on {name}"
    assert float(ranks[0]["selected"]["encoder.layer"].sum()) < 3, "a layer was selected"


# -- 2. documented: after compact, unwrap / compact / prepare again / optimizer ------------------------------------

def engine_section():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### The engine on its own")
    return readme[start:readme.index("\n## ", start)]


def test_the_docs_say_to_reduce_scores_and_wrap_again_after_compact():
    section = engine_section()
    assert "reduce_scores(importance.scores(model, groups))" in section
    assert "unwrap, compact, prepare again, then build the" in section
    assert "save_pruned" in section and "writes the weights without the masks" in section
    assert "prepare (wrap) it again, then build the optimizer" in " ".join(compact.__doc__.split())


# -- 3. a model wrapped for several processes is refused with what to do ----------------------------------------------

class Wrapper(nn.Module):
    """What DistributedDataParallel / accelerate / FSDP look like to the engine: the model under ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("entry", ["attach_masks", "find_groups", "update", "scores", "compact", "save_pruned"])
def test_a_wrapped_model_is_refused_with_unwrap_it_first(tmp_path, entry):
    model = tiny_model("bert").train()
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    wrapped = Wrapper(model)
    wrapped(**labelled(0)).loss.backward()
    scored = TaylorImportance()
    scored.update(model, groups)  # scores of the model itself, then read through a wrapper
    calls = {
        "scores": lambda: scored.scores(wrapped, groups),
        "attach_masks": lambda: attach_masks(wrapped),
        "find_groups": lambda: find_groups(wrapped),
        "update": lambda: TaylorImportance().update(wrapped, groups),
        "compact": lambda: compact(wrapped),
        "save_pruned": lambda: save_pruned(wrapped, tmp_path / "out"),
    }
    with pytest.raises(TypeError, match=r"Unwrap it first: accelerator.unwrap_model\(model\)"):
        calls[entry]()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 37  # nothing compacted


@pytest.mark.parametrize("entry", ["attach_masks", "compact", "save_pruned", "post_training_prune", "quantize_int8",
                                   "prune_positions", "export_onnx", "model_profile"])
def test_a_torch_compile_wrapper_is_refused_before_anything_changes(tmp_path, entry):
    """torch.compile(model) returns an OptimizedModule that forwards config and base_model: it was accepted, then
    save_pruned compacted the model inside and failed on the wrapper with AttributeError, writing nothing."""
    from hf_adaprune.deploy import export_onnx, prune_positions, quantize_int8
    from hf_adaprune.post_training import post_training_prune
    from hf_adaprune.reporting.flops import model_profile

    model = tiny_model("bert")
    masks = attach_masks(model)
    masks.set("encoder.layer.0.attention", torch.tensor([1.0, 0.0, 0.0, 1.0]))
    compiled = torch.compile(model, backend="eager")  # nothing runs: the wrapper alone
    calls = {
        "attach_masks": lambda: attach_masks(compiled),
        "compact": lambda: compact(compiled),
        "save_pruned": lambda: save_pruned(compiled, tmp_path / "out"),
        "post_training_prune": lambda: post_training_prune(compiled, [labelled(0)], 0.5, progress=False),
        "quantize_int8": lambda: quantize_int8(compiled),
        "prune_positions": lambda: prune_positions(compiled, 16),
        "export_onnx": lambda: export_onnx(compiled, tmp_path / "out"),
        "model_profile": lambda: model_profile(compiled, 16),
    }
    with pytest.raises(TypeError, match=r"OptimizedModule wraps a BertForSequenceClassification: torch.compile\(model\) "
                                        r"returns a wrapper, and hf_adaprune prunes the model itself. Pass "
                                        r"model._orig_mod"):
        calls[entry]()
    assert not (tmp_path / "out").exists()
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 32 and get_masks(model) is masks
    assert model.config.max_position_embeddings == 64  # prune_positions changed nothing


def test_masks_attached_to_a_model_compiled_in_place_reach_its_outputs(caplog):
    """model.compile() then a call: the graph traced without the gates ran on, the masks ignored (outputs equal to the
    dense model's); attaching masks drops the compiled graphs, so the next call compiles with the gates."""
    import logging

    model, compiled = tiny_model("bert"), tiny_model("bert")
    compiled.compile(backend="aot_eager")
    batch = text_batch()
    with torch.no_grad():
        dense = compiled(**batch).logits
        with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
            for each in (model, compiled):
                attach_masks(each).set("encoder.layer.1.ffn", torch.zeros(37))
        assert "compiled in place (model.compile()): its compiled graphs, traced without the pruning gates, are " \
               "dropped" in caplog.text
        masked, eager = compiled(**batch).logits, model(**batch).logits
    assert (eager - dense).abs().max() > 1e-4, "the masks change the outputs"
    assert (masked - eager).abs().max() <= 1e-5


# -- 4. objects from before compact() -----------------------------------------------------------------------------

def test_masks_detached_by_compact_refuse_to_be_set():
    model = random_biases(tiny_model("bert"))
    masks = attach_masks(model)
    masks.set("encoder.layer.0.ffn", torch.cat([torch.zeros(10), torch.ones(27)]))
    compact(model)
    for write in (lambda: masks.set("encoder.layer.0.ffn", torch.ones(37)),
                  lambda: masks.update({"encoder.layer.0.ffn": torch.ones(37)}),
                  lambda: masks.load_state_dict({"encoder.layer.0.ffn": torch.ones(37)})):
        with pytest.raises(RuntimeError, match=r"detached by compact\(\).*attach_masks\(model\) again"):
            write()
    assert masks.summary()["encoder.layer.0.ffn"] == 27  # still readable
    fresh = attach_masks(model)  # the way on
    fresh.set("encoder.layer.0.ffn", torch.cat([torch.zeros(7), torch.ones(20)]))


def test_an_importance_refuses_a_model_compacted_since_it_began_scoring():
    model = random_biases(tiny_model("bert"))  # eval: no dropout, so a fresh importance reads the same step
    masks = attach_masks(model, layers=True)
    scored_groups = list(masks.groups.values())
    importance = scored(model, scored_groups)
    before = {name: value.clone() for name, value in importance.scores(model, scored_groups).items()}
    masks.set("encoder.layer", torch.tensor([1.0, 0.0, 1.0]))  # remove layer 1: layer 2 becomes layer 1
    compact(model)
    # the groups the scores were taken with still read them (a trainer's pruning_groups, after training)
    after = importance.scores(model, scored_groups)
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    groups = list(attach_masks(model, layers=True).groups.values())
    model(**labelled(10)).loss.backward()
    with pytest.raises(ValueError, match=r"compacted since this TaylorImportance began.*reset\(\)"):
        importance.update(model, groups)
    # nor are the old scores read under the names the remaining layers have now (old layer 0's for the new layer 0
    # passed selection: same shapes)
    with pytest.raises(ValueError, match=r"compacted since this TaylorImportance began.*reset\(\)"):
        importance.scores(model, groups)
    importance.reset()  # or a new one: scores of the model as it is now
    assert importance.update(model, groups)
    model.zero_grad()
    fresh = scored(model, groups, steps=1, seed=10)
    assert torch.allclose(importance.scores(model, groups)["encoder.layer.1.ffn"],
                          fresh.scores(model, groups)["encoder.layer.1.ffn"])


def test_an_importance_goes_on_over_a_compaction_that_removed_nothing():
    model = tiny_model("bert").train()
    groups = list(attach_masks(model).groups.values())
    importance = scored(model, groups, steps=2)
    compact(model)  # nothing masked: the same structures
    attach_masks(model)
    model(**labelled(5)).loss.backward()
    assert importance.update(model, find_groups(model)) and importance.num_updates == 3


# -- 5. bad input to the selection --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def selection_inputs():
    model = tiny_model("bert").train()
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    scores = {g.name: torch.rand(m.numel()) for g, m in zip(groups, masks.masks.values())}
    return groups, scores, masks


BAD_SELECTIONS = {
    "PruningMasks as current": (TypeError, r"pass masks\.masks",
                                lambda g, s, m: select_masks_by_kind(g, s, m, 0.4)),
    "select_masks PruningMasks as current": (TypeError, r"pass masks\.masks", lambda g, s, m: select_masks(s, m, 0.4)),
    "scores as a list": (TypeError, r"scores must be a dict",
                         lambda g, s, m: select_masks_by_kind(g, list(s.values()), m.masks, 0.4)),
    "group names": (TypeError, r"groups must be the groups .*find_groups",
                    lambda g, s, m: select_masks_by_kind([x.name for x in g], s, m.masks, 0.4)),
    "ratio a string": (TypeError, r"ratio must be a number",
                       lambda g, s, m: select_masks_by_kind(g, s, m.masks, "0.4")),
    "ratio None": (TypeError, r"ratio must be a number", lambda g, s, m: select_masks(s, m.masks, None)),
    "floors negative": (ValueError, r"floors\['heads'\] must be a whole number >= 0",
                        lambda g, s, m: select_masks_by_kind(g, s, m.masks, 0.4, floors={"heads": -3})),
    "floor negative": (ValueError, r"floor must be a whole number >= 0",
                       lambda g, s, m: select_masks(s, m.masks, 0.4, floor=-1)),
    "multiple_of 0": (ValueError, r"multiple_of must be a whole number >= 1",
                      lambda g, s, m: select_masks_by_kind(g, s, m.masks, 0.4, multiple_of=0)),
    "multiple_of -8": (ValueError, r"multiple_of must be a whole number >= 1",
                       lambda g, s, m: select_masks_by_kind(g, s, m.masks, 0.4, multiple_of=-8)),
    "masks on other groups": (ValueError, r"no masks for groups .*attached on other groups",
                              lambda g, s, m: select_masks_by_kind(g, s, {g[0].name: m.masks[g[0].name]}, 0.4)),
}


@pytest.mark.parametrize("case", list(BAD_SELECTIONS))
def test_bad_input_to_the_selection_is_refused_with_what_to_pass(selection_inputs, case):
    groups, scores, masks = selection_inputs
    error, message, call = BAD_SELECTIONS[case]
    with pytest.raises(error, match=message):
        call(groups, scores, masks)


def test_good_input_still_selects(selection_inputs):
    groups, scores, masks = selection_inputs
    selected = select_masks_by_kind(groups, scores, masks.masks, 0.4, floors={"heads": 0, "ffn": 1}, multiple_of=1)
    assert set(selected) == set(masks.masks)
    kept, total = sum(int(m.sum()) for m in selected.values()), sum(m.numel() for m in selected.values())
    assert 0 < kept < total, "some structures removed, not all"
    halved = select_masks(scores, masks.masks, 0.5, floor=0)
    assert halved.keys() == masks.masks.keys()
    assert abs(sum(int(m.sum()) for m in halved.values()) - total / 2) <= len(halved), "half, each group rounded"
    # whole numbers given as floats and floors in any mapping select as before the checks came (8.0, 1.0)
    from types import MappingProxyType

    as_floats = select_masks_by_kind(groups, scores, masks.masks, 0.4, floors=MappingProxyType({"heads": 0.0,
                                                                                              "ffn": 1.0}),
                                     multiple_of=8.0)
    as_ints = select_masks_by_kind(groups, scores, masks.masks, 0.4, floors={"heads": 0, "ffn": 1}, multiple_of=8)
    assert all(torch.equal(as_floats[name], as_ints[name]) for name in as_ints)
    assert torch.equal(select_masks(scores, masks.masks, 0.5, floor=1.0)[groups[0].name],
                       select_masks(scores, masks.masks, 0.5, floor=1)[groups[0].name])


if __name__ == "__main__":  # a rank of test_two_processes_select_the_same_layers_after_reduce_scores
    _worker(sys.argv[1])
