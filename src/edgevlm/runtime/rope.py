"""Rotary position angles, computed on the host from positions that need not be the cache index.

The decoder graph takes cos and sin of these angles as inputs, row by row for the tokens of a step,
so a family whose positions are not 0, 1, 2, ... (multimodal rotary schemes) needs no other graph.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

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


def mrope_positions(ids: Sequence[int], visual_ids: Collection[int],
                    blocks: Sequence[tuple[int, int, int]]) -> np.ndarray:  # fmt: skip
    """M-RoPE positions [S, 3] of a prompt, as transformers' get_rope_index gives them: text tokens advance
    all three axes together; each image or video (a run of `visual_ids` tokens, one per merged cell of its
    (runs, columns, rows) block: a picture is one run, a video one per pair of frames, run by run and row by
    row) takes its run, row and column, offset by the position it starts at; the text after it continues
    from the largest position so far + 1. (transformers 5.24 continues from the start + the larger of columns
    and rows, which is the same unless a video has more runs than that; Qwen2-VL's own code, as this, takes
    the largest position.)"""
    out = np.zeros((len(ids), 3), dtype=np.int64)
    media, next_pos, i = iter(blocks), 0, 0
    while i < len(ids):
        if ids[i] not in visual_ids:
            out[i], next_pos, i = next_pos, next_pos + 1, i + 1
            continue
        runs, cols, rows = next(media)
        cell = np.arange(runs * cols * rows)
        place = np.stack([cell // (cols * rows), cell % (cols * rows) // cols, cell % cols], axis=1)
        out[i : i + len(cell)] = place + next_pos
        next_pos, i = int(out[i : i + len(cell)].max()) + 1, i + len(cell)
    return out
