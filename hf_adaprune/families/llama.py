"""Decoder-only models of the Llama layout: Llama (SmolLM2, TinyLlama), Mistral, Qwen2, Qwen3, Gemma (1, 2 and 3's
text model), SmolLM3, OLMo and Granite.

Each layer holds ``self_attn`` (``q_proj``/``k_proj``/``v_proj``/``o_proj``) and a gated ``mlp``
(``gate_proj`` and ``up_proj`` make the neurons, ``down_proj`` reads them). The attention reshapes with
``view(..., -1, head_dim)`` and repeats each key/value head for ``num_key_value_groups`` query heads, so a
structure is one key/value head together with the query heads that read it (``queries_per_key``): removing
whole groups keeps that ratio, and the forward follows the kept rows. With as many key/value heads as query heads
(Llama 2 7B and 13B, Gemma 7B) a structure is one head; with one (Gemma 2B) the attention is kept or emptied whole.
Qwen3's and Gemma 3's ``q_norm`` / ``k_norm`` work per head dimension, shared by every head, so they stay.

Whole layers can be removed: the KV cache indices follow, and the config's per-layer lists keep the kept layers'
entries: ``layer_types`` (sliding or full attention: Qwen2, Qwen3, Gemma 2 and 3, SmolLM3) and SmolLM3's
``no_rope_layers`` (which layers rotate their queries and keys).

Group names: ``layers.<i>.self_attn`` and ``layers.<i>.mlp`` (under ``model.base_model``, which every head
class, ``...ForCausalLM`` and ``...ForSequenceClassification`` included, keeps as ``model``).
"""

from __future__ import annotations

from .base import HeadGroup, LayerGroup, NeuronGroup
from .registry import register_family

LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo",
               "granite")


def llama_groups(base_model, config):
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    groups = []
    for i in range(len(base_model.layers)):
        attn = f"layers.{i}.self_attn"
        groups.append(HeadGroup(name=attn, query=f"{attn}.q_proj", key=f"{attn}.k_proj", value=f"{attn}.v_proj",
                                output=f"{attn}.o_proj", head_dim=head_dim, core=attn, output_in_core=True,
                                role="decoder_self", queries_per_key=config.num_attention_heads // kv_heads))
        mlp = f"layers.{i}.mlp"
        groups.append(NeuronGroup(name=mlp, inputs=(f"{mlp}.gate_proj", f"{mlp}.up_proj"),
                                  output=f"{mlp}.down_proj", role="decoder"))
    return groups


def llama_layers(base_model, config):
    return [LayerGroup(name="layers", count_attr="num_hidden_layers", role="decoder",
                       config_lists=("layer_types", "no_rope_layers"))]


register_family(LLAMA_TYPES, llama_groups, layer_stacks=llama_layers)
