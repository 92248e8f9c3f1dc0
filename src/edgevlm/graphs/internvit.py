"""The InternViT vision encoder + pixel shuffle + projector as one ONNX graph.

    pixel_values [N,3,T,T]                                         (InternVL3: T 448, patch 14, S 32)
      └─ patch Conv P/P ─ flatten ─ concat cls ─ + pos              [N,1+S²,D]
      └─ layers.i:  x += ls1 * attn(LN1(x));  x += ls2 * mlp(LN2(x))   (ls folded into proj, fc2)
      └─ drop cls ─ [N,S,S,D] ─ pixel shuffle v2 (f = 1/ratio)      [N,(S/f)²,f²D]
      └─ projector: LN(eps 1e-5) ─ fc1 ─ GELU ─ fc2                 [N,(S/f)²,H] image_features

Precisions and op sets as in vision.py (VisionGraphSpec).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onnx import TensorProto

from .builder import Graph, GraphTarget, InMemory
from .vision import VisionBuilder, VisionGraphSpec, Weights

if TYPE_CHECKING:
    from ..models.internvl3 import ModelConfig


class _InternViT(VisionBuilder):
    cfg: ModelConfig

    def embeddings(self, pixels: str) -> str:
        """patch Conv ─ [N,D,32,32] ─ [N,1024,D] ─ concat cls ─ + pos."""
        g, v, s = self.g, self.cfg.vision, "/vision/embed"
        tokens = self.patches(pixels, s + "/patch")
        n = g.op("Slice", [g.op("Shape", [pixels], s), g.const("/c/0", [0]), g.const("/c/1", [1])], s)
        cls_shape = g.op("Concat", [n, g.const("/c/1_d", [1, v.hidden_size])], s + "/cls", axis=0)
        cls = g.op("Expand", [g.weight("vision.embed.cls", self.get("vision.embed.cls")), cls_shape], s + "/cls")
        x = g.op("Concat", [cls, tokens], s, axis=1)
        return g.op("Add", [x, g.weight("vision.embed.pos", self.get("vision.embed.pos"))], s + "/pos")

    def layer(self, x: str, i: int) -> str:
        g, eps, p, s = self.g, self.cfg.vision.layer_norm_eps, f"vision.layers.{i}", f"/vision/layers.{i}"
        h = self.layer_norm(x, p + ".norm1", s + "/norm1", eps)
        attn = self.attention(h, p + ".attn", s + "/attn", self.cfg.vision.num_heads, out_scale=p + ".ls1")
        x = g.op("Add", [x, attn], s + "/res1")
        h = self.layer_norm(x, p + ".norm2", s + "/norm2", eps)
        h = self.linear(self.gelu(self.linear(h, p + ".mlp.fc1", s + "/mlp/fc1"), s + "/mlp/act"), p + ".mlp.fc2",
                        s + "/mlp/fc2", out_scale=p + ".ls2")  # fmt: skip
        return g.op("Add", [x, h], s + "/res2")

    def drop_cls(self, x: str) -> str:
        g = self.g
        return g.op("Slice", [x, g.const("/c/1", [1]), g.const("/c/big", [2**31]), g.const("/c/1", [1])], "/vision")

    def projector(self, x: str) -> str:
        s = "/projector"
        x = self.layer_norm(x, "projector.norm", s + "/norm", 1e-5)
        x = self.gelu(self.linear(x, "projector.fc1", s + "/fc1"), s + "/act")
        return self.linear(x, "projector.fc2", s + "/fc2")


def build_vision_graph(get: Weights, cfg: ModelConfig, path: GraphTarget, spec: VisionGraphSpec) -> Path | InMemory:
    """Write the vision graph (and its `.data` file) to `path`, or keep it in memory, from canonical weights."""
    opset = 17
    g = Graph(path, opset=opset, name="edgevlm_vision")
    if spec.contrib:
        g.opsets["com.microsoft"] = 1
    size = cfg.vision.image_size
    batch: int | str = spec.batch or "tiles"
    b = _InternViT(g, get, cfg, spec)
    x = b.embeddings(g.input("pixel_values", TensorProto.FLOAT, [batch, 3, size, size]))
    for i in range(cfg.vision.used_layers):
        x = b.layer(x, i)
    out = b.projector(b.pixel_shuffle(b.drop_cls(x), cfg.vision.grid, cfg.shuffle))
    g.output(out, "image_features", TensorProto.FLOAT, [batch, cfg.tokens_per_tile, cfg.text.hidden_size])
    return g.save()
