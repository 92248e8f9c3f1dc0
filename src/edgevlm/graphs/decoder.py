"""The language model (Qwen2, Llama) as one ONNX graph with a shared-buffer KV cache.

    inputs_embeds [1,S,H]   (token rows and image features, spliced outside the graph)
    rope_cos, rope_sin [R,D/2]   (rows 0..S-1: this step's tokens, R >= cache length; from any positions)
      └─ layers.i:
           h = RMSNorm(x)                          (fused with the residual add: SkipSimplifiedLayerNorm)
           qkv = h @ Wqkv (+ b)                    (one packed projection; the bias where the model has one)
           a = GroupQueryAttention(qkv, cache_i)   (rotary inside, row j of the tables for the step's token
                                                    j; past and present share one buffer)
           x = x + a @ Wo;  h = RMSNorm(x)
           x = x + down(silu(gate(h)) * up(h))     (gate and up packed into one projection)
      └─ last position only ─ RMSNorm ─ lm_head ─ logits [1,V]   (head=False: RMSNorm ─ hidden [1,D])

Weights: `MatMulNBits` 8-bit with int8 activations (accuracy level 4: w8a8, the default), 4-bit
(w4a8), or plain fp32 MatMul (parity). The token embedding table is not in the graph. The rotary
tables are inputs, not weights, so positions are the runtime's to choose (runtime/rope.py): the cache
index for a text model, 3-D positions for a multimodal rotary scheme.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..config import TextConfig
from ..precision import DEFAULT_LLM, LLM_PRECISIONS
from .builder import Graph, GraphTarget, InMemory
from .quant import matmul_nbits

Weights = Callable[[str], np.ndarray]
MS = "com.microsoft"
# The constants that make the graph return the last position's logits only (every_position edits them).
LAST_ROW, LOGITS_SHAPE = "/c/last", "/c/logits"


@dataclass(frozen=True)
class DecoderGraphSpec:
    """How to build the decoder graph."""

    precision: str = DEFAULT_LLM
    block_size: int = 128  # MatMulNBits block: 128 measured 30% faster than 32 for decode here
    head: bool = True  # False: the graph ends at the final norm and returns `hidden` (the accuracy measure's
    # fp32 reference, which applies the head itself from the stored table, a block of rows at a time)

    def __post_init__(self) -> None:
        if self.precision not in LLM_PRECISIONS:
            raise ValueError(f"llm precision must be one of {sorted(LLM_PRECISIONS)}, got {self.precision!r}")


class _Builder:
    def __init__(self, g: Graph, get: Weights, text: TextConfig, spec: DecoderGraphSpec) -> None:
        self.g, self.get, self.text, self.spec = g, get, text, spec

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str, scope: str) -> str:
        """x @ weight^T (+ bias), weight [N,K], in the spec's precision."""
        g, bits = self.g, LLM_PRECISIONS[self.spec.precision]
        b = g.weight(name + ".bias", bias) if bias is not None else ""
        n, k = weight.shape
        if bits:
            block = self._block(k, bits)
            q, scales = matmul_nbits(weight, bits, block)
            ins = [x, g.weight(f"{name}.q{bits}", q), g.weight(name + ".scales", scales), "", "", b]
            return g.op("MatMulNBits", ins, scope, domain=MS, K=k, N=n, bits=bits, block_size=block,
                        accuracy_level=4)  # fmt: skip
        # fp32: the weight as stored, [N,K], multiplied transposed (no transposed copy to build; the same
        # numbers and speed as MatMul of W^T, measured)
        y = g.op("FusedMatMul", [x, g.weight(name + ".weight", weight)], scope, domain=MS, transB=1)
        return g.op("Add", [y, b], scope) if b else y

    def _block(self, k: int, bits: int) -> int:
        """The spec's block where it divides K; else 32 at 4 bits (finer blocks measured closer on real
        SmolLM2 weights) and the largest power of two dividing K at 8 bits (SmolLM2's 576: 64, whose
        scales take half the memory of 32's: 19 MB less at SmolVLM2-256M's peak)."""
        block = self.spec.block_size
        if k % block and bits == 4:
            return 32
        while k % block and block > 16:
            block //= 2
        return block

    def skip_norm(self, x: str, skip: str, weight: str, scope: str) -> tuple[str, str]:
        """(RMSNorm(x + skip), x + skip) in one node."""
        w = self.g.weight(weight, self.get(weight))
        eps = self.text.rms_norm_eps
        out = self.g.op("SkipSimplifiedLayerNormalization", [x, skip, w], scope, outputs=4, domain=MS, epsilon=eps)
        return out[0], out[3]

    def attention(self, h: str, i: int, caches: tuple[str, str], state: tuple[str, str, str, str]) -> str:
        g, t, p, s = self.g, self.text, f"llm.layers.{i}.attn", f"/llm/layers.{i}/attn"
        w = np.concatenate([self.get(f"{p}.{n}.weight") for n in "qkv"])
        b = np.concatenate([self.get(f"{p}.{n}.bias") for n in "qkv"]) if t.qkv_bias else None
        qkv = self.linear(h, w, b, p + ".qkv", s + "/qkv")
        seqlens, total, cos, sin, steps = state
        out = g.op(
            "GroupQueryAttention", [qkv, "", "", caches[0], caches[1], seqlens, total, cos, sin, steps], s,
            outputs=3, domain=MS, num_heads=t.num_heads, kv_num_heads=t.num_kv_heads, do_rotary=1,
            rotary_interleaved=0,
        )  # fmt: skip
        g.op("Identity", [out[1]], s + "/present_key", out=f"present.{i}.key")
        g.op("Identity", [out[2]], s + "/present_value", out=f"present.{i}.value")
        return self.linear(out[0], self.get(p + ".o.weight"), None, p + ".o", s + "/o")

    def mlp(self, h: str, i: int) -> str:
        g, p, s = self.g, f"llm.layers.{i}.mlp", f"/llm/layers.{i}/mlp"
        w = np.concatenate([self.get(p + ".gate.weight"), self.get(p + ".up.weight")])
        gate, up = g.op("Split", [self.linear(h, w, None, p + ".gate_up", s + "/gate_up")], s, outputs=2, axis=-1)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], s + "/silu")], s + "/silu")
        return self.linear(g.op("Mul", [act, up], s), self.get(p + ".down.weight"), None, p + ".down", s + "/down")


