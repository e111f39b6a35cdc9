"""hf_adaprune's log lines follow transformers' verbosity (set_verbosity_*, a Trainer's log_level / log_level_replica)
unless the library's logger is given a level of its own; without a logging set-up they go to stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT, one_thread_env

SCRIPT = textwrap.dedent('''
    import logging, sys, tempfile
    sys.path.insert(0, "tests")
    import transformers
    from transformers.utils import logging as hf_logging
    import hf_adaprune  # noqa: F401
    log = logging.getLogger("hf_adaprune.trainer.trainer")
    log.warning("one: a warning at the default verbosity")
    log.info("hidden: an info line at the default verbosity")
    hf_logging.set_verbosity_info()
    log.info("two: an info line under set_verbosity_info")
    hf_logging.set_verbosity_error()
    log.warning("hidden: a warning under set_verbosity_error")
    logging.getLogger("hf_adaprune").setLevel(logging.INFO)
    log.info("three: the library's own level beats the verbosity")
    logging.getLogger("hf_adaprune").setLevel(logging.NOTSET)
    log.warning("hidden: following the verbosity again")
    hf_logging.set_verbosity_warning()
    from test_trainer import make_trainer
    # a Trainer sets the verbosity from log_level: "error" silences the end-of-run warning of compact_at_end=False
    make_trainer(tempfile.mkdtemp(), compact_at_end=False, log_level="error", disable_tqdm=True).train()
    hf_logging.set_verbosity_warning()
    log.warning("four: a warning again")
    mine = logging.StreamHandler(sys.stderr)
    mine.setFormatter(logging.Formatter("mine: %(message)s"))
    logging.getLogger("hf_adaprune").addHandler(mine)
    log.warning("once: a handler of the program's own on the library's logger takes it, alone")
    logging.getLogger("hf_adaprune").removeHandler(mine)
    logging.basicConfig(format="root: %(levelname)s %(name)s %(message)s")
    log.warning("five: through the program's own logging set-up")
''')


def test_log_lines_follow_transformers_verbosity():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=one_thread_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines()
             if "hf_adaprune" in line or line.startswith(("root:", "mine:"))]
    assert lines == [
        "[hf_adaprune] one: a warning at the default verbosity",
        "[hf_adaprune] two: an info line under set_verbosity_info",
        "[hf_adaprune] three: the library's own level beats the verbosity",
        "[hf_adaprune] four: a warning again",
        "mine: once: a handler of the program's own on the library's logger takes it, alone",
        "root: WARNING hf_adaprune.trainer.trainer five: through the program's own logging set-up",
    ], result.stderr[-3000:]


def test_the_recipes_log_at_info_unless_log_level_says_otherwise(tmp_path):
    import logging

    import transformers
    from transformers.utils import logging as hf_logging

    from recipes.skeleton import recipe_log_level

    def level(**kwargs):
        return recipe_log_level(transformers.TrainingArguments(str(tmp_path), report_to="none", **kwargs))

    assert level() == logging.INFO
    assert level(log_level="error") == logging.ERROR and level(log_level="debug") == logging.DEBUG
    # what setup_logging sets, end to end (it configures the root logger: put back afterwards)
    from recipes.skeleton import setup_logging

    library, root = logging.getLogger("hf_adaprune"), logging.getLogger()
    saved = library.level, list(root.handlers), hf_logging.get_verbosity()
    try:
        for log_level, expected in (("passive", logging.INFO), ("error", logging.ERROR)):
            setup_logging(transformers.TrainingArguments(str(tmp_path), report_to="none", log_level=log_level))
            assert library.getEffectiveLevel() == expected, log_level
    finally:
        library.setLevel(saved[0])
        root.handlers[:] = saved[1]
        hf_logging.set_verbosity(saved[2])


def test_a_level_set_and_given_back_follows_the_verbosity_again(caplog):
    """pytest's caplog.at_level (and any code that saves a logger's level and sets it back) leaves the library's
    logger following transformers' verbosity: its own level reads NOTSET."""
    import logging

    from transformers.utils import logging as hf_logging

    import hf_adaprune  # noqa: F401

    library = logging.getLogger("hf_adaprune")
    with caplog.at_level(logging.ERROR, logger="hf_adaprune"):
        pass
    assert library.level == logging.NOTSET
    verbosity = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_info()
        assert logging.getLogger("hf_adaprune.trainer.trainer").isEnabledFor(logging.INFO)
        hf_logging.set_verbosity_error()
        assert not logging.getLogger("hf_adaprune.trainer.trainer").isEnabledFor(logging.WARNING)
    finally:
        hf_logging.set_verbosity(verbosity)


