"""edgevlm: run small vision-language models on a plain CPU and the RK3588 NPU."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"
BACKENDS = ("auto", "cpu", "rk3588")  # auto: the NPU on an RK3588 whose libraries load, else the CPU

if TYPE_CHECKING:
    from .engine import Engine


def load(path: str | Path, *, threads: int | None = None, verify: bool = False, backend: str = "auto") -> Engine:
    """Open a bundle made by `edgevlm convert`: on the CPU (ONNX Runtime), or with backend="rk3588"
    (and "auto" on an RK3588 whose NPU libraries load) on the NPU, from its `export-rk3588` artifacts.
    Either engine answers `.chat(...)`, `.session(...)` and `.stream(...)` alike."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from .rk3588 import on_rk3588_board

    if backend == "rk3588" or (backend == "auto" and on_rk3588_board()):
        from .rk3588.board import load_board

        return load_board(path)
    from .model import load as load_cpu

    return load_cpu(path, threads=threads, verify=verify)
