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

from .builder import Graph
from .quant import int8_per_channel

Weights = Callable[[str], np.ndarray]
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class VisionGraphSpec:
    """How to build the vision graph."""

    precision: str = "int8"
    batch: int | None = None  # None: the tile count is dynamic; 1: static single tile (NPU)
    contrib: bool = True  # allow ONNX Runtime contrib ops (fused attention; required for int8)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"vision precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "int8" and not self.contrib:
            raise ValueError("the int8 vision graph needs ONNX Runtime contrib ops")


class VisionBuilder:
    """The layers every vision graph uses, in the spec's precision."""

    def __init__(self, g: Graph, get: Weights, cfg: Any, spec: VisionGraphSpec) -> None:
        self.g, self.get, self.cfg, self.spec = g, get, cfg, spec

    def linear(self, x: str, name: str, scope: str, out_scale: str | None = None) -> str:
        """x @ W^T + b for the canonical weight `{name}.weight` (and `.bias`).

        `out_scale` names a per-channel scale folded into W and b (InternViT's layer scales): one
        multiply of a [N,1025,D] activation per use less, and exact in every precision.
        """
        g, w, b = self.g, self.get(name + ".weight"), self.get(name + ".bias")
        if out_scale is not None:
            scale = self.get(out_scale).astype(np.float32)
            w, b = w * scale[:, None], b * scale
        bias = g.weight(name + ".bias", b)
        if self.spec.precision == "int8":
            q, scale = int8_per_channel(w)
            ins = [x, g.weight(name + ".weight.int8", q), g.weight(name + ".weight.scale", scale), "", bias]
            return g.op("DynamicQuantizeMatMul", ins, scope, domain="com.microsoft")
        if self.spec.precision == "fp16":
            wt = g.op("Cast", [g.weight(name + ".weight.fp16", w.T.astype(np.float16))], scope, to=TensorProto.FLOAT)
        else:
            wt = g.weight(name + ".weight.t", w.T.astype(np.float32))
        return g.op("Add", [g.op("MatMul", [x, wt], scope), bias], scope)

    def layer_norm(self, x: str, name: str, scope: str, eps: float) -> str:
        w, b = (self.g.weight(f"{name}.{k}", self.get(f"{name}.{k}")) for k in ("weight", "bias"))
        return self.g.op("LayerNormalization", [x, w, b], scope, axis=-1, epsilon=eps)

    def gelu(self, x: str, scope: str) -> str:
        """Exact GELU: ONNX Runtime's Gelu where contrib ops are allowed, else from Erf (Gelu is opset 20)."""
        g = self.g
        if self.spec.contrib:  # one node instead of five (ONNX Runtime does not fuse this Erf form back)
            return g.op("Gelu", [x], scope, domain="com.microsoft")
        erf = g.op("Erf", [g.op("Mul", [x, g.const("/c/inv_sqrt2", 2**-0.5, np.float32)], scope)], scope)
        half_x = g.op("Mul", [x, g.const("/c/half", 0.5, np.float32)], scope)
        return g.op("Mul", [half_x, g.op("Add", [erf, g.const("/c/one", 1.0, np.float32)], scope)], scope)
