#!/usr/bin/env python
"""Train a small Marian en->de model on Multi30k from scratch, then prune it adaptively, on CPU.

No pretrained translation checkpoint is available offline, so everything starts from
the data in ``../shared/data/multi30k`` (relative to the repository root):

1. Tokenizer: a BPE with a SentencePiece-style word-boundary marker, shared by English
   and German (``--vocab_size``, default 8,000), trained with the ``tokenizers`` library
   on the training pairs and wrapped as a ``PreTrainedTokenizerFast`` (``<pad>`` 0,
   ``</s>`` 1, ``<unk>`` 2; every sequence ends in ``</s>``, as Marian's do).
2. Dense model: a ``MarianMTModel`` from a ``MarianConfig`` (default d_model 256, 3+3
   layers, 4 heads, FFN 1,024, tied embeddings: 7.7M parameters), trained for at most
   ``--dense_minutes`` of wall-clock time (default 20) or ``--dense_max_steps`` steps,
   whichever comes first, with an inverse-square-root learning-rate schedule (it needs no
   step count, so a time-capped run ends with a sensible rate). The output says how many
   steps and epochs that was.
3. Pruning: from the dense model, ``--prune_steps`` more steps with
   ``AdaptivePruningSeq2SeqTrainer``: Taylor importance, target ``--target`` of the
   attention+FFN FLOPs (``pruning_target_type=flops``), as long as greedy BLEU on the
   first ``--eval_samples`` val sentences stays within ``--tolerance`` BLEU points
   (absolute) of its reference; then the model is compacted. ``--prune heads,ffn,layers`` lets it remove
   whole encoder and decoder layers too (what makes batch-1 ``generate`` faster), ``--target_type latency``
   budgets by generate time per token measured at batch 1 instead of FLOPs, ``--distillation`` distils from
   the dense model while pruning, ``--sequence_distillation`` prunes on the dense model's translations of the
   training sources instead of their references.
4. Dense vs pruned: sacreBLEU and chrF on test_2016_flickr (greedy, scored against the
   raw reference text), parameters, FLOPs (seq ``--seq_len``), and CPU latency of
   ``generate`` (greedy) at batch 1 (a test sentence of median length) and batch 32
   (the first 32 test sentences), dense and pruned timed alternately in one process;
   medians. With ``--dense_control`` the dense model is also trained for as many more
   steps as the pruning run took, without pruning, to separate the effect of the extra
   training from that of pruning; ``--control_only`` trains and scores only that control (``control.json``),
   so it can run in a process of its own beside the pruning run.

Writes ``results.json`` and ``results.md`` (a Markdown table) to ``--output_dir``, and
``tokenizer/``, ``dense/`` (model + tokenizer) and ``pruned/`` (Hub format, loads with
``hf_adaprune.AutoPrunedModel``) in it. Run from the repository root::

    python examples/train_prune_marian_multi30k.py                 # ~35-50 min on 2 CPU cores
    python examples/train_prune_marian_multi30k.py --dense_model outputs/marian_multi30k/dense   # skip 1-2

``recipes/configs/translation_marian_multi30k.yaml`` runs step 3 through the recipe,
starting from ``outputs/marian_multi30k/dense``.

Smoke test (about a minute; numbers meaningless)::

    python examples/train_prune_marian_multi30k.py --output_dir /tmp/marian_smoke --train_samples 256 \\
        --vocab_size 500 --d_model 32 --ffn_dim 64 --layers 2 --dense_max_steps 8 --prune_steps 8 \\
        --batch_size 16 --eval_samples 16 --max_test_samples 32 --warmup_steps 2 --interval 2 \\
        --initial_step 0.25 --max_length 32 --latency_repeats 2
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DataCollatorForSeq2Seq,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)

from hf_adaprune import AdaptivePruningSeq2SeqTrainer, DatasetOrderEvalMixin, Seq2SeqPruningArguments
from hf_adaprune.layout import freeze_unsaved_parameters
from hf_adaprune.reporting.flops import compare_profiles, format_comparison, model_profile
from hf_adaprune.reporting.latency import format_latency
from hf_adaprune.sequence_distillation import sequence_distillation_targets

import recipes.translation as recipe  # file reading and checks, metrics, latency
from recipes.example_utils import (
    check_example_flags,
    example_parser,
    markdown_size_rows,
    markdown_table,
    setup_example_logging,
    write_outputs,
)
from recipes.results import format_count, format_ms

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "multi30k"
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2
logger = logging.getLogger("train_prune_marian_multi30k")


def parse_args(argv=None):
    p = example_parser(__doc__)
    p.add_argument("--data_dir", default=str(DEFAULT_DATA),
                   help="folder with train/val/<test_split>.{en,de}.gz (Multi30k task 1)")
    p.add_argument("--test_split", default="test_2016_flickr")
    p.add_argument("--output_dir", default="outputs/marian_multi30k")
    p.add_argument("--dense_model", default=None, help="skip steps 1-2: a dense Marian folder with its tokenizer")
    p.add_argument("--train_samples", type=int, default=None, help="use this many training pairs (default: all)")
    p.add_argument("--max_test_samples", type=int, default=None, help="first N test pairs (default: all 1,000)")
    p.add_argument("--max_length", type=int, default=64, help="source and target tokens (truncation, generation)")
    # tokenizer and model
    p.add_argument("--vocab_size", type=int, default=8000, help="shared en+de BPE vocabulary")
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn_dim", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    # dense training
    p.add_argument("--batch_size", type=int, default=64, help="training pairs per step (both stages)")
    p.add_argument("--dense_minutes", type=float, default=20.0, help="wall-clock cap on dense training")
    p.add_argument("--dense_max_steps", type=int, default=6000, help="step cap on dense training")
    p.add_argument("--dense_lr", type=float, default=1e-3, help="peak learning rate (inverse sqrt schedule)")
    p.add_argument("--dense_warmup", type=int, default=300, help="learning-rate warm-up steps of dense training")
    # pruning
    p.add_argument("--prune_steps", type=int, default=400, help="fine-tuning steps while pruning")
    p.add_argument("--prune_lr", type=float, default=3e-4)
    p.add_argument("--target", type=float, default=0.5, help="fraction of attention+FFN FLOPs to remove (>= 0.4)")
    p.add_argument("--prune", default="heads,ffn",
                   help="structures to prune: heads, ffn, layers or a comma list (layers: whole encoder and "
                        "decoder layers, which is what makes generate faster at batch 1)")
    p.add_argument("--roles", default="all",
                   help="roles to prune (pruning_roles): e.g. decoder_self,cross,decoder for the decoder only, "
                        "which batch-1 generate pays once per token")
    p.add_argument("--target_type", choices=("flops", "latency"), default="flops",
                   help="--target as a fraction of attention+FFN FLOPs, or of generate time per token measured at "
                        "batch 1 on this machine (a latency table of every structure, taken when pruning starts)")
    p.add_argument("--distillation", action="store_true",
                   help="distil from the dense model while pruning (token-level KL on the decoder logits, "
                        "temperature 2, weight 0.5 against the task loss: the library's defaults)")
    p.add_argument("--sequence_distillation", action="store_true",
                   help="prune on the dense model's greedy/beam translations of the training sources instead of "
                        "the references (Kim & Rush 2016); the control still trains on the references")
    p.add_argument("--tolerance", type=float, default=1.0, help="largest BLEU drop on the val slice (absolute points)")
    p.add_argument("--eval_samples", type=int, default=200, help="first N val sentences steer pruning")
    p.add_argument("--warmup_steps", type=int, default=20, help="pruning warm-up: steps before the reference")
    p.add_argument("--interval", type=int, default=40, help="steps between a pruning step and its evaluation")
    p.add_argument("--initial_step", type=float, default=0.15, help="sparsity added by the first pruning step")
    p.add_argument("--seq_len", type=int, default=32, help="sequence length for FLOP counts (Multi30k: ~15 tokens)")
    p.add_argument("--dense_control", action="store_true",
                   help="also train the dense model for the pruning run's steps without pruning, and score it")
    p.add_argument("--control_only", action="store_true",
                   help="only train the dense model --prune_steps more steps without pruning and score it "
                        "(control.json): the control of a pruning run, in its own process beside it")
    # reporting
    p.add_argument("--num_beams", type=int, default=1, help="beams for test scoring and latency (1 = greedy)")
    p.add_argument("--latency_repeats", type=int, default=None,
                   help="alternating repeats per batch size (default: 20 at batch 1, 5 at batch 32; 0: skip timing)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if not 0.0 < args.target < 1.0:
        p.error(f"--target must be in (0, 1); got {args.target}")
    check_example_flags(p, args, None if args.control_only else
                        lambda: pruning_arguments(args, pruning_common_arguments(args)))
    return args


def common_training_arguments(args) -> dict:
    """The Seq2SeqTrainingArguments the dense, pruning and control runs share."""
    return dict(per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=100, adam_beta2=0.98,
                label_smoothing_factor=0.1, logging_steps=50, save_strategy="no", report_to="none",
                dataloader_pin_memory=False, seed=args.seed, disable_tqdm=True,
                train_sampling_strategy="group_by_length",  # batches of similar lengths: less padding
                predict_with_generate=True, generation_max_length=args.max_length,
                generation_num_beams=args.num_beams)


def pruning_common_arguments(args) -> dict:
    """Those of the pruning run and its control: another order of the training pairs than the dense stage's."""
    return dict(common_training_arguments(args), data_seed=args.seed + 1)


