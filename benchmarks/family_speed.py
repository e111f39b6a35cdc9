"""Measured speed of pruned DeBERTa-v3 and ModernBERT encoders: ``multiple_of.py``'s timing on checkpoint shapes.

No DeBERTa or ModernBERT checkpoint installs offline, so each model has its checkpoint's configuration and random
weights: the timing depends on how many heads and neurons each layer keeps, not on their values. Magnitude scores of
random weights keep nearly the same width in every layer (widest / narrowest at most 1.2), more even than a pruning
run leaves them (MiniLM's: 1.7-2.3), so these figures are on the kind side of a run's. Shapes:
microsoft/deberta-v3-small (6 layers of 768, 12 heads, FFN 3,072, relative positions in 256 log buckets) and
answerdotai/ModernBERT-base (22 layers of 768, 12 heads, gated FFN 1,152, sliding-window attention of 128 in two
layers of three).

    python benchmarks/family_speed.py --family deberta   # -> benchmarks/results/deberta_v3_small_speed.{json,md}
    python benchmarks/family_speed.py --family modernbert  # -> benchmarks/results/modernbert_base_speed.{json,md}
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import transformers

import multiple_of  # this script's neighbour (its folder is on sys.path when it runs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {
    "deberta": ("DeBERTa-v3-small shape", "deberta_v3_small_speed", transformers.DebertaV2Config, dict(
        vocab_size=128100, hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
        position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
        layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False, pad_token_id=0)),
    "modernbert": ("ModernBERT-base shape", "modernbert_base_speed", transformers.ModernBertConfig, dict(
        vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
        max_position_embeddings=8192, global_attn_every_n_layers=3, local_attention=128, pad_token_id=50283,
        bos_token_id=50281, eos_token_id=50282, cls_token_id=50281, sep_token_id=50282)),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", default=None, help="file-name stem (default: benchmarks/results/<shape>_speed)")
    opts, rest = parser.parse_known_args(argv)  # the rest goes to multiple_of.py (--targets, --repeats_b1, ...)
    name, stem, config_class, shape = SHAPES[opts.family]
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config_class(**shape))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        del model
        multiple_of.main(["--model", folder, "--name", f"{name}, random weights", "--multiples", "8",
                          "--out", opts.out or os.path.join(ROOT, "benchmarks", "results", stem), *rest],
                         command=" ".join(["python benchmarks/family_speed.py", *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    main()
