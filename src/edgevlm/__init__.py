"""edgevlm: run small vision-language models on a plain CPU and the RK3588 NPU."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"
BACKENDS = ("auto", "cpu", "rk3588")  # auto: the NPU on an RK3588 whose libraries load, else the CPU

if TYPE_CHECKING:
    from .engine import Engine


def load(path: str | Path, *, threads: int | None = None, verify: bool = False, backend: str = "auto") -> Engine:
    """Open a bundle made by `edgevlm convert`: on the CPU (ONNX Runtime), or with backend="rk3588"
    (and "auto" on an RK3588 whose NPU libraries load) on the NPU, from its `export-rk3588` artifacts.
    Either engine answers `.chat(...)`, `.session(...)` and `.stream(...)` alike. On an RK3588 whose NPU
    stack is incomplete, "auto" says why in one line (a warning on the `edgevlm` logger) and uses the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        from .doctor import examine

        report = examine(path)
        if report.rk3588 and report.backend == "cpu":
            logging.getLogger("edgevlm").warning("edgevlm: --backend auto uses the CPU: %s", report.reason)
        backend = report.backend
    if backend == "rk3588":
        from .rk3588.board import load_board

        return load_board(path)
    from .model import load as load_cpu

    return load_cpu(path, threads=threads, verify=verify)
