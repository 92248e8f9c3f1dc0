"""edgevlm: run InternVL3 vision-language models on a plain CPU and the RK3588 NPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"
BACKENDS = ("auto", "cpu", "rk3588")


def load(path: str | Path, *, threads: int | None = None, verify: bool = False, backend: str = "auto") -> Any:
    """Open a bundle made by `edgevlm convert`: on the CPU (ONNX Runtime), or with backend="rk3588"
    (and "auto" on an RK3588 whose NPU libraries load) on the NPU, from its `export-rk3588` artifacts.
    Both answer `.chat(...)` and `.session(...)`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from .rk3588 import on_rk3588_board

    if backend == "rk3588" or (backend == "auto" and on_rk3588_board()):
        from .rk3588.board import BoardModel

        return BoardModel(path)
    from .model import load as load_cpu

    return load_cpu(path, threads=threads, verify=verify)
