"""SmolVLM2's vision encoder (SigLIP) + pixel shuffle + projection as one ONNX graph.

    pixel_values [N,3,T,T]                                  (256M/500M: T 512, patch 16, S 32, f 4)
      └─ patch Conv P/P ─ flatten ─ + learned positions        [N,S²,D]
      └─ layers.i:  x += attn(LN1(x));  x += fc2(gelu_tanh(fc1(LN2(x))))
      └─ post LayerNorm ─ pixel shuffle (f = scale_factor)     [N,(S/f)²,f²D]
      └─ projection (no bias)                                  [N,(S/f)²,H] image_features

Precisions and op sets as in vision.py (VisionGraphSpec).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from .builder import Graph, GraphTarget, InMemory
from .vision import VisionBuilder, VisionGraphSpec, Weights

if TYPE_CHECKING:
    from ..models.smolvlm2 import ModelConfig


def patch_positions(patches: int, side: int) -> np.ndarray:
    """The position id of each patch of a full tile with `patches` per side, for a table of `side` x
    `side` positions: transformers' fractional-coordinate buckets, in its float32 arithmetic (a
    float32 step and boundaries rounded from double), so a rounding at a bucket edge agrees too."""
    step = np.float32(1.0) / np.float32(patches)
    coords = np.minimum(np.arange(patches, dtype=np.float32) * step, np.float32(1.0 - 1e-6))
    count = int(np.ceil((1.0 - 1.0 / side) / (1.0 / side)))
    bounds = (1.0 / side + np.arange(count, dtype=np.float64) * (1.0 / side)).astype(np.float32)
    buckets = np.searchsorted(bounds, coords, side="right")
    return (buckets[:, None] * side + buckets[None, :]).reshape(-1)


class _SigLIP(VisionBuilder):
    cfg: ModelConfig

    def embeddings(self, pixels: str) -> str:
        """patch Conv ─ [N,D,S,S] ─ [N,S²,D] ─ + the position table's rows for a full tile."""
        g, v, s = self.g, self.cfg.vision, "/vision/embed"
        tokens = self.patches(pixels, s + "/patch")
        table = self.get("vision.embed.pos").astype(np.float32)
        positions = table[patch_positions(v.grid, v.grid)]
        return g.op("Add", [tokens, g.weight("vision.embed.pos", positions)], s + "/pos")

    def layer(self, x: str, i: int) -> str:
        g, v, p, s = self.g, self.cfg.vision, f"vision.layers.{i}", f"/vision/layers.{i}"
        h = self.layer_norm(x, p + ".norm1", s + "/norm1", v.layer_norm_eps)
        x = g.op("Add", [x, self.attention(h, p + ".attn", s + "/attn", v.num_heads)], s + "/res1")
        h = self.layer_norm(x, p + ".norm2", s + "/norm2", v.layer_norm_eps)
        h = self.gelu(self.linear(h, p + ".mlp.fc1", s + "/mlp/fc1"), s + "/mlp/act", tanh=v.gelu_tanh)
        return g.op("Add", [x, self.linear(h, p + ".mlp.fc2", s + "/mlp/fc2")], s + "/res2")


def build_vision_graph(get: Weights, cfg: ModelConfig, path: GraphTarget, spec: VisionGraphSpec) -> Path | InMemory:
    """Write the vision graph (and its `.data` file) to `path`, or keep it in memory, from canonical weights."""
    g = Graph(path, opset=17, name="edgevlm_vision")
    if spec.contrib:
        g.opsets["com.microsoft"] = 1
    v, size = cfg.vision, cfg.tile_size
    batch: int | str = spec.batch or "tiles"
    b = _SigLIP(g, get, cfg, spec)
    x = b.embeddings(g.input("pixel_values", TensorProto.FLOAT, [batch, 3, size, size]))
    for i in range(v.num_layers):
        x = b.layer(x, i)
    x = b.layer_norm(x, "vision.post_norm", "/vision/post_norm", v.layer_norm_eps)
    out = b.linear(b.pixel_shuffle(x, v.grid, cfg.scale_factor), "projector", "/projector", bias=False)
    g.output(out, "image_features", TensorProto.FLOAT, [batch, cfg.tokens_per_tile, cfg.text.hidden_size])
    return g.save()
