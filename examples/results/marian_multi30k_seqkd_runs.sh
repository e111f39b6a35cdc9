#!/bin/bash
# Sequence-level distillation and the decoder vocabulary (2026-12-03): a new dense model (60 min, 1 thread),
# then 1,500-step runs from it, one thread each, two at a time on the 2-core machine.
cd "$(dirname "$0")/../.." || exit 1
export OMP_NUM_THREADS=1
D=outputs/marian_multi30k/dense
COMMON="--dense_model $D --eval_samples 500 --prune_steps 1500 --latency_repeats 3"
ONE_DECODER_LAYER="--prune layers --roles decoder --target 0.66 --initial_step 0.66 --tolerance 100"
# 1. the dense model, then widths (gradual) and its control (the same 1,500 steps without pruning)
python examples/train_prune_marian_multi30k.py --dense_minutes 60 --dense_control --eval_samples 500 \
    --prune_steps 1500 --output_dir outputs/marian_multi30k > outputs/marian_multi30k.log 2>&1 &
# 2. once outputs/marian_multi30k/dense exists: 2 of 3 decoder layers removed at once, with and without
#    sequence-level distillation (then widths with it)
python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER --sequence_distillation \
    --output_dir outputs/marian_decoder_oneshot_seqkd > outputs/marian_decoder_oneshot_seqkd.log 2>&1
python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER \
    --output_dir outputs/marian_decoder_oneshot > outputs/marian_decoder_oneshot.log 2>&1
wait
python examples/train_prune_marian_multi30k.py $COMMON --sequence_distillation \
    --output_dir outputs/marian_widths_seqkd > outputs/marian_widths_seqkd.log 2>&1
# 3. BLEU and batch-1 generate latency with and without the decoder vocabulary, on the idle machine
python benchmarks/marian_vocabulary.py --dense $D --pruned outputs/marian_multi30k/pruned \
    outputs/marian_decoder_oneshot/pruned outputs/marian_decoder_oneshot_seqkd/pruned \
    outputs/marian_widths_seqkd/pruned --labels widths one-decoder-layer one-decoder-layer-seqkd widths-seqkd
