#!/bin/bash
# A 3x longer budget (2026-12-03): 4,500 steps from the same dense model (outputs/marian_multi30k/dense, 33.80 test
# BLEU), one thread per run, two at a time on the 2-core machine: the dense control beside the one-decoder-layer
# run, then the one-decoder-layer run with sequence-level distillation.
cd "$(dirname "$0")/../.." || exit 1
export OMP_NUM_THREADS=1
D=outputs/marian_multi30k/dense
COMMON="--dense_model $D --eval_samples 500 --prune_steps 4500 --latency_repeats 3"
ONE_DECODER_LAYER="--prune layers --roles decoder --target 0.66 --initial_step 0.66 --tolerance 100"
python examples/train_prune_marian_multi30k.py $COMMON --control_only --output_dir outputs/marian_control4500 \
    > outputs/marian_control4500.log 2>&1 &
python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER --output_dir outputs/marian_decoder_oneshot4500 \
    > outputs/marian_decoder_oneshot4500.log 2>&1
wait
python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER --sequence_distillation \
    --output_dir outputs/marian_decoder_oneshot_seqkd4500 > outputs/marian_decoder_oneshot_seqkd4500.log 2>&1
