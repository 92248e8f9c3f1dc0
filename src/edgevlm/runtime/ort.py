"""ONNX Runtime sessions: thread count from the machine, tuned options, optimised graphs cached.

Creating a session optimises the graph (fusions, constant folding), about 1 s per graph. The
optimised graph is saved once per machine and ONNX Runtime version, and later loads skip that work.

Saving the repacked weights with the graph and mapping them from the file instead
(`session.save_external_prepacked_constant_initializers`) was measured and not kept: loads were
0.1-0.3 s faster, but a vision tile ran 3 % slower and the decoder, once its file had been read
back from disk, 30 % slower (file pages stream slower than anonymous memory here).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ..paths import cache_home

if TYPE_CHECKING:  # onnx itself is not imported at run time: ~10 MB of resident memory (measured)
    import onnx

    from ..graphs.builder import InMemory


BFLOAT16_ELEM = 16  # onnx.TensorProto.BFLOAT16 (onnx itself is not imported at run time)


def default_threads() -> int:
    """The cores this process may run on (ONNX Runtime's own default counts hyperthreads too)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cache_root() -> Path:
    """Where optimised graphs are kept: the user cache, never the bundle (which may be read-only)."""
    return cache_home() / "ort"


def _options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # Memory patterns are planned per input shape, so every new prompt length grew the process
    # (measured 40 MB over four prefills, and 88 MB on a second vision run); speed is the same.
    so.enable_mem_pattern = False
    return so


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    """The instruction sets the repacked weights were laid out for."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{flags.strip()}"


def _signature(model: Path) -> str:
    """The model's version: its files' sizes and times (a re-converted bundle gets new ones)."""
    parts = []
    for f in (model, model.with_name(model.name + ".data")):
        if f.exists():
            st = f.stat()
            parts.append(f"{f.name}|{st.st_size}|{st.st_mtime_ns}")
    return ";".join(parts)


def _cache_key(model: Path, threads: int) -> str:
    ident = f"{ort.__version__}|{threads}|{_cpu_identity()}|{model.resolve()}|{_signature(model)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _prune(model: Path) -> None:
    """Drop cached graphs of models that are gone or have changed since (the cache would grow)."""
    me, mine = str(model.resolve()), _signature(model)
    for folder in cache_root().iterdir():
        if folder.name.startswith(".") or not folder.is_dir():  # temp folders of graphs being written
            continue
        try:
            source, signature = (folder / "source").read_text().split("\n", 1)
        except (OSError, ValueError):  # written by an older edgevlm: no record of its model
            source, signature = "", ""
        if not source or not Path(source).exists() or (source == me and signature != mine):
            shutil.rmtree(folder, ignore_errors=True)


def create_session(model: str | Path, *, threads: int | None = None, cache: bool = True) -> ort.InferenceSession:
    """A CPU session for `model`, from the cached optimised graph when there is one."""
    model = Path(model)
    threads = threads or default_threads()
    providers = ["CPUExecutionProvider"]
    if not cache:
        so = _options(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(model), so, providers=providers)
    cached = cache_root() / _cache_key(model, threads) / "model.onnx"
    if not cached.exists():
        return _optimise(model, cached, threads)
    so = _options(threads)
    # Already optimised: re-running the optimisers costs more load time than it gains (measured).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(cached), so, providers=providers)


def session_from_proto(model: onnx.ModelProto, weights: Path, *, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session for a graph held in memory whose external weights are in the folder `weights`
    (never cached: such a graph is a one-off, like the accuracy measure's)."""
    so = _options(threads or default_threads())
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class Halt:
    """Stops the runs of the sessions it is given to, from another thread, when the block it guards fails
    (ONNX Runtime checks between nodes): a Ctrl-C during `convert` does not wait for its fp32 references."""

    def __init__(self) -> None:
        self.options = ort.RunOptions()

    def __enter__(self) -> Halt:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None:
            self.options.terminate = True


class WeightsFed:
    """A one-off session over a graph built in memory (the accuracy measure's fp32 references), its weights
    fed as inputs to every run: ONNX Runtime reads the arrays where they are. Handing them over as
    initializers copied and repacked 2 GB at the 1B shape (3-5 s); fed, the first run starts at once and
    five 60-token prefills cost 0.3 s more than with packed weights (measured)."""

    def __init__(self, graph: InMemory, *, threads: int | None = None, halt: Halt | None = None) -> None:
        self._run_options = halt.options if halt else None
        so = _options(threads or default_threads())
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # Each bf16 weight widened just before its use, into memory the next one re-uses: in the default order
        # all the Casts ran first (the 1B model's LLM reference peaked 1.9 GB over its weights; so, 0.6 GB).
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        self.session = ort.InferenceSession(graph.weights_as_inputs(), so, providers=["CPUExecutionProvider"])
        self._weights = {n: _fed(a) for n, a in graph.arrays.items()}

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs `names` of one run on `feeds` (the graph's own inputs)."""
        values = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for n, v in feeds.items()}
        return [v.numpy() for v in self.session.run_with_ort_values(names, self._weights | values, self._run_options)]


def _fed(array: np.ndarray) -> ort.OrtValue:
    """An array as ONNX Runtime's value over the same memory (bfloat16 by its bits: numpy has no such type)."""
    if array.dtype.name == "bfloat16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), BFLOAT16_ELEM)
    return ort.OrtValue.ortvalue_from_numpy(array)


def _optimise(model: Path, cached: Path, threads: int) -> ort.InferenceSession:
    """Optimise `model` into the cache folder of `cached`, written whole or not at all."""
    cache_root().mkdir(parents=True, exist_ok=True)
    _prune(model)
    tmp = Path(tempfile.mkdtemp(prefix=".opt-", dir=cache_root()))  # beside its final place: a rename
    try:
        so = _options(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp / "model.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        (tmp / "source").write_text(f"{model.resolve()}\n{_signature(model)}")
        if not cached.parent.exists():  # another process may have cached it meanwhile
            tmp.rename(cached.parent)
        return session
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
