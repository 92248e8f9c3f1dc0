"""Rotary position angles, computed on the host from positions that need not be the cache index.

The decoder graph takes cos and sin of these angles as inputs, row by row for the tokens of a step,
so a family whose positions are not 0, 1, 2, ... (multimodal rotary schemes) needs no other graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import TextConfig


def inverse_frequencies(text: TextConfig) -> np.ndarray:
    """θ^(-2i/d) for i < d/2: the rotation speed of each pair of head dimensions (float64)."""
    d = text.head_dim
    return 1.0 / (text.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))


def rope_angles(text: TextConfig, positions: np.ndarray) -> np.ndarray:
    """Angles [S, head_dim/2] for the positions of S tokens (non-interleaved rotary): 1-D positions [S],
    or M-RoPE's [S, 3] (time, height, width), each turning its own section of the rotary pairs."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 1:
        return np.outer(positions, inverse_frequencies(text))
    axis = np.repeat(np.arange(len(text.mrope_section)), text.mrope_section)  # the position axis of each pair
    return positions[:, axis] * inverse_frequencies(text)


def mrope_positions(ids: Sequence[int], image_token: int, grids: Sequence[tuple[int, int]]) -> np.ndarray:
    """M-RoPE positions [S, 3] of a prompt, as transformers' get_rope_index gives them: text tokens advance
    all three axes together; an image's tokens (a run of `image_token`, one per merged cell of its
    (columns, rows) grid, row by row) take time 0 and their row and column, offset by the position the
    image starts at; the text after an image continues from the largest position so far + 1."""
    out = np.zeros((len(ids), 3), dtype=np.int64)
    images, next_pos, i = iter(grids), 0, 0
    while i < len(ids):
        if ids[i] != image_token:
            out[i], next_pos, i = next_pos, next_pos + 1, i + 1
            continue
        cols, rows = next(images)
        cell = np.arange(cols * rows)
        out[i : i + cols * rows] = np.stack([np.zeros_like(cell), cell // cols, cell % cols], axis=1) + next_pos
        next_pos, i = int(out[i : i + cols * rows].max()) + 1, i + cols * rows
    return out
