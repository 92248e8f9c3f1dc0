"""Qwen2-VL's vision encoder (a ViT with 2-D rotary positions) + PatchMerger as one ONNX graph, for
one image (or one static size) per run: attention spans the whole input, as it spans one image.

    pixel_values [N, 3*2*14*14]  rope_cos, rope_sin [N, head_dim]    (N patches, merge groups of 4 in a row)
      └─ patch projection (the Conv3d as one MatMul)                  [1,N,D]
      └─ blocks.i:  x += attn(LN1(x)) with q, k rotated;  x += fc2(quick_gelu(fc1(LN2(x))))
      └─ merger: LN ─ [N/4, 4D] ─ fc1 ─ GELU ─ fc2                   [N/4, H] image_features

The rotary tables follow the patch grid, so they are computed on the host (models.qwen2_vl.vision_rope)
and fed in. Precisions and op sets as in vision.py (VisionGraphSpec); `batch` is the static patch
count of the NPU form.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from .builder import Graph, GraphTarget, InMemory
from .vision import VisionBuilder, VisionGraphSpec, Weights

if TYPE_CHECKING:
    from ..models.qwen2_vl import ModelConfig

EPS = 1e-6  # every LayerNorm of the encoder and merger


class _Qwen2ViT(VisionBuilder):
    cfg: ModelConfig

    def __init__(self, *args: object, cos: str, sin: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        g, hd = self.g, self.cfg.vision.hidden_size // self.cfg.vision.num_heads
        if self.spec.contrib:  # the fused op takes each angle once: the tables' first halves
            half = [g.const("/c/zero", [0]), g.const("/c/half_head", [hd // 2]), g.const("/c/axis1", [1])]
            self.cos, self.sin = (g.op("Slice", [t, *half], "/vision/rope") for t in (cos, sin))
        else:
            shape = g.const("/c/rope_shape", [1, -1, 1, hd])  # [N,hd] -> [1,N,1,hd], against [1,N,heads,hd]
            self.cos, self.sin = (g.op("Reshape", [t, shape], "/vision/rope") for t in (cos, sin))

    def rotate(self, x: str, scope: str) -> str:
        """x [1,N,D] turned by each patch's angles: x cos + rotate_half(x) sin, per head.

        ONNX Runtime's RotaryEmbedding does it in one pass (0.24 ms against 0.84 for the eight plain
        ops on a 392 px image's q, measured): positions 0..N-1 index the tables, one row per patch."""
        g, v = self.g, self.cfg.vision
        if self.spec.contrib:
            return g.op("RotaryEmbedding", [x, g.const("/c/zero", [0]), self.cos, self.sin], scope,
                        domain="com.microsoft", num_heads=v.num_heads, interleaved=0)  # fmt: skip
        hd = v.hidden_size // v.num_heads
        heads = g.op("Reshape", [x, g.const("/c/rope_heads", [0, 0, v.num_heads, hd])], scope)
        first, second = g.op("Split", [heads], scope, outputs=2, axis=3)
        half = g.op("Concat", [g.op("Neg", [second], scope), first], scope, axis=3)
        turned = g.op("Add", [g.op("Mul", [heads, self.cos], scope), g.op("Mul", [half, self.sin], scope)], scope)
        return g.op("Reshape", [turned, g.const("/c/rope_merge", [0, 0, -1])], scope)

    def quick_gelu(self, x: str, scope: str) -> str:
        g = self.g
        return g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [x, g.const("/c/quick", 1.702, np.float32)], scope)],
                                    scope)], scope)  # fmt: skip

    def layer(self, x: str, i: int) -> str:
        g, v, p, s = self.g, self.cfg.vision, f"vision.layers.{i}", f"/vision/layers.{i}"
        h = self.layer_norm(x, p + ".norm1", s + "/norm1", EPS)
        x = g.op("Add", [x, self.attention(h, p + ".attn", s + "/attn", v.num_heads, rotate=self.rotate)], s + "/res1")
        h = self.layer_norm(x, p + ".norm2", s + "/norm2", EPS)
        h = self.quick_gelu(self.linear(h, p + ".mlp.fc1", s + "/mlp/fc1"), s + "/mlp/act")
        return g.op("Add", [x, self.linear(h, p + ".mlp.fc2", s + "/mlp/fc2")], s + "/res2")

    def merger(self, x: str) -> str:
        g, v, s = self.g, self.cfg.vision, "/projector"
        x = self.layer_norm(x, "projector.norm", s + "/norm", EPS)
        x = g.op("Reshape", [x, g.const("/c/merge_groups", [-1, v.hidden_size * v.merge_size**2])], s)
        x = self.gelu(self.linear(x, "projector.fc1", s + "/fc1"), s + "/act")
        return self.linear(x, "projector.fc2", s + "/fc2")


def build_vision_graph(get: Weights, cfg: ModelConfig, path: GraphTarget, spec: VisionGraphSpec) -> Path | InMemory:
    """Write the vision graph (and its `.data` file) to `path`, or keep it in memory, from canonical weights."""
    g = Graph(path, opset=17, name="edgevlm_vision")
    if spec.contrib:
        g.opsets["com.microsoft"] = 1
    v, hd = cfg.vision, cfg.vision.hidden_size // cfg.vision.num_heads
    patches: int | str = spec.batch or "patches"

    def weights(name: str) -> np.ndarray:  # the Conv3d whose stride is its kernel is a MatMul of flat patches
        w = get(name)
        return w.reshape(w.shape[0], -1) if name == "vision.embed.patch.weight" else w

    pixels = g.input("pixel_values", TensorProto.FLOAT, [patches, v.patch_dim])
    cos, sin = (g.input(f"rope_{f}", TensorProto.FLOAT, [patches, hd]) for f in ("cos", "sin"))
    b = _Qwen2ViT(g, weights, cfg, spec, cos=cos, sin=sin)
    x = b.linear(pixels, "vision.embed.patch", "/vision/embed", bias=False)
    x = g.op("Unsqueeze", [x, g.const("/c/axis0", [0])], "/vision/embed")
    for i in range(v.num_layers):
        x = b.layer(x, i)
    merged: int | str = spec.batch // v.merge_size**2 if spec.batch else "tokens"
    g.output(b.merger(x), "image_features", TensorProto.FLOAT, [merged, cfg.text.hidden_size])
    return g.save()
