#!/bin/bash
# The second seed (2026-12-04) of the 4,500-step comparison in marian_multi30k_4500_runs.sh: the same dense model
# (outputs/marian_multi30k/dense), seed 43 (another order of the training pairs), the dense control beside the
# one-decoder-layer run with sequence-level distillation, one thread each on the 2-core machine.
cd "$(dirname "$0")/../.." || exit 1
export OMP_NUM_THREADS=1
D=outputs/marian_multi30k/dense
COMMON="--dense_model $D --eval_samples 500 --prune_steps 4500 --latency_repeats 3 --seed 43"
ONE_DECODER_LAYER="--prune layers --roles decoder --target 0.66 --initial_step 0.66 --tolerance 100"
python examples/train_prune_marian_multi30k.py $COMMON --control_only --output_dir outputs/marian_control4500_seed43 \
    > outputs/marian_control4500_seed43.log 2>&1 &
python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER --sequence_distillation \
    --output_dir outputs/marian_decoder_oneshot_seqkd4500_seed43 \
    > outputs/marian_decoder_oneshot_seqkd4500_seed43.log 2>&1
wait