def pruning_arguments(args, prune_common: dict) -> Seq2SeqPruningArguments:
    """The arguments of step 3 (built, and so checked, by parse_args before any work)."""
    return Seq2SeqPruningArguments(
        output_dir=str(Path(args.output_dir) / "pruned"), learning_rate=args.prune_lr, max_steps=args.prune_steps,
        warmup_steps=0, **prune_common,
        prune=args.prune, pruning_roles=args.roles, distillation=args.distillation,
        pruning_metric="sacrebleu", pruning_target=args.target, pruning_target_type=args.target_type,
        **(dict(pruning_generation_tokens=24) if args.target_type == "latency" else {}),  # what the table times
        pruning_tolerance=args.tolerance, pruning_tolerance_type="absolute", pruning_criterion="taylor",
        pruning_warmup_steps=args.warmup_steps, pruning_interval=args.interval,
        pruning_initial_step=min(args.initial_step, args.target), pruning_seq_len=args.seq_len,
        pruning_normalize_scores=True,  # as the README's figures were measured (the default before 2026-12-05)
    )


SEQUENCE_DISTILLATION_NOTE = (", trained on the dense model's translations of the training sources "
                              "(sequence-level distillation)")


# -- data and tokenizer -----------------------------------------------------------------------------------
def load_multi30k(data_dir: Path, test_split: str) -> dict[str, tuple[list[str], list[str]]]:
    """{split: (english, german)}, line-aligned, checked by the recipe's reader."""
    out = {}
    for split in ("train", "val", test_split):
        src, tgt = data_dir / f"{split}.en.gz", data_dir / f"{split}.de.gz"
        for path in (src, tgt):
            if not path.exists():
                sys.exit(f"{path} not found: pass --data_dir (a folder with Multi30k's "
                         f"{{train,val,{test_split}}}.{{en,de}}.gz)")
        out[split] = recipe.read_parallel(str(src), str(tgt), split, max_empty_fraction=0.0)
    return out


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A shared BPE over ``texts``, SentencePiece-style ("▁" marks word starts, so decoding restores spaces)."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                                       show_progress=False))
    eos = bpe.token_to_id("</s>")
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def tokenize(pairs: tuple[list[str], list[str]], tokenizer, max_length: int, sort: bool = False) -> Dataset:
    sources, targets = pairs
    encoded = tokenizer(list(sources), max_length=max_length, truncation=True)
    labels = tokenizer(text_target=list(targets), max_length=max_length, truncation=True)["input_ids"]
    data = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
    dataset = Dataset.from_dict(data)
    if sort:  # corpus scores do not depend on the order; similar lengths per batch generate faster
        order = sorted(range(len(dataset)), key=lambda i: len(data["input_ids"][i]))
        dataset = dataset.select(order)
        return dataset, order
    return dataset, list(range(len(dataset)))


