"""pruning_layers.png: a layer removed whole is drawn at 0 kept, in layer order (the plot left it out, so a model
with layers removed looked unpruned)."""

from __future__ import annotations

from hf_adaprune.reporting.report import layer_structure_rows, plot_layer_structure

GROUPS = {f"encoder.layer.{i}.{part}": {"kind": kind, "original": width, "kept": kept}
          for i in (1, 2, 10) for part, kind, width, kept in (("attention", "heads", 4, 3), ("ffn", "ffn", 64, 40))}


def test_removed_layers_are_rows_with_nothing_kept_in_layer_order():
    rows = layer_structure_rows(GROUPS, removed=["encoder.layer.0", "encoder.layer.3"])
    assert rows["heads"] == [("encoder.layer.0 (removed)", 0, 4), ("encoder.layer.1.attention", 3, 4),
                             ("encoder.layer.2.attention", 3, 4), ("encoder.layer.3 (removed)", 0, 4),
                             ("encoder.layer.10.attention", 3, 4)]
    assert [row[0] for row in rows["ffn"]] == ["encoder.layer.0 (removed)", "encoder.layer.1.ffn",
                                               "encoder.layer.2.ffn", "encoder.layer.3 (removed)",
                                               "encoder.layer.10.ffn"]
    assert rows["ffn"][0][1:] == (0, 64)


def test_a_removed_layer_takes_the_width_of_its_own_stack():
    groups = {"encoder.layers.0.self_attn": {"kind": "heads", "original": 6, "kept": 6},
              "decoder.layers.1.self_attn": {"kind": "heads", "original": 4, "kept": 4}}
    rows = layer_structure_rows(groups, removed=["decoder.layers.0"])
    assert ("decoder.layers.0 (removed)", 0, 4) in rows["heads"]


def test_without_removed_layers_the_rows_are_the_groups(tmp_path):
    rows = layer_structure_rows(GROUPS)
    assert sum(len(panel) for panel in rows.values()) == len(GROUPS)
    plot_layer_structure(GROUPS, tmp_path / "layers.png", removed=["encoder.layer.0"])
    assert (tmp_path / "layers.png").stat().st_size > 0
