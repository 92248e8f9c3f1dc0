"""What every family's weight table shares: the language model's tensors (the shared decoder's), layer
numbering, and reading a table of canonical -> stored names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..config import TextConfig

Shapes = dict[str, tuple[int, ...]]


def per_layer(prefix: str, count: int, layer: Mapping[str, tuple[int, ...]]) -> Shapes:
    """`{prefix}.{i}.{name}` -> shape for every layer i < count."""
    return {f"{prefix}.{i}.{name}": shape for i in range(count) for name, shape in layer.items()}


def text_shapes(t: TextConfig) -> Shapes:
    """The language model's canonical tensors (`llm.*`): Qwen2's or Llama's, as its flags say."""
    h, kv, ffn = t.hidden_size, t.num_kv_heads * t.head_dim, t.intermediate_size
    layer = {
        "attn_norm.weight": (h,), "attn.q.weight": (h, h), "attn.k.weight": (kv, h), "attn.v.weight": (kv, h),
        "attn.o.weight": (h, h), "mlp_norm.weight": (h,), "mlp.gate.weight": (ffn, h), "mlp.up.weight": (ffn, h),
        "mlp.down.weight": (h, ffn),
    }  # fmt: skip
    if t.qkv_bias:
        layer |= {"attn.q.bias": (h,), "attn.k.bias": (kv,), "attn.v.bias": (kv,)}
    shapes = {"llm.embed.weight": (t.vocab_size, h), "llm.norm.weight": (h,)}
    if not t.tie_word_embeddings:
        shapes["llm.lm_head.weight"] = (t.vocab_size, h)
    return shapes | per_layer("llm.layers", t.num_layers, layer)


def text_rows(model: str, lm_head: str) -> list[tuple[str, tuple[str, ...]]]:
    """Weight-table rows of a transformers Qwen2/Llama decoder stored under `model` (e.g. "model."), its
    head under `lm_head`. Bias rows are read only where the config has biases (the wanted names)."""
    layer = model + "layers.{i}."
    return [
        ("llm.embed.weight", (model + "embed_tokens.weight",)),
        ("llm.layers.{i}.attn_norm.weight", (layer + "input_layernorm.weight",)),
        *((f"llm.layers.{{i}}.attn.{p}.weight", (layer + f"self_attn.{p}_proj.weight",)) for p in "qkvo"),
        *((f"llm.layers.{{i}}.attn.{p}.bias", (layer + f"self_attn.{p}_proj.bias",)) for p in "qkv"),
        ("llm.layers.{i}.mlp_norm.weight", (layer + "post_attention_layernorm.weight",)),
        *((f"llm.layers.{{i}}.mlp.{p}.weight", (layer + f"mlp.{p}_proj.weight",)) for p in ("gate", "up", "down")),
        ("llm.norm.weight", (model + "norm.weight",)),
        ("llm.lm_head.weight", (lm_head,)),
    ]


def table_sources(table: Iterable[tuple[str, tuple[str, ...]]], wanted: Mapping[str, object],
                  layers: Mapping[str, int]) -> dict[str, tuple[str, ...]]:  # fmt: skip
    """Canonical name -> stored name(s) for every wanted tensor, from rows whose `{i}` is a layer of the
    part (`vision`, `llm`) the canonical name starts with."""
    out = {}
    for canonical, sources in table:
        for i in range(layers[canonical.split(".")[0]] if "{i}" in canonical else 1):
            if (name := canonical.format(i=i)) in wanted:
                out[name] = tuple(s.format(i=i) for s in sources)
    return out


def fold_prefixes(name: str, aliases: Iterable[tuple[str, str]]) -> str:
    """A stored name with the first matching prefix replaced (one naming folded onto another)."""
    for old, new in aliases:
        if name.startswith(old):
            return new + name[len(old) :]
    return name
