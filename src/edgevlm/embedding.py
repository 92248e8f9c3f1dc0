"""The token embedding table, kept out of the LLM graph.

Stored as int8 rows with one float32 scale per row (or float32 rows for parity builds) in `.npy`
files. A lookup reads just the rows it needs with pread: the 136 M-entry table of InternVL3-1B
costs memory only for the tokens in use. (Memory-mapping it measured ~110 MB resident for 300
random rows here, because the kernel maps whole page-cache folios around each fault.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

INT8_FILES = ("embed_tokens.int8.npy", "embed_tokens.scale.npy")
FP32_FILE = "embed_tokens.fp32.npy"
_ROWS_PER_CHUNK = 8192  # bounds conversion memory to a slice of the table at a time


def _npy_writer(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> BinaryIO:
    """An open .npy file with its header written; rows follow with plain writes. (Not a memory map: on
    a full disk a write raises ENOSPC, where a store into a mapped page kills the process with SIGBUS.)"""
    f = open(path, "wb")  # noqa: SIM115 - closed by the caller's with
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    return f


def write_embedding(get_rows: np.ndarray, folder: str | Path, *, quantize: bool = True) -> list[str]:
    """Write the table [V,H] into `folder`; returns the file names written."""
    folder = Path(folder)
    rows, hidden = get_rows.shape
    if not quantize:
        with _npy_writer(folder / FP32_FILE, np.float32, (rows, hidden)) as f:
            for start in range(0, rows, _ROWS_PER_CHUNK):
                f.write(np.ascontiguousarray(get_rows[start : start + _ROWS_PER_CHUNK], dtype=np.float32).tobytes())
        return [FP32_FILE]
    scale = np.empty(rows, dtype=np.float32)
    with _npy_writer(folder / INT8_FILES[0], np.int8, (rows, hidden)) as f:
        for start in range(0, rows, _ROWS_PER_CHUNK):
            block = np.asarray(get_rows[start : start + _ROWS_PER_CHUNK], dtype=np.float32)
            absmax = np.abs(block).max(axis=1)
            s = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
            f.write(np.clip(np.rint(block / s[:, None]), -127, 127).astype(np.int8).tobytes())
            scale[start : start + len(block)] = s
    np.save(folder / INT8_FILES[1], scale)
    return list(INT8_FILES)


class EmbeddingTable:
    """Looks up rows of the stored table as float32, reading only those rows."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        quantized = not (folder / FP32_FILE).exists()
        path = folder / (INT8_FILES[0] if quantized else FP32_FILE)
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D table")
        self.vocab_size, self.hidden_size = shape
        self._dtype = np.dtype(dtype)
        self._row_bytes = self.hidden_size * self._dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)
        self._scale = np.load(folder / INT8_FILES[1]) if quantized else None

    def __call__(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}")
        unique, inverse = np.unique(ids, return_inverse=True)
        raw = b"".join(os.pread(self._fd, self._row_bytes, self._offset + int(i) * self._row_bytes) for i in unique)
        rows = np.frombuffer(raw, dtype=self._dtype).reshape(len(unique), self.hidden_size).astype(np.float32)
        if self._scale is not None:
            rows *= self._scale[unique][:, None]
        return rows[inverse.reshape(-1)]

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