def test_progress_bars_follow_transformers_switch(capsys):
    """transformers.utils.logging.disable_progress_bar() turns off the library's bars too, as it does transformers'."""
    from transformers.utils import logging as hf_logging

    from conftest import tiny_model
    from hf_adaprune import find_groups
    from hf_adaprune.post_training.calibration import mask_gradient_scores
    from test_post_training import batches_for, labelled_examples

    model = tiny_model("bert")
    batches = batches_for(model, labelled_examples(16))
    enabled = hf_logging.is_progress_bar_enabled()  # HF_HUB_DISABLE_PROGRESS_BARS=1 in the environment: off
    try:
        hf_logging.enable_progress_bar()
        mask_gradient_scores(model, find_groups(model), batches, progress=True)
        assert "calibration: scores" in capsys.readouterr().err
        hf_logging.disable_progress_bar()
        mask_gradient_scores(model, find_groups(model), batches, progress=True)
        assert "calibration: scores" not in capsys.readouterr().err
    finally:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def test_what_reaches_the_integrations_matches_the_report(tmp_path):
    """Each decision's logged step size is the step the report records for it (it was the next step, already grown
    or halved), and the final check reaches Trainer.log (report_to integrations) as the report gives it."""
    import json

    import transformers

    from test_trainer import make_trainer

    trainer = make_trainer(tmp_path, pruning_tolerance=10.0, max_steps=30)
    logged = []
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(dict(logs or {}))}))
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    judged = [d for d in report["decisions"] if d["event"] in ("keep", "rollback")]
    steps = [entry["pruning/step_size"] for entry in logged if "pruning/sparsity_tried" in entry][1:]  # after the reference
    assert len(judged) >= 2 and steps == [d["step"] for d in judged]
    final = [entry for entry in logged if "pruning/final_metric" in entry]
    assert len(final) == 1 and final[0]["pruning/final_metric"] == report["final_check"]["metric"]
    assert final[0]["pruning/final_within_tolerance"] == float(report["final_check"]["within_tolerance"])
    assert final[0]["pruning/final_drop"] == report["final_check"]["drop"]


def test_the_final_log_entry_gives_what_the_model_handed_back_removes(tmp_path):
    """load_best_model_at_end restored a checkpoint from before a later kept step: the logged stream ended at that
    step's sparsity (0.5), with nothing saying the model handed back removes less."""
    import json

    import numpy as np
    import transformers

    from hf_adaprune import AdaptivePruningTrainer
    from conftest import tiny_model
    from test_trainer import make_args, toy_dataset

    holder, logged = {}, []

    def earliest_is_best(prediction):
        accuracy = float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())
        return {"accuracy": accuracy, "early": -float(holder["trainer"].state.global_step)}

    data = toy_dataset()
    args = make_args(tmp_path, max_steps=36, eval_strategy="steps", eval_steps=12, save_strategy="steps",
                     save_steps=12, load_best_model_at_end=True, metric_for_best_model="early", greater_is_better=True)
    trainer = holder["trainer"] = AdaptivePruningTrainer(
        model=tiny_model("bert"), args=args, train_dataset=data, eval_dataset=data.select(range(48)),
        compute_metrics=earliest_is_best)
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(dict(logs or {}))}))
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    decided = [entry["pruning/sparsity_selected"] for entry in logged if "pruning/sparsity_selected" in entry]
    assert decided[-1] > report["final_sparsity"] > 0, "the case: a step kept after the restored checkpoint"
    (final,) = [entry for entry in logged if "pruning/final_sparsity" in entry]
    assert final["pruning/final_sparsity"] == report["final_sparsity"]
    assert final["pruning/final_heads_pruned"] < [e for e in logged if "pruning/heads_pruned" in e][-1][
        "pruning/heads_pruned"]