def build_decoder_graph(get: Weights, text: TextConfig, path: GraphTarget, spec: DecoderGraphSpec) -> Path | InMemory:
    """Write the decoder graph (and its `.data` file) to `path`, or keep it in memory, from canonical weights."""
    t = text
    g = Graph(path, opset=17, name="edgevlm_decoder")
    g.opsets[MS] = 1
    b = _Builder(g, get, text, spec)
    x = g.input("inputs_embeds", TensorProto.FLOAT, [1, "sequence", t.hidden_size])
    seqlens = g.input("seqlens_k", TensorProto.INT32, [1])
    total = g.input("total_sequence_length", TensorProto.INT32, [])
    half = t.head_dim // 2
    cos, sin = (g.input(f"rope_{f}", TensorProto.FLOAT, ["rope_rows", half]) for f in ("cos", "sin"))
    steps = g.input("position_ids", TensorProto.INT64, [1, "sequence"])  # 0..S-1: the table's rows
    state = (seqlens, total, cos, sin, steps)
    cache_shape: list[int | str] = [1, t.num_kv_heads, "cache", t.head_dim]
    norm_w = g.weight("llm.layers.0.attn_norm.weight", b.get("llm.layers.0.attn_norm.weight"))
    h = g.op("SimplifiedLayerNormalization", [x, norm_w], "/llm/layers.0/attn_norm", axis=-1,
             epsilon=t.rms_norm_eps)  # fmt: skip
    for i in range(t.num_layers):
        s = f"/llm/layers.{i}"
        caches = tuple(g.input(f"past.{i}.{kv}", TensorProto.FLOAT, cache_shape) for kv in ("key", "value"))
        attn = b.attention(h, i, caches, state)
        h, x = b.skip_norm(attn, x, f"llm.layers.{i}.mlp_norm.weight", s + "/mlp_norm")
        mlp = b.mlp(h, i)
        if i + 1 < t.num_layers:
            h, x = b.skip_norm(mlp, x, f"llm.layers.{i + 1}.attn_norm.weight", f"/llm/layers.{i + 1}/attn_norm")
    for i in range(t.num_layers):
        for kv in ("key", "value"):
            g.outputs.append(_value_info(f"present.{i}.{kv}", cache_shape))
    # Only the last position's logits are needed: slice before the final norm and lm_head.
    last = g.const(LAST_ROW, [-1])
    mlp_last = g.op("Slice", [mlp, last, g.const("/c/end", [2**31]), g.const("/c/axis1", [1])], "/llm/last")
    x_last = g.op("Slice", [x, last, "/c/end", "/c/axis1"], "/llm/last")
    h, _ = b.skip_norm(mlp_last, x_last, "llm.norm.weight", "/llm/norm")
    if not spec.head:
        g.output(g.op("Reshape", [h, g.const(LOGITS_SHAPE, [1, t.hidden_size])], "/llm/out"), "hidden",
                 TensorProto.FLOAT, [1, t.hidden_size])  # fmt: skip
        return g.save()
    logits = b.linear(h, get("llm.lm_head.weight"), None, "llm.lm_head", "/llm/lm_head")
    logits = g.op("Reshape", [logits, g.const(LOGITS_SHAPE, [1, t.vocab_size])], "/llm/lm_head")
    g.output(logits, "logits", TensorProto.FLOAT, [1, t.vocab_size])
    return g.save()


def every_position(graph: Path | onnx.ModelProto) -> onnx.ModelProto:
    """The decoder graph at a path (its weights left in their file) or in memory (edited in place), returning
    logits [S,V] (or, without its head, hidden states [S,D]) for every position instead of the last one: the
    accuracy measure's form of the same weights."""
    model = graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph), load_external_data=False)
    out = next(o for o in model.graph.output if o.name in ("logits", "hidden"))
    width = out.type.tensor_type.shape.dim[-1].dim_value
    consts = {LAST_ROW: [0], LOGITS_SHAPE: [-1, width]}  # from the first row on; [S,width] out
    for init in model.graph.initializer:
        if init.name in consts:
            init.CopyFrom(onnx.numpy_helper.from_array(np.asarray(consts[init.name], dtype=np.int64), init.name))
    out.CopyFrom(_value_info(out.name, ["sequence", width]))
    return model


def _value_info(name: str, shape: list[int | str]):
    from onnx import helper

    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
