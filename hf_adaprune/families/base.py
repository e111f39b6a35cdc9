"""What an adapter describes: the prunable groups of one model family.

A *group* is one attention block (kind ``"heads"``, its structures are heads) or
one FFN block (kind ``"ffn"``, its structures are neurons). Module paths are relative to ``model.base_model``
so the same description serves every head class (``...Model``,
``...ForSequenceClassification``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadGroup:
    """One multi-head attention block.

    ``query``/``key``/``value`` are linears whose output rows are grouped by head (``more_rows``: further
    such linears, e.g. DeBERTa's position projections), ``output`` is the linear whose input columns are grouped
    by head. ``core`` is the module that is swapped for an :class:`EmptyAttention` when no head is left;
    ``output_in_core`` says whether ``output`` is a child of ``core``.
    """

    name: str
    query: str
    key: str
    value: str
    output: str
    head_dim: int
    core: str
    output_in_core: bool = False
    # "path.attr" set to the number of kept heads / to kept heads * head_dim
    head_count_attrs: tuple[str, ...] = ()
    width_attrs: tuple[str, ...] = ()
    # (parameter path, dim) of tensors with one slice per head, e.g. a relative position bias
    per_head_params: tuple[tuple[str, int], ...] = ()
    role: str = "encoder_self"  # encoder_self | decoder_self | cross
    # the core reads a position bias shared across layers (one slice per original head): the family's
    # attention forward for that (a ``layout.SharedBiasMixin`` subclass in the family's file). Such a core
    # keeps its module when pruned (also with no head left) and slices the bias for its kept heads.
    shared_bias: type | None = None
    more_rows: tuple[str, ...] = ()
    # where the model collects attention weights from what ``core`` returns (not transformers' recording hooks):
    # the position, after hidden_states, of core's output_attentions argument (see ``layout.EmptyAttention``)
    output_attentions_arg: int | None = None
    # each row linear stacks this many blocks of one slice per head (ModernBERT's fused Wqkv: q, k, v; query, key
    # and value then name the same linear)
    row_parts: int = 1
    # grouped-query attention (Llama, Qwen2, Mistral): a structure is one key/value head with the query heads that
    # read it, so the query's rows and the output's columns hold queries_per_key x head_dim per structure
    queries_per_key: int = 1

    kind = "heads"

    @property
    def row_linears(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.query, self.key, self.value, *self.more_rows)))  # a fused one once

    def rows_per_structure(self, linear: str) -> int:
        """Output rows of the row linear ``linear`` (in each of its ``row_parts`` blocks) per structure."""
        return self.head_dim * (self.queries_per_key if linear == self.query and linear != self.key else 1)

    @property
    def columns_per_structure(self) -> int:
        """Input columns of ``output`` per structure (a head, or a key/value head's query heads)."""
        return self.head_dim * self.queries_per_key


@dataclass(frozen=True)
class NeuronGroup:
    """One feed-forward block: ``inputs`` produce the neurons (rows), ``output`` reads them (columns)."""

    name: str
    inputs: tuple[str, ...]
    output: str
    width_attrs: tuple[str, ...] = ()
    role: str = "encoder"  # encoder | decoder
    # each input stacks this many blocks of one row per neuron (a gated FFN fused in one linear: input, gate)
    row_parts: int = 1

    kind = "ffn"

    @property
    def row_linears(self) -> tuple[str, ...]:
        return self.inputs


@dataclass(frozen=True)
class LayerGroup:
    """One stack of transformer layers (a ``ModuleList``): its structures are whole layers.

    ``count_attr`` is the config attribute holding the stack's layer count (updated when layers are removed, so
    that stock transformers builds the smaller model). ``hand_on``: ``(module, flag)`` paths inside a layer for
    what only the first layer of the stack owns (T5's and WavLM's relative position bias): a removed first layer
    hands them to the first kept one.
    """

    name: str  # path of the ModuleList
    count_attr: str
    role: str = "encoder"  # encoder | decoder
    hand_on: tuple[tuple[str, str], ...] = ()
    # why this stack's layers cannot be removed in this model ("" when they can)
    refuse: str = ""
    # why this stack's last layer cannot be removed ("" when it can): selection keeps it, compaction refuses it
    keep_last: str = ""
    # config attributes holding one entry per layer of this stack (``layer_types``: sliding or full attention),
    # kept for the kept layers
    config_lists: tuple[str, ...] = ()

    kind = "layers"

    def layer_path(self, index: int) -> str:
        return f"{self.name}.{index}"


Group = HeadGroup | NeuronGroup | LayerGroup


def proj_attention(path: str, head_dim: int, role: str = "encoder_self", **extra) -> HeadGroup:
    """The common layout: ``q_proj``/``k_proj``/``v_proj``/``out_proj`` inside one attention module
    whose forward reads ``num_heads`` (BART family, Whisper, Wav2Vec2, HuBERT, WavLM)."""
    return HeadGroup(
        name=path,
        query=f"{path}.q_proj",
        key=f"{path}.k_proj",
        value=f"{path}.v_proj",
        output=f"{path}.out_proj",
        head_dim=head_dim,
        core=path,
        output_in_core=True,
        head_count_attrs=(f"{path}.num_heads",),
        role=role,
        **extra,
    )


@dataclass(frozen=True)
class FamilyAdapter:
    """How one model family lays out its layers, and what its pruned models need to run."""

    model_types: tuple[str, ...]
    find_groups: object  # callable(base_model, config) -> list[Group], empty attentions included
    # the family's shared-bias attention forward, copied into the remote-code file of its saved models
    attention_forward: type | None = None
    # callable(base_model, config) -> list[LayerGroup]: the layer stacks whole layers can be removed from
    layer_stacks: object = None


def layer_stacks(base_model, stacks) -> list[LayerGroup]:
    """The :class:`LayerGroup` of each ``(path, config attribute, role, hand_on)`` whose stack this model has
    (an encoder-only or decoder-only head class has one of the two)."""
    groups = []
    for path, count_attr, role, *hand_on in stacks:
        try:
            base_model.get_submodule(path)
        except AttributeError:
            continue
        groups.append(LayerGroup(name=path, count_attr=count_attr, role=role, hand_on=tuple(hand_on)))
    return groups
