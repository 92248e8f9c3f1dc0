"""Rotary position angles, computed on the host from positions that need not be the cache index.

The decoder graph takes cos and sin of these angles as inputs, row by row for the tokens of a step,
so a family whose positions are not 0, 1, 2, ... (multimodal rotary schemes) needs no other graph.
"""

from __future__ import annotations

import numpy as np

from ..config import TextConfig


def inverse_frequencies(text: TextConfig) -> np.ndarray:
    """θ^(-2i/d) for i < d/2: the rotation speed of each pair of head dimensions (float64)."""
    d = text.head_dim
    return 1.0 / (text.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))


def rope_angles(text: TextConfig, positions: np.ndarray) -> np.ndarray:
    """Angles [S, head_dim/2] for the 1-D positions [S] of S tokens (non-interleaved rotary)."""
    return np.outer(np.asarray(positions, dtype=np.float64), inverse_frequencies(text))
