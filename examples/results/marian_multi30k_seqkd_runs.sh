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
FIRST=$!
while [ ! -f $D/model.safetensors ] || [ ! -f $D/tokenizer.json ]; do sleep 20; done
sleep 20
# 2. on the other core: 2 of 3 decoder layers removed at once, with and then without sequence-level distillation
(python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER --sequence_distillation \
    --output_dir outputs/marian_decoder_oneshot_seqkd > outputs/marian_decoder_oneshot_seqkd.log 2>&1
 python examples/train_prune_marian_multi30k.py $COMMON $ONE_DECODER_LAYER \
    --output_dir outputs/marian_decoder_oneshot > outputs/marian_decoder_oneshot.log 2>&1) &
SECOND=$!
# 3. once step 1 has finished: widths with sequence distillation
wait $FIRST
python examples/train_prune_marian_multi30k.py $COMMON --sequence_distillation \
    --output_dir outputs/marian_widths_seqkd > outputs/marian_widths_seqkd.log 2>&1 &
# 4. once step 2 has finished (step 3 still training): BLEU and generate latency with and without the decoder
#    vocabulary
wait $SECOND
python benchmarks/marian_vocabulary.py --dense $D --pruned outputs/marian_multi30k/pruned \
    outputs/marian_decoder_oneshot/pruned outputs/marian_decoder_oneshot_seqkd/pruned \
    --labels widths one-decoder-layer one-decoder-layer-seqkd
wait
