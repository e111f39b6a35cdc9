#!/bin/bash
# 2.5x the pruning budget (1,500 steps): widths (gradual) + its control on one core; 2 of 3 decoder layers on the other
cd /work/main
D=outputs/marian_multi30k/dense
COMMON="--dense_model $D --eval_samples 500 --prune_steps 1500 --latency_repeats 3"
export OMP_NUM_THREADS=1
(python examples/train_prune_marian_multi30k.py $COMMON --dense_control --output_dir outputs/marian_widths_1500 > outputs/marian_widths_1500.log 2>&1) &
(python examples/train_prune_marian_multi30k.py $COMMON --prune layers --roles decoder --target 0.66 --initial_step 0.66 --tolerance 100 --output_dir outputs/marian_decoder_oneshot_1500 > outputs/marian_decoder_oneshot_1500.log 2>&1) &
wait
# afterwards, a second seed of the widths run with its own control (one thread):
# python examples/train_prune_marian_multi30k.py $COMMON --dense_control --seed 43 --output_dir outputs/marian_widths_1500_seed43
