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

import numpy as np
from onnx import TensorProto

from .builder import Graph
from .vision import VisionBuilder, VisionGraphSpec, Weights

if TYPE_CHECKING:
    from ..models.internvl3 import ModelConfig


class _InternViT(VisionBuilder):
    cfg: ModelConfig

    def embeddings(self, pixels: str) -> str:
        """patch Conv ─ [N,D,32,32] ─ [N,1024,D] ─ concat cls ─ + pos."""
        g, v, s = self.g, self.cfg.vision, "/vision/embed"
        w = g.weight("vision.embed.patch.weight", self.get("vision.embed.patch.weight"))
        b = g.weight("vision.embed.patch.bias", self.get("vision.embed.patch.bias"))
        conv = g.op("Conv", [pixels, w, b], s + "/patch", kernel_shape=[v.patch_size] * 2, strides=[v.patch_size] * 2)
        flat = g.op("Reshape", [conv, g.const("/c/ncl", [0, v.hidden_size, -1])], s + "/patch")
        tokens = g.op("Transpose", [flat], s + "/patch", perm=[0, 2, 1])
        n = g.op("Slice", [g.op("Shape", [pixels], s), g.const("/c/0", [0]), g.const("/c/1", [1])], s)
        cls_shape = g.op("Concat", [n, g.const("/c/1_d", [1, v.hidden_size])], s + "/cls", axis=0)
        cls = g.op("Expand", [g.weight("vision.embed.cls", self.get("vision.embed.cls")), cls_shape], s + "/cls")
        x = g.op("Concat", [cls, tokens], s, axis=1)
        return g.op("Add", [x, g.weight("vision.embed.pos", self.get("vision.embed.pos"))], s + "/pos")

    def attention(self, x: str, i: int) -> str:
        """qkv ─ heads ─ softmax(q k^T / sqrt(d)) v ─ proj  (or one MultiHeadAttention node)."""
        g, v, s = self.g, self.cfg.vision, f"/vision/layers.{i}/attn"
        qkv = self.linear(x, f"vision.layers.{i}.attn.qkv", s + "/qkv")
        if self.spec.contrib:
            q, k, val = g.op("Split", [qkv], s, outputs=3, axis=2)
            out = g.op("MultiHeadAttention", [q, k, val], s, domain="com.microsoft", num_heads=v.num_heads)
        else:
            shape = g.const("/c/qkv_heads", [0, 0, 3, v.num_heads, v.head_dim])
            heads = g.op("Transpose", [g.op("Reshape", [qkv, shape], s)], s, perm=[2, 0, 3, 1, 4])
            q, k, val = g.op("Split", [heads], s, outputs=3, axis=0)
            q, k, val = (g.op("Squeeze", [t, g.const("/c/axis0", [0])], s) for t in (q, k, val))
            q = g.op("Mul", [q, g.const("/c/attn_scale", v.head_dim**-0.5, np.float32)], s)
            scores = g.op("MatMul", [q, g.op("Transpose", [k], s, perm=[0, 1, 3, 2])], s)
            ctx = g.op("MatMul", [g.op("Softmax", [scores], s, axis=-1), val], s)
            out = g.op("Reshape", [g.op("Transpose", [ctx], s, perm=[0, 2, 1, 3]), g.const("/c/merge", [0, 0, -1])], s)
        return self.linear(out, f"vision.layers.{i}.attn.proj", s + "/proj", out_scale=f"vision.layers.{i}.ls1")

    def layer(self, x: str, i: int) -> str:
        g, eps, p, s = self.g, self.cfg.vision.layer_norm_eps, f"vision.layers.{i}", f"/vision/layers.{i}"
        attn = self.attention(self.layer_norm(x, p + ".norm1", s + "/norm1", eps), i)  # ls1 folded into proj
        x = g.op("Add", [x, attn], s + "/res1")
        h = self.layer_norm(x, p + ".norm2", s + "/norm2", eps)
        h = self.linear(self.gelu(self.linear(h, p + ".mlp.fc1", s + "/mlp/fc1"), s + "/mlp/act"), p + ".mlp.fc2",
                        s + "/mlp/fc2", out_scale=p + ".ls2")  # fmt: skip
        return g.op("Add", [x, h], s + "/res2")

    def pixel_shuffle(self, x: str) -> str:
        """InternVL's pixel shuffle v2, f = 1/downsample_ratio (2 for InternVL3): [N,1+S²,D] ─ drop cls ─
        [N,(S/f)²,f²D], each output row holding an f x f block of patches."""
        g, v, s, f = self.g, self.cfg.vision, "/vision/shuffle", self.cfg.shuffle
        side, small = v.grid, v.grid // f
        x = g.op("Slice", [x, g.const("/c/1", [1]), g.const("/c/big", [2**31]), g.const("/c/1", [1])], s)
        x = g.op("Reshape", [x, g.const("/c/ps1", [0, side, small, f * v.hidden_size])], s)
        x = g.op("Transpose", [x], s, perm=[0, 2, 1, 3])
        x = g.op("Reshape", [x, g.const("/c/ps2", [0, small, small, f * f * v.hidden_size])], s)
        x = g.op("Transpose", [x], s, perm=[0, 2, 1, 3])
        return g.op("Reshape", [x, g.const("/c/ps3", [0, small * small, f * f * v.hidden_size])], s)

    def projector(self, x: str) -> str:
        s = "/projector"
        x = self.layer_norm(x, "projector.norm", s + "/norm", 1e-5)
        x = self.gelu(self.linear(x, "projector.fc1", s + "/fc1"), s + "/act")
        return self.linear(x, "projector.fc2", s + "/fc2")


def build_vision_graph(get: Weights, cfg: ModelConfig, path: str | Path, spec: VisionGraphSpec) -> Path:
    """Write the vision graph (and its `.data` file) to `path` from canonical weights."""
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
    out = b.projector(b.pixel_shuffle(x))
    g.output(out, "image_features", TensorProto.FLOAT, [batch, cfg.tokens_per_tile, cfg.text.hidden_size])
    return g.save()
