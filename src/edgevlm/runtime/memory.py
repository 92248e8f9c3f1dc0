"""Process memory behaviour.

glibc raises its mmap threshold each time a large block is freed, after which big numpy buffers
(image tiles, features) come from heap arenas that are never given back: a server that decoded
40 images grew from 255 MB to 640 MB. Pinning the threshold keeps large buffers in their own
mappings, returned on free (measured: 228 MB -> 233 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done = False


def pin_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold (no-op elsewhere); True when applied."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # The dynamic rule may already have raised the trim threshold too (to twice the mmap one).
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, nbytes))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        _done = False
    return _done


def memory_mb(root: str | Path = "/") -> tuple[int, int]:
    """(MemTotal, MemAvailable) in MiB from `root`/proc/meminfo; zeros where it cannot be read."""
    try:
        text = (Path(root) / "proc/meminfo").read_text()
    except OSError:
        return 0, 0
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    mb = {k: int(v.split()[0]) // 1024 for k, v in info.items() if v.split() and v.split()[0].isdigit()}
    return mb.get("MemTotal", 0), mb.get("MemAvailable", 0)
