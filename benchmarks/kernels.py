"""Kernel figures behind the graph choices: linear-layer forms at decode (M=1) and prefill (M=512).

    .venv/bin/python benchmarks/kernels.py [--rows 1 512] [--copies 40]

Each form runs `copies` independent linear layers of InternVL3-1B's gate_up shape (896 -> 9728),
each with its own weights (ONNX Runtime shares identical initializers, which would fake a cache
hit), in one session with 2 threads; figures are medians of 7 runs. Decode is a read of the
weights (GB/s), prefill a product (TOP/s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, save

from edgevlm.graphs.quant import int8_per_channel, matmul_nbits

K, N = 896, 9728
FORMS = ("MatMulNBits 8-bit", "MatMulNBits 4-bit", "DynamicQuantizeMatMul")


def _node(form: str, w: np.ndarray, c: int) -> tuple[object, list]:
    if form.startswith("MatMulNBits"):
        bits = 8 if "8-bit" in form else 4
        q, s = matmul_nbits(w, bits, 128)
        inits = [numpy_helper.from_array(q, f"q{c}"), numpy_helper.from_array(s, f"s{c}")]
        node = helper.make_node("MatMulNBits", ["x", f"q{c}", f"s{c}"], [f"y{c}"], domain="com.microsoft",
                                K=K, N=N, bits=bits, block_size=128, accuracy_level=4)  # fmt: skip
        return node, inits
    q, s = int8_per_channel(w)
    inits = [numpy_helper.from_array(q, f"q{c}"), numpy_helper.from_array(s, f"s{c}"),
             numpy_helper.from_array(np.zeros(N, np.int8), f"z{c}")]  # fmt: skip
    node = helper.make_node("DynamicQuantizeMatMul", ["x", f"q{c}", f"s{c}", f"z{c}"], [f"y{c}"],
                            domain="com.microsoft")  # fmt: skip
    return node, inits


def build(form: str, copies: int, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
    nodes, inits = [], []
    for c in range(copies):
        node, more = _node(form, np.roll(base, 7 * c + 1, axis=1), c)  # distinct weights per copy
        nodes.append(node)
        inits += more
    graph = helper.make_graph(
        nodes, "linears", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "M", K])],
        [helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, None) for c in range(copies)], inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    path = folder / f"{form.replace(' ', '_')}.onnx"
    save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def measure(path: Path, rows: int, copies: int) -> float:
    """Seconds per linear layer."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, rows, K)).astype(np.float32)
    session.run(None, {"x": x})
    times = []
    for _ in range(7):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) / copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 512])
    ap.add_argument("--copies", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for form in FORMS:
            path = build(form, args.copies, Path(tmp))
            for rows in args.rows:
                t = measure(path, rows, args.copies)
                weight_bytes = K * N * (0.5 if "4-bit" in form else 1)
                rate = f"{weight_bytes / t / 1e9:.1f} GB/s" if rows == 1 else f"{2 * rows * K * N / t / 1e12:.2f} TOP/s"
                print(f"{form:24s} M={rows:<4d} {t * 1000:7.3f} ms per layer  {rate}")


if __name__ == "__main__":
    main()