def marian_config(args, tokenizer) -> MarianConfig:
    vocab = len(tokenizer)
    return MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, d_model=args.d_model,
        encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.heads, decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn_dim, decoder_ffn_dim=args.ffn_dim,
        max_position_embeddings=max(256, args.max_length), activation_function="swish", scale_embedding=True,
        dropout=args.dropout, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )


class OrderedSeq2SeqTrainer(DatasetOrderEvalMixin, Seq2SeqTrainer):
    """The dense trainers: training batches grouped by length, predict() in dataset order (scored by position)."""


class TimeBudget(TrainerCallback):
    """Stops training once ``minutes`` of wall-clock time have passed."""

    def __init__(self, minutes: float):
        self.seconds = 60 * minutes
        self.start = None
        self.stopped_at = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.start >= self.seconds:
            control.should_training_stop = True
            self.stopped_at = state.global_step


# -- scoring ------------------------------------------------------------------------------------------------
def translate_and_score(trainer, dataset, order: list[int], references: list[str], tokenizer) -> dict:
    """Greedy/beam translations of ``dataset`` (sorted as ``order``), scored against the raw references."""
    output = trainer.predict(dataset, metric_key_prefix="test")
    scores = recipe.score_translations(output.predictions, [references[i] for i in order], tokenizer)
    return {**scores, "gen_len": output.metrics.get("test_gen_len"), "runtime_s": output.metrics["test_runtime"]}


