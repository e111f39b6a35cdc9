"""BERT and its encoder look-alikes: RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT."""

from __future__ import annotations

from .base import HeadGroup, NeuronGroup, layer_stacks
from .registry import register_family


def _is_decoder(config) -> bool:
    """A BERT-family model built as a causal decoder (``BertLMHeadModel``, ``RobertaForCausalLM``, ...): its
    self-attentions keep a KV cache, so an emptied one keeps placeholder entries (see ``layout.EmptyAttention``)."""
    return bool(getattr(config, "is_decoder", False))


def bert_groups(base_model, config):
    head_dim = config.hidden_size // config.num_attention_heads
    decoder = _is_decoder(config)
    groups = []
    for i, _ in enumerate(base_model.encoder.layer):
        layer = f"encoder.layer.{i}"
        attn = f"{layer}.attention"
        groups.append(
            HeadGroup(
                name=attn,
                query=f"{attn}.self.query",
                key=f"{attn}.self.key",
                value=f"{attn}.self.value",
                output=f"{attn}.output.dense",
                head_dim=head_dim,
                core=f"{attn}.self",
                head_count_attrs=(f"{attn}.self.num_attention_heads",),
                width_attrs=(f"{attn}.self.all_head_size",),
                role="decoder_self" if decoder else "encoder_self",
            )
        )
        groups.append(
            NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.intermediate.dense",), output=f"{layer}.output.dense",
                        role="decoder" if decoder else "encoder")
        )
    return groups


register_family(("bert", "roberta", "xlm-roberta", "electra", "camembert"), bert_groups,
                layer_stacks=lambda base, config: layer_stacks(
                    base, [("encoder.layer", "num_hidden_layers", "decoder" if _is_decoder(config) else "encoder")]))
