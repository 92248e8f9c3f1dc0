"""A small ONNX graph builder: path-like node names, weights streamed to an external data file.

Weights are written to `<name>.onnx.data` as they are added, so building a 1B-parameter graph
holds one tensor in memory at a time rather than the whole model. A graph built to be run once and
thrown away (the accuracy measure's fp32 references) can instead keep its weights as arrays
(`InMemory`): writing and reading back 2 GB of fp32 cost more than the measure itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 64  # byte alignment of each weight in the data file (lets ORT map them directly)
_ROWS = 128  # rows per block of a transposed copy
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def transposed(array: np.ndarray, dtype: Any = None) -> np.ndarray:
    """array.T [K,N] of a matrix [N,K] as a new C-contiguous array (in `dtype`), copied a block of rows at
    a time: 5x faster than numpy's strided copy for a 4864 x 896 matrix here (the blocks stay in cache)."""
    out = np.empty(array.shape[::-1], dtype=dtype or array.dtype)
    for start in range(0, array.shape[0], _ROWS):
        out[:, start : start + _ROWS] = array[start : start + _ROWS].T
    return out


@dataclass
class InMemory:
    """Where a graph goes instead of a file: its model (weights as external references) and the arrays those
    references name, for `runtime.ort.WeightsFed`."""

    model: onnx.ModelProto | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def weights_as_inputs(self) -> bytes:
        """The model with each array's initializer turned into a graph input of its type and shape."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        graph = model.graph
        fed = [i for i in graph.initializer if i.name in self.arrays]
        kept = [i for i in graph.initializer if i.name not in self.arrays]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in fed)
        return model.SerializeToString()


GraphTarget = str | Path | InMemory  # what a graph builder writes to


class Graph:
    """Nodes, inputs, outputs and initializers of one ONNX graph under construction."""

    def __init__(self, path: GraphTarget, *, opset: int = 17, name: str = "edgevlm") -> None:
        self.memory = path if isinstance(path, InMemory) else None
        self.path = Path("memory.onnx" if self.memory else path)
        self.data_name = self.path.name + ".data"
        self._data = None if self.memory else open(self.path.with_name(self.data_name), "wb")  # noqa: SIM115
        self.name = name
        self.opsets = {"": opset}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}
        self._consts: set[str] = set()

    # -- values ------------------------------------------------------------------------------

    def input(self, name: str, elem: int, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, value: str, name: str, elem: int, shape: list[int | str]) -> None:
        self.op("Identity", [value], f"/output/{name}", out=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def weight(self, name: str, array: np.ndarray) -> str:
        """A named initializer whose bytes go to the external data file (or stay an array, in memory).
        A bfloat16 array (a checkpoint's own bytes, see `Checkpoint.stored`) is kept so and widened to
        float32 in the graph as it runs: the value returned is then that Cast's output."""
        array = np.ascontiguousarray(array)
        offset = self._write(name, array)
        bf16 = array.dtype == BFLOAT16
        elem = TensorProto.BFLOAT16 if bf16 else helper.np_dtype_to_tensor_dtype(array.dtype)
        t = TensorProto(name=name, data_type=elem, dims=array.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", offset), ("length", array.nbytes)):
            t.external_data.add(key=key, value=str(value))
        self.inits.append(t)
        return self.op("Cast", [name], name, to=TensorProto.FLOAT) if bf16 else name

    def _write(self, name: str, array: np.ndarray) -> int:
        """Store the array's bytes; their offset in the data file."""
        if self._data is None:
            self.memory.arrays[name] = array  # type: ignore[union-attr]
            return 0
        pad = -self._data.tell() % ALIGN
        self._data.write(b"\0" * pad)
        offset = self._data.tell()
        if array.nbytes:
            self._data.write(memoryview(array.reshape(-1)).cast("B"))  # the array's own bytes, not a copy
        return offset

    def const(self, name: str, value: Any, dtype: Any = np.int64) -> str:
        """A small constant stored inline (shapes, axes, scalars); a name is added once."""
        if name in self._consts:
            return name
        self._consts.add(name)
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # -- nodes -------------------------------------------------------------------------------

    def op(self, op_type: str, inputs: list[str], scope: str, *, out: str | None = None, outputs: int = 1,
           domain: str = "", **attrs: Any) -> Any:  # fmt: skip
        """Add a node named `{scope}/{op_type}`; returns its output name (or names if outputs > 1)."""
        node_name = f"{scope}/{op_type}"
        n = self._counts.get(node_name, 0)
        self._counts[node_name] = n + 1
        if n:
            node_name += f"_{n}"
        names = [out] if out else [f"{node_name}_output_{i}" for i in range(outputs)]
        if domain:
            self.opsets.setdefault(domain, 1)
        self.nodes.append(helper.make_node(op_type, inputs, names, name=node_name, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    # -- output ------------------------------------------------------------------------------

    def save(self) -> Any:
        """The graph written to its path (returned), or kept in its InMemory target (returned)."""
        if self._data is not None:
            self._data.close()
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgevlm")
        model.ir_version = min(model.ir_version, 10)  # readable by older runtimes (rknn-toolkit2's ORT)
        if self.memory is not None:
            self.memory.model = model
            return self.memory
        onnx.save_model(model, self.path)
        return self.path
