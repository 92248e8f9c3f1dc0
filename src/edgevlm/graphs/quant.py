"""Weight packing for quantised linear layers."""

from __future__ import annotations

import numpy as np

from .builder import transposed

_ROWS = 4096


def int8_per_channel(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: weight [N,K] -> (q [K,N] int8, scale [N] float32)."""
    absmax = np.abs(weight).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return transposed(q), scale


def matmul_nbits(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack weight [N,K] for com.microsoft.MatMulNBits, symmetric per block of K.

    B is uint8 [N, K/block, block*bits/8] holding q + 2^(bits-1) (the implied zero point when no
    zero-point input is given); scales are float32 [N * K/block].
    """
    n, k = weight.shape
    if k % block:
        raise ValueError(f"K={k} is not a multiple of the block size {block}")
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits packing supports 4 or 8 bits, not {bits}")
    levels = 2 ** (bits - 1)
    packed = np.empty((n, k // block, block * bits // 8), dtype=np.uint8)
    scales = np.empty((n, k // block), dtype=np.float32)
    for start in range(0, n, _ROWS):  # in row chunks: the lm_head is 136 M weights
        w = np.asarray(weight[start : start + _ROWS], dtype=np.float32).reshape(-1, k // block, block)
        absmax = np.abs(w).max(axis=2, keepdims=True)
        scale = np.where(absmax > 0, absmax / (levels - 1), 1.0).astype(np.float32)
        q = (np.clip(np.rint(w / scale), -(levels - 1), levels - 1) + levels).astype(np.uint8)
        if bits == 4:  # two values per byte, low nibble first
            q = q[..., 0::2] | (q[..., 1::2] << 4)
        packed[start : start + len(w)] = q
        scales[start : start + len(w)] = scale[..., 0]
    return packed, scales.reshape(-1)
