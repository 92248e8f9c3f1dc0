"""Vision encoders: normalised tiles [N,3,T,T] -> image features [N,rows,H] (the family decides T and rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .ort import create_session


class VisionEncoder(Protocol):
    """Anything that turns normalised tiles into language-model embeddings."""

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run of the graph on inputs a family prepared (its `vision_inputs`); the image features."""
        return self.session.run(["image_features"], feeds, self._run_options)[0]

    def encode(self, pixels: np.ndarray) -> np.ndarray: ...


class OrtVisionEncoder:
    """The vision graph on ONNX Runtime (CPU), encoding tiles in batches.

    The default batch is one tile per run: the int8 graph quantises activations per run, so a
    tile's features would otherwise depend on the tiles beside it; one tile (M=1025 rows) already
    keeps both cores busy.
    """

    def __init__(self, model: str | Path, *, threads: int | None = None, batch: int = 1, cache: bool = True):
        self.session = create_session(model, threads=threads, cache=cache)
        self.batch = batch
        inp = self.session.get_inputs()[0]
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if fixed is not None:
            self.batch = fixed  # a static graph (the NPU form) takes exactly its batch
        self.tile_shape = tuple(inp.shape[1:])
        # Give the activations (~110 MB for a 448 px tile) back after each run: the vision encoder runs
        # once per image, and keeping them would add to the language model's peak.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run of the graph on inputs a family prepared (its `vision_inputs`); the image features."""
        return self.session.run(["image_features"], feeds, self._run_options)[0]

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != self.tile_shape:
            raise ValueError(f"expected tiles [N,{','.join(map(str, self.tile_shape))}], got {list(pixels.shape)}")
        out = [
            self.session.run(["image_features"], {"pixel_values": pixels[i : i + self.batch]}, self._run_options)[0]
            for i in range(0, len(pixels), self.batch)
        ]
        return np.concatenate(out) if len(out) > 1 else out[0]
