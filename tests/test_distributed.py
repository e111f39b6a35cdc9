"""Multi-process pruning (torchrun, gloo on CPU): one decision for all ranks; kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import free_port

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def launcher(name: str) -> str | None:
    """The launcher installed beside this interpreter (a venv's, not whichever one PATH finds first), else PATH's."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


TORCHRUN = launcher("torchrun")
ACCELERATE = launcher("accelerate")


def launch_command(launcher, nproc):
    """The command line a user types to start ``nproc`` processes."""
    port = str(free_port())
    if launcher == "torchrun":
        return [TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", port]
    # accelerate's multi-process launcher (torch.distributed.run underneath); on a machine without
    # GPUs each process runs on CPU and the Trainer's Accelerator picks the gloo backend.
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]


def run_worker(tmp_path, name, batch, nproc=1, extra=(), launcher="torchrun"):
    out = tmp_path / name
    if nproc == 1:
        cmd = [sys.executable, WORKER, str(out), str(batch), *extra]
    else:
        cmd = [*launch_command(launcher, nproc), WORKER, str(out), str(batch), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    return out, result


def masks_of(out, rank):
    return torch.load(out / f"masks_rank{rank}.pt")


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The single-process reference both launchers are compared with (the same run for both)."""
    one, result = run_worker(tmp_path_factory.mktemp("one_process"), "one", batch=16, nproc=1)
    assert result.returncode == 0, result.stderr[-4000:]
    return one


@pytest.mark.parametrize("launcher", [
    pytest.param("torchrun", marks=pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")),
    pytest.param("accelerate", marks=pytest.mark.skipif(ACCELERATE is None, reason="accelerate not on PATH")),
])
def test_two_processes_select_the_same_structures_as_one(tmp_path, launcher, one_process_run):
    two, result = run_worker(tmp_path, "two", batch=8, nproc=2, launcher=launcher)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1, single = masks_of(two, 0), masks_of(two, 1), masks_of(one_process_run, 0)
    assert any(float(m.sum()) < m.numel() for m in rank0.values()), "something was pruned"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    # Same global batches (sequential sampler, sharded by accelerate), gradients averaged by DDP:
    # the selected sets agree with the single-process run.
    for name in rank0:
        assert torch.equal(rank0[name], single[name]), f"2-process and 1-process runs disagree on {name}"
    # only the main process writes the report
    assert (two / "pruning_report.json").exists()


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_distilling_agree(tmp_path):
    """Each rank builds its own teacher (never DDP-wrapped); both end with the same teacher and masks."""
    two, result = run_worker(tmp_path, "two", batch=8, nproc=2, extra=("--distill",))
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = masks_of(two, 0), masks_of(two, 1)
    assert any(float(m.sum()) < m.numel() for m in rank0.values()), "something was pruned"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    teachers = [torch.load(two / f"teacher_rank{rank}.pt") for rank in (0, 1)]
    for name in teachers[0]:
        assert torch.equal(teachers[0][name], teachers[1][name]), name
    assert (two / "_distillation_teacher" / "model.safetensors").exists()  # written once, by the main process


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_with_a_latency_budget_share_one_cost_table(tmp_path):
    """Each rank times the structures itself; all take rank 0's table (theirs differed by up to 15%, and with
    them the structures selected: the run stopped on masks that differed across processes)."""
    two, result = run_worker(tmp_path, "two", batch=8, nproc=2, extra=("--latency",))
    assert result.returncode == 0, result.stderr[-4000:]
    costs = [torch.load(two / f"costs_rank{rank}.pt") for rank in (0, 1)]
    assert costs[0] == costs[1] and len(costs[0]) > 0
    rank0, rank1 = masks_of(two, 0), masks_of(two, 1)
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("extra", [(), ("--refit",)])
def test_rank_with_different_masks_raises(tmp_path, extra):
    # with the re-fit too: the masks are compared before the re-fit, whose broadcasts follow them
    _, result = run_worker(tmp_path, "broken", batch=8, nproc=2, extra=("--break-rank", "1", *extra))
    assert result.returncode != 0
    assert "pruning masks differ across processes" in result.stderr


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("rows", [33, 44])
def test_an_evaluate_before_train_still_trains_one_model_and_the_loss_counts_every_row_once(tmp_path, rows):
    """evaluate() before train() left accelerate's evaluation preparation on the model, so training did not wrap it
    in DDP and each process trained its own copy; 33 decision rows on 2 processes padded one repeat into a batch
    mean (a loss 0.003 off the 1-process one, with tolerance 0.01). 44 rows split evenly over the 2 processes, but
    not into their eval batches of 32: the second process's batch of 12 was filled up with 20 repeats."""
    extra = ("--evaluate-first", "--metric", "loss", "--eval-rows", str(rows))
    two, result = run_worker(tmp_path, "two", batch=8, nproc=2, extra=extra)
    assert result.returncode == 0, result.stderr[-4000:]
    one, result = run_worker(tmp_path, "one", batch=16, nproc=1, extra=extra)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (torch.load(two / f"weights_rank{rank}.pt") for rank in (0, 1))
    for name, weight in rank0.items():
        torch.testing.assert_close(rank1[name], weight, rtol=0, atol=0, msg=name)
    reference = [torch.load(out / "controller_rank0.pt")["reference"] for out in (two, one)]
    assert reference[0] == pytest.approx(reference[1], abs=1e-4)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_a_metric_check_that_fails_on_one_process_stops_every_process(tmp_path):
    """The check before training retried on all decision rows where it failed: a process that failed alone retried
    alone, and the two waited for each other in different collectives until the backend's timeout (30 minutes)."""
    _, result = run_worker(tmp_path, "failing", batch=8, nproc=2, extra=("--metric-fails-on-rank", "1"))
    assert result.returncode != 0
    assert "metric fails on this process" in result.stderr
    assert "metric check before training failed on process(es) [1]" in result.stderr


def test_the_recipes_dense_trainer_reports_the_same_eval_loss_on_two_processes_as_on_one(tmp_path):
    """The dense snapshot's and the dense control's eval loss in results.json were N times the loss under N
    processes (transformers scales it by the process count for models that take loss kwargs; BERT ignores them)."""
    losses = []
    for nproc in (2, 1):
        out, result = run_worker(tmp_path, f"nproc{nproc}", batch=8, nproc=nproc, extra=("--dense-eval", "--eval-rows", "32"))
        assert result.returncode == 0, result.stderr[-4000:]
        losses.append([json.loads((out / f"eval_loss_rank{rank}.json").read_text()) for rank in range(nproc)])
    (rank0, rank1), (one,) = losses
    assert rank0 == rank1 == pytest.approx(one, rel=1e-5)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    full, result = run_worker(tmp_path, "full", batch=16)
    assert result.returncode == 0, result.stderr[-4000:]
    crashed, result = run_worker(tmp_path, "crashed", batch=16, extra=("--crash-after", "12"))
    assert result.returncode == 17, result.stderr[-4000:]
    assert not (crashed / "masks_rank0.pt").exists()
    checkpoint = crashed / "checkpoint-12"
    assert (checkpoint / "pruning_state.pt").exists() and (checkpoint / "model.safetensors").exists()
    assert not list(checkpoint.glob(".*.tmp")), "no half-written files"
    state = torch.load(checkpoint / "pruning_state.pt", weights_only=True)
    assert state["controller"]["reference"] is not None and not state["controller"]["done"], "killed mid-pruning"
    resumed, result = run_worker(tmp_path, "crashed", batch=16, extra=("--resume", str(checkpoint)))
    assert result.returncode == 0, result.stderr[-4000:]
    a, b = masks_of(full, 0), masks_of(resumed, 0)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ca = torch.load(full / "controller_rank0.pt")
    cb = torch.load(resumed / "controller_rank0.pt")
    assert [h["event"] for h in ca["history"]] == [h["event"] for h in cb["history"]]
    assert [h.get("metric") for h in ca["history"]] == pytest.approx([h.get("metric") for h in cb["history"]])


def test_mask_check_catches_two_swapped_neurons_of_a_large_model():
    """The check compares exact checksums: with BERT-base-sized masks a relative tolerance let a rank that pruned
    other neurons of the same count pass."""
    from types import SimpleNamespace

    from hf_adaprune.trainer.distributed import check_masks_agree

    groups = [SimpleNamespace(name=f"layer{i}.ffn") for i in range(12)]
    mine = {g.name: torch.ones(3072) for g in groups}
    mine["layer5.ffn"][1000] = 0.0
    theirs = {name: mask.clone() for name, mask in mine.items()}
    theirs["layer5.ffn"][1000], theirs["layer5.ffn"][2000] = 1.0, 0.0  # the same count, another neuron

    class Ranks:
        """gather() as two ranks see it: this rank's checksum beside the one ``other`` held (``None``: the same)."""
        num_processes = 2

        def __init__(self, other=None):
            self.other, self.seen = other, None

        def gather(self, checksum):
            self.seen = checksum
            return torch.cat([checksum, checksum if self.other is None else self.other])

    same = Ranks()
    check_masks_agree(same, theirs, groups, "cpu")  # equal masks pass
    with pytest.raises(RuntimeError, match="pruning masks differ across processes"):
        check_masks_agree(Ranks(other=same.seen), mine, groups, "cpu")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_score_generated_text_of_each_decision_row_once(tmp_path):
    """6 decision rows over 2 processes with eval batches of 4: the sampler repeats 2 rows to even out the ranks;
    the generated predictions the metric reads are the 6 rows, not 8 (Seq2SeqTrainer.predict gathers the repeats)."""
    out = tmp_path / "s2s"
    cmd = [*launch_command("torchrun", 2), os.path.join(os.path.dirname(__file__), "seq2seq_worker.py"), str(out), "6"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((out / f"reference_rank{rank}.json").read_text()) == {"reference": 6.0}
