"""The token embedding table, kept out of the LLM graph.

Stored as int8 rows with one float32 scale per row (or float32 rows for parity builds) in `.npy`
files that are memory-mapped: a lookup reads only the rows it needs, so the 136 M-entry table of
InternVL3-1B costs memory only for the tokens actually used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

INT8_FILES = ("embed_tokens.int8.npy", "embed_tokens.scale.npy")
FP32_FILE = "embed_tokens.fp32.npy"
_ROWS_PER_CHUNK = 8192  # bounds conversion memory to a slice of the table at a time


def write_embedding(get_rows: np.ndarray, folder: str | Path, *, quantize: bool = True) -> list[str]:
    """Write the table [V,H] into `folder`; returns the file names written."""
    folder = Path(folder)
    rows, hidden = get_rows.shape
    if not quantize:
        out = np.lib.format.open_memmap(folder / FP32_FILE, mode="w+", dtype=np.float32, shape=(rows, hidden))
        for start in range(0, rows, _ROWS_PER_CHUNK):
            out[start : start + _ROWS_PER_CHUNK] = get_rows[start : start + _ROWS_PER_CHUNK]
        out.flush()
        return [FP32_FILE]
    q = np.lib.format.open_memmap(folder / INT8_FILES[0], mode="w+", dtype=np.int8, shape=(rows, hidden))
    scale = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, _ROWS_PER_CHUNK):
        block = np.asarray(get_rows[start : start + _ROWS_PER_CHUNK], dtype=np.float32)
        absmax = np.abs(block).max(axis=1)
        s = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        q[start : start + len(block)] = np.clip(np.rint(block / s[:, None]), -127, 127)
        scale[start : start + len(block)] = s
    q.flush()
    np.save(folder / INT8_FILES[1], scale)
    return list(INT8_FILES)


class EmbeddingTable:
    """Looks up rows of the memory-mapped table as float32."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        if (folder / FP32_FILE).exists():
            self._rows = np.load(folder / FP32_FILE, mmap_mode="r")
            self._scale = None
        else:
            self._rows = np.load(folder / INT8_FILES[0], mmap_mode="r")
            self._scale = np.load(folder / INT8_FILES[1], mmap_mode="r")
        self.vocab_size, self.hidden_size = self._rows.shape

    def __call__(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")
        rows = self._rows[ids].astype(np.float32)
        if self._scale is not None:
            rows *= self._scale[ids][:, None]
        return rows
