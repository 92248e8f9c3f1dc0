"""Rockchip RK3588 (and RK3576/RK3562): NPU export, and the board backends (RKNN-Lite, RKLLM)."""

from __future__ import annotations

from pathlib import Path


def on_rk3588_board() -> bool:
    """An RK3588 whose NPU libraries load: where `backend="auto"` picks the NPU."""
    try:
        compatible = Path("/proc/device-tree/compatible").read_bytes()
    except OSError:
        return False
    if b"rk3588" not in compatible:
        return False
    try:
        import ctypes

        import rknnlite.api  # noqa: F401

        ctypes.CDLL("librkllmrt.so")
    except (ImportError, OSError):
        return False
    return True
