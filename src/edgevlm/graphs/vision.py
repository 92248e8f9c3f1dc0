"""Shared pieces of the vision encoder graphs: how to build them (precision, batch, op set) and the
layers every encoder uses (linear in each precision, LayerNorm, exact GELU). Each family's encoder
graph (internvit.py, ...) is assembled from these.

Precisions: fp32 (parity, and what rknn-toolkit2 turns into fp16 on the NPU), fp16 (weights stored
in half precision, computed in fp32), int8 (CPU: linear layers as com.microsoft
DynamicQuantizeMatMul, i.e. int8 weights per output channel and uint8 activations per tensor
quantised on the fly; measured 2x faster than MatMulNBits 8-bit on the vision shapes here).
`contrib=False` keeps to standard ONNX ops at opset 17 (the NPU export form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto

from ..precision import DEFAULT_VISION, VISION_PRECISIONS
from .builder import Graph, transposed
from .quant import int8_per_channel

Weights = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class VisionGraphSpec:
    """How to build the vision graph."""

    precision: str = DEFAULT_VISION
    batch: int | None = None  # None: the tile count is dynamic; 1: static single tile (NPU)
    contrib: bool = True  # allow ONNX Runtime contrib ops (fused attention; required for int8)

    def __post_init__(self) -> None:
        if self.precision not in VISION_PRECISIONS:
            raise ValueError(f"vision precision must be one of {VISION_PRECISIONS}, got {self.precision!r}")
        if self.precision == "int8" and not self.contrib:
            raise ValueError("the int8 vision graph needs ONNX Runtime contrib ops")


class VisionBuilder:
    """The layers every vision graph uses, in the spec's precision."""

    def __init__(self, g: Graph, get: Weights, cfg: Any, spec: VisionGraphSpec) -> None:
        self.g, self.get, self.cfg, self.spec = g, get, cfg, spec

    def linear(self, x: str, name: str, scope: str, out_scale: str | None = None, *, bias: bool = True) -> str:
        """x @ W^T + b for the canonical weight `{name}.weight` (and `.bias` unless bias=False).

        `out_scale` names a per-channel scale folded into W and b (InternViT's layer scales): one
        multiply of a [N,1025,D] activation per use less, and exact in every precision.
        """
        g, w = self.g, self.get(name + ".weight")
        b = self.get(name + ".bias") if bias else None
        if out_scale is not None:
            scale = self.get(out_scale).astype(np.float32)
            w, b = w * scale[:, None], (None if b is None else b * scale)
        b_name = "" if b is None else g.weight(name + ".bias", b)
        if self.spec.precision == "int8":
            q, scale = int8_per_channel(w)
            ins = [x, g.weight(name + ".weight.int8", q), g.weight(name + ".weight.scale", scale), "", b_name]
            return g.op("DynamicQuantizeMatMul", ins if b_name else ins[:3], scope, domain="com.microsoft")
        if self.spec.precision == "fp16":
            wt16 = g.weight(name + ".weight.fp16", transposed(w, np.float16))
            wt = g.op("Cast", [wt16], scope, to=TensorProto.FLOAT)
        elif self.spec.contrib:  # fp32 on ONNX Runtime: W as stored, multiplied transposed (no copy to build)
            out = g.op("FusedMatMul", [x, g.weight(name + ".weight", w)], scope, domain="com.microsoft", transB=1)
            return g.op("Add", [out, b_name], scope) if b_name else out
        else:
            wt = g.weight(name + ".weight.t", transposed(w, np.float32))
        out = g.op("MatMul", [x, wt], scope)
        return g.op("Add", [out, b_name], scope) if b_name else out

    def patches(self, pixels: str, scope: str) -> str:
        """The patch embedding `vision.embed.patch` (a Conv whose stride is its kernel): [N,3,T,T] ─ [N,S²,D].

        On the CPU as one MatMul of the flattened patches: ONNX Runtime's Conv there raised the vision
        run's peak by ~24 MB (a 512 px tile), past the end of the Conv. The NPU form keeps the Conv,
        which rknn-toolkit2 maps directly (it has no 6-D transposes)."""
        g, v = self.g, self.cfg.vision
        w, p, d = self.get("vision.embed.patch.weight"), v.patch_size, v.hidden_size
        b = g.weight("vision.embed.patch.bias", self.get("vision.embed.patch.bias"))
        if self.spec.contrib:
            side = self.cfg.tile_size // p
            x = g.op("Reshape", [pixels, g.const("/c/patch_grid", [-1, 3, side, p, side, p])], scope)
            x = g.op("Transpose", [x], scope, perm=[0, 2, 4, 1, 3, 5])  # [N, row, col, channel, py, px]
            x = g.op("Reshape", [x, g.const("/c/patch_rows", [-1, side * side, 3 * p * p])], scope)
            wt = g.weight("vision.embed.patch.weight.t", transposed(w.reshape(d, -1), np.float32))
            return g.op("Add", [g.op("MatMul", [x, wt], scope), b], scope)
        conv = g.op("Conv", [pixels, g.weight("vision.embed.patch.weight", w), b], scope,
                    kernel_shape=[p, p], strides=[p, p])  # fmt: skip
        flat = g.op("Reshape", [conv, g.const("/c/ncl", [0, d, -1])], scope)
        return g.op("Transpose", [flat], scope, perm=[0, 2, 1])

    def layer_norm(self, x: str, name: str, scope: str, eps: float) -> str:
        w, b = (self.g.weight(f"{name}.{k}", self.get(f"{name}.{k}")) for k in ("weight", "bias"))
        return self.g.op("LayerNormalization", [x, w, b], scope, axis=-1, epsilon=eps)

    def gelu(self, x: str, scope: str, *, tanh: bool = False) -> str:
        """GELU, exact or its tanh approximation (SigLIP's): ONNX Runtime's Gelu / FastGelu where contrib
        ops are allowed (one node instead of five or more), else from Erf or Tanh (Gelu is opset 20)."""
        g = self.g
        if self.spec.contrib:
            return g.op("FastGelu" if tanh else "Gelu", [x], scope, domain="com.microsoft")
        if tanh:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = g.op("Mul", [g.op("Mul", [x, x], scope), x], scope)
            inner = g.op("Add", [x, g.op("Mul", [cube, g.const("/c/gelu_k", 0.044715, np.float32)], scope)], scope)
            inner = g.op("Mul", [inner, g.const("/c/sqrt_2_pi", (2 / np.pi) ** 0.5, np.float32)], scope)
            core = g.op("Tanh", [inner], scope)
        else:
            core = g.op("Erf", [g.op("Mul", [x, g.const("/c/inv_sqrt2", 2**-0.5, np.float32)], scope)], scope)
        half_x = g.op("Mul", [x, g.const("/c/half", 0.5, np.float32)], scope)
        return g.op("Mul", [half_x, g.op("Add", [core, g.const("/c/one", 1.0, np.float32)], scope)], scope)

    def attention(self, x: str, prefix: str, scope: str, heads: int, out_scale: str | None = None,
                  rotate: Callable[[str, str], str] | None = None) -> str:  # fmt: skip
        """Bidirectional self-attention over a tile: `{prefix}.qkv` ─ heads ─ softmax(q k^T / sqrt(d)) v ─
        `{prefix}.proj` (one MultiHeadAttention node where contrib ops are allowed). `rotate(t, scope)`, if
        given, turns q and k [B,S,D] by their positions first (rotary embeddings)."""
        g = self.g
        q, k, val = g.op("Split", [self.linear(x, prefix + ".qkv", scope + "/qkv")], scope, outputs=3, axis=2)
        if rotate is not None:
            q, k = rotate(q, scope + "/rotary_q"), rotate(k, scope + "/rotary_k")
        if self.spec.contrib:
            out = g.op("MultiHeadAttention", [q, k, val], scope, domain="com.microsoft", num_heads=heads)
        else:
            head_dim = self.cfg.vision.hidden_size // heads
            shape = g.const("/c/heads", [0, 0, heads, head_dim])
            q, k, val = (g.op("Transpose", [g.op("Reshape", [t, shape], scope)], scope, perm=[0, 2, 1, 3])
                         for t in (q, k, val))  # fmt: skip
            q = g.op("Mul", [q, g.const("/c/attn_scale", head_dim**-0.5, np.float32)], scope)
            scores = g.op("MatMul", [q, g.op("Transpose", [k], scope, perm=[0, 1, 3, 2])], scope)
            ctx = g.op("MatMul", [g.op("Softmax", [scores], scope, axis=-1), val], scope)
            merge = g.const("/c/merge", [0, 0, -1])
            out = g.op("Reshape", [g.op("Transpose", [ctx], scope, perm=[0, 2, 1, 3]), merge], scope)
        return self.linear(out, prefix + ".proj", scope + "/proj", out_scale=out_scale)

    def pixel_shuffle(self, x: str, side: int, factor: int) -> str:
        """[N,side²,D] ─ [N,(side/f)²,f²D], each output row an f x f block of patches (InternVL's pixel
        shuffle v2 and SmolVLM's connector order the channels alike)."""
        g, d, small, s = self.g, self.cfg.vision.hidden_size, side // factor, "/vision/shuffle"
        x = g.op("Reshape", [x, g.const("/c/ps1", [0, side, small, factor * d])], s)
        x = g.op("Transpose", [x], s, perm=[0, 2, 1, 3])
        x = g.op("Reshape", [x, g.const("/c/ps2", [0, small, small, factor * factor * d])], s)
        x = g.op("Transpose", [x], s, perm=[0, 2, 1, 3])
        return g.op("Reshape", [x, g.const("/c/ps3", [0, small * small, factor * factor * d])], s)