def timing_repeats(latency_repeats: int | None, default: int) -> int:
    """The alternating repeats to time a batch size with: ``default`` unless --latency_repeats was given (0: skip)."""
    return default if latency_repeats is None else latency_repeats


def markdown(results: dict) -> str:
    d, p, c, s = results["dense"], results["pruned"], results["comparison"], results["setup"]
    rows = []
    for name, label in (("sacrebleu", "BLEU"), ("chrf", "chrF")):
        rows.append((f"{s['test_split']} {label} ({s['test_samples']} sentences, greedy)" if s["num_beams"] == 1
                     else f"{s['test_split']} {label} ({s['test_samples']} sentences, beam {s['num_beams']})",
                     f"{d['test'][name]:.2f}", f"{p['test'][name]:.2f}", f"{p['test'][name] - d['test'][name]:+.2f}"))
    if results.get("dense_control"):
        ctl = results["dense_control"]["test"]
        rows.append((f"{s['test_split']} BLEU, dense + {results['dense_control']['steps']} more steps (control)",
                     f"{ctl['sacrebleu']:.2f}", f"{p['test']['sacrebleu']:.2f}",
                     f"{p['test']['sacrebleu'] - ctl['sacrebleu']:+.2f}"))
    rows.append((f"val BLEU, first {s['eval_samples']} sentences, steers pruning",
                 f"{p['val_reference']:.2f} (reference)", f"{p['val_final']:.2f}",
                 f"{p['val_final'] - p['val_reference']:+.2f} (tolerance {s['tolerance']:.1f})"))
    rows += markdown_size_rows(c, "attention+FFN layers")
    for key, lat in results["latency"].items():
        timing = lat["results"]
        rows.append((f"CPU generate latency, batch {lat['batch_size']} (median)",
                     format_ms(timing["dense"]["median_s"]), format_ms(timing["pruned"]["median_s"]),
                     f"{timing['pruned']['speedup']:.2f}x speed-up (output {lat['output_length']['dense']} vs "
                     f"{lat['output_length']['pruned']} tokens)"))
    lines = markdown_table(rows)
    dense_note = (f"trained from scratch for {s['dense_steps']} steps of {s['batch_size']} pairs "
                  f"({s['dense_epochs']:.2f} epochs of {s['train_samples']:,} of {s['train_total']:,} training pairs, "
                  f"{s['dense_minutes']:.1f} min{', stopped by the time cap' if s['dense_time_capped'] else ''})"
                  if not s["dense_model_reused"] else f"loaded from {s['dense_model_reused']}")
    decoding = "greedy search" if s["num_beams"] == 1 else f"{s['num_beams']} beams"
    lines += [
        "",
        f"Dense: Marian d_model {s['d_model']}, {s['layers']}+{s['layers']} layers, {s['heads']} heads, FFN "
        f"{s['ffn_dim']}, shared BPE vocabulary of {s['vocab']:,}; {dense_note}. Pruned: from the dense model, "
        f"{s['prune_steps']} more steps with AdaptivePruningSeq2SeqTrainer (Taylor importance, pruning "
        f"{s.get('prune', 'heads,ffn')}"
        f"{'' if s.get('roles', 'all') == 'all' else ' (roles ' + s['roles'] + ')'}"
        f"{', with distillation from the dense model' if s.get('distillation') else ''}"
        f"{SEQUENCE_DISTILLATION_NOTE if s.get('sequence_distillation') else ''}, "
        f"target {s['target']:.0%} of "
        f"{'generate time per token at batch 1' if s.get('target_type') == 'latency' else 'attention+FFN FLOPs'}, "
        f"final sparsity {p['final_sparsity']:.3f}, layers kept {p.get('encoder_layers', s['layers'])}+"
        f"{p.get('decoder_layers', s['layers'])}, stopped: "
        f"{p['stop_reason']}; {s['prune_minutes']:.1f} min). BLEU/chrF: sacreBLEU (13a) against the raw "
        f"references. "
        + (f"Latency: generate with {decoding}"
           f", at most {s['max_length']} tokens, {s['threads']} CPU threads, dense and pruned timed alternately in "
           f"one process (medians; p90 in results.json); the two models may stop after different output lengths."
           if results["latency"] else "Latency: not timed (--latency_repeats 0)."),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_example_logging(logger)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    transformers.set_seed(args.seed)

    data = load_multi30k(Path(args.data_dir), args.test_split)
    train_total = len(data["train"][0])
    if args.train_samples is not None and args.train_samples < train_total:
        generator = torch.Generator().manual_seed(args.seed)
        keep = sorted(torch.randperm(train_total, generator=generator)[:args.train_samples].tolist())
        data["train"] = tuple([side[i] for i in keep] for side in data["train"])
    if args.max_test_samples is not None:
        data[args.test_split] = tuple(side[:args.max_test_samples] for side in data[args.test_split])
    val_slice = tuple(side[:args.eval_samples] for side in data["val"])

    # 1. tokenizer
    if args.dense_model:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.dense_model)
    else:
        t0 = time.time()
        tokenizer = train_tokenizer(data["train"][0] + data["train"][1], args.vocab_size, args.max_length)
        tokenizer.save_pretrained(out / "tokenizer")
        print(f"tokenizer: shared BPE, {len(tokenizer):,} tokens, trained on {len(data['train'][0]):,} pairs "
              f"({time.time() - t0:.1f} s)", flush=True)
    train, _ = tokenize(data["train"], tokenizer, args.max_length)
    val, _ = tokenize(val_slice, tokenizer, args.max_length, sort=True)
    test, test_order = tokenize(data[args.test_split], tokenizer, args.max_length, sort=True)
    test_refs = data[args.test_split][1]
    mean_len = statistics.mean(len(ids) for ids in train["input_ids"])
    print(f"Multi30k en->de: {len(train):,} of {train_total:,} training pairs"
          f"{' (subsampled)' if len(train) < train_total else ''}, {len(val)} val sentences steer pruning, "
          f"{len(test)} {args.test_split} sentences; mean source length {mean_len:.1f} tokens; "
          f"{torch.get_num_threads()} threads", flush=True)

    compute_metrics = recipe.build_compute_metrics("sacrebleu", tokenizer)
    common = common_training_arguments(args)

    # 2. dense model
    t0 = time.time()
    budget = TimeBudget(args.dense_minutes)
    if args.dense_model:
        dense = MarianMTModel.from_pretrained(args.dense_model)
        freeze_unsaved_parameters(dense)  # its position tables, as a dense model trained here has them
        dense_args = Seq2SeqTrainingArguments(output_dir=str(out / "dense_eval"), **common)
        dense_trainer = OrderedSeq2SeqTrainer(model=dense, args=dense_args, data_collator=DataCollatorForSeq2Seq(
            tokenizer, model=dense), processing_class=tokenizer, compute_metrics=compute_metrics)
        dense_steps = None
    else:
        dense = MarianMTModel(marian_config(args, tokenizer))
        dense.generation_config.max_length = args.max_length
        dense.generation_config.num_beams = 1
        dense_args = Seq2SeqTrainingArguments(
            output_dir=str(out / "dense"), learning_rate=args.dense_lr, lr_scheduler_type="inverse_sqrt",
            warmup_steps=args.dense_warmup, max_steps=args.dense_max_steps, weight_decay=0.0, **common)
        dense_trainer = OrderedSeq2SeqTrainer(model=dense, args=dense_args, train_dataset=train,
                                              data_collator=DataCollatorForSeq2Seq(tokenizer, model=dense),
                                              processing_class=tokenizer, compute_metrics=compute_metrics,
                                              callbacks=[budget])
        print(f"dense: {format_count(sum(p.numel() for p in dense.parameters()))} parameters; training for at most "
              f"{args.dense_minutes:g} min or {args.dense_max_steps} steps", flush=True)
        dense_trainer.train()
        dense_steps = dense_trainer.state.global_step
        dense_trainer.save_model(str(out / "dense"))  # model + tokenizer
    dense_minutes = (time.time() - t0) / 60
    dense_test = translate_and_score(dense_trainer, test, test_order, test_refs, tokenizer)
    print(f"dense: {args.test_split} BLEU {dense_test['sacrebleu']:.2f}, chrF {dense_test['chrf']:.2f} "
          f"({dense_minutes:.1f} min of training{'' if dense_steps is None else f', {dense_steps} steps'})",
          flush=True)

    prune_common = pruning_common_arguments(args)  # another order of the training pairs than step 2's

    def train_control(steps):
        """The dense model trained ``steps`` more steps without pruning, as the pruning run trains, and scored."""
        t0 = time.time()
        control_model = copy.deepcopy(dense)
        control_args = Seq2SeqTrainingArguments(output_dir=str(out / "dense_control"), learning_rate=args.prune_lr,
                                                max_steps=steps, warmup_steps=0, **prune_common)
        control_trainer = OrderedSeq2SeqTrainer(model=control_model, args=control_args, train_dataset=train,
                                                data_collator=DataCollatorForSeq2Seq(tokenizer, model=control_model),
                                                processing_class=tokenizer, compute_metrics=compute_metrics)
        control_trainer.train()
        control = {"steps": steps, "test": translate_and_score(control_trainer, test, test_order, test_refs,
                                                               tokenizer), "minutes": (time.time() - t0) / 60}
        print(f"dense control (+{steps} steps, no pruning): BLEU {control['test']['sacrebleu']:.2f}", flush=True)
        return control

    if args.control_only:
        control = train_control(args.prune_steps)
        path = out / "control.json"
        path.write_text(json.dumps({"dense": {"test": dense_test}, "dense_control": control, "seed": args.seed,
                                    "dense_model": args.dense_model}, indent=2))
        print(f"wrote {path}", flush=True)
        return control

    # 3. prune while fine-tuning, starting from the dense model (which is kept for the comparison)
    t0 = time.time()
    prune_args = pruning_arguments(args, prune_common)
    prune_train, teacher_minutes = train, None
    if args.sequence_distillation:
        t1 = time.time()
        prune_train = sequence_distillation_targets(dense, train, batch_size=100, max_length=args.max_length,
                                                    num_beams=args.num_beams)
        teacher_minutes = (time.time() - t1) / 60
        print(f"sequence distillation: the dense model translated the {len(train):,} training sources "
              f"({teacher_minutes:.1f} min)", flush=True)
    model = copy.deepcopy(dense)
    trainer = AdaptivePruningSeq2SeqTrainer(
        model=model, args=prune_args, train_dataset=prune_train, eval_dataset=val,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
        compute_metrics=compute_metrics, dataset_name="bentrevett/multi30k",
    )
    trainer.model.config._name_or_path = ""  # trained from scratch here: no base model on the Hub
    trainer.train()
    trainer.save_model()
    pruned = trainer.model
    summary = trainer.pruning_summary()
    pruned_val = trainer.evaluate()["eval_sacrebleu"]
    pruned_test = translate_and_score(trainer, test, test_order, test_refs, tokenizer)
    prune_minutes = (time.time() - t0) / 60
    print(f"pruned: {args.test_split} BLEU {pruned_test['sacrebleu']:.2f}, chrF {pruned_test['chrf']:.2f} "
          f"({prune_minutes:.1f} min)", flush=True)

    control = train_control(trainer.state.global_step) if args.dense_control else None

    # 4. size, FLOPs and generate latency
    comparison = compare_profiles(model_profile(dense, seq_len=args.seq_len),
                                  model_profile(pruned, seq_len=args.seq_len))
    print(format_comparison(comparison), flush=True)
    sources = data[args.test_split][0]
    latency = {}
    median_sentence = recipe.median_length_sentence(sources, tokenizer, args.max_length)
    settings = ((1, [median_sentence], 20, 3), (32, sources[:32], 5, 1))
    data_args = recipe.DataTrainingArguments(max_source_length=args.max_length)
    generate_kwargs = {"max_length": args.max_length, "num_beams": args.num_beams}
    for batch, batch_sources, repeats, warmup in settings:
        repeats = timing_repeats(args.latency_repeats, repeats)
        if repeats == 0:  # --latency_repeats 0: no timing; results.json has "latency": {}, results.md no latency row
            break
        timing = recipe.measure_generate_latency(dense, pruned, tokenizer, batch_sources, data_args, generate_kwargs,
                                                 repeats=repeats, warmup=min(warmup, repeats))
        latency[f"batch_{len(batch_sources)}"] = timing
        print(format_latency(timing["results"], title=f"generate, batch {len(batch_sources)} (output tokens "
                             f"{timing['output_length']})"), flush=True)

    results = {
        "setup": {
            "data_dir": args.data_dir, "test_split": args.test_split, "train_total": train_total,
            "train_samples": len(train), "eval_samples": len(val), "test_samples": len(test),
            "vocab": len(tokenizer), "d_model": dense.config.d_model, "layers": dense.config.encoder_layers,
            "heads": dense.config.encoder_attention_heads, "ffn_dim": dense.config.encoder_ffn_dim,
            "max_length": args.max_length, "batch_size": args.batch_size, "num_beams": args.num_beams,
            "dense_model_reused": args.dense_model or False, "dense_steps": dense_steps,
            "dense_epochs": (dense_steps or 0) * args.batch_size / max(len(train), 1),
            "dense_time_capped": budget.stopped_at is not None, "dense_minutes": dense_minutes,
            "target": args.target, "target_type": args.target_type, "prune": args.prune, "roles": args.roles,
            "distillation": args.distillation, "sequence_distillation": args.sequence_distillation,
            "teacher_minutes": teacher_minutes, "tolerance": args.tolerance, "prune_steps": trainer.state.global_step,
            "prune_minutes": prune_minutes, "threads": torch.get_num_threads(), "seed": args.seed,
        },
        "dense": {"test": dense_test, "params": comparison["params_before"]},
        "pruned": {
            "test": pruned_test, "val_reference": summary["metric_before"], "val_final": pruned_val,
            "final_sparsity": summary["final_sparsity"], "stop_reason": summary["stop_reason"],
            "decisions": summary["decisions"], "params": comparison["params_after"],
            "encoder_layers": pruned.config.encoder_layers, "decoder_layers": pruned.config.decoder_layers,
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
