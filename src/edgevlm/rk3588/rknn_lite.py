"""The vision encoder on the RK3588 NPU through RKNN-Lite (`rknnlite.api`, `librknnrt.so`).

Tiling stays on the CPU; tiles run one by one on the NPU as uint8 NHWC (the model's mean/std are
inside the .rknn, so the backend undoes the CPU's normalisation exactly). The runtime object only
needs `inference(inputs=..., data_format=...)`, which RKNN-Lite on the board and rknn-toolkit2's
simulator both provide, so one class serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..imagenet import MEAN, STD

Norm = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel mean and std, 0..1


class RknnError(RuntimeError):
    """RKNN-Lite returned an error code."""


class RknnRuntime(Protocol):
    def inference(self, inputs: list[np.ndarray], data_format: str = ...) -> list[np.ndarray]: ...


def to_uint8_nhwc(pixels: np.ndarray, norm: Norm = (MEAN, STD)) -> np.ndarray:
    """Undo the normalisation: float32 [N,3,H,W] -> uint8 [N,H,W,3] (exact for pixels that came from
    8-bit images)."""
    mean, std = (np.asarray(v, dtype=np.float32) for v in norm)
    raw = pixels.transpose(0, 2, 3, 1) * std + mean
    return np.clip(np.rint(raw * 255), 0, 255).astype(np.uint8)


class RknnVisionEncoder:
    """VisionEncoder on an RKNN runtime (board: RKNN-Lite; tests: the toolkit's simulator)."""

    def __init__(self, runtime: RknnRuntime, tokens_per_tile: int, hidden_size: int, *, norm: Norm = (MEAN, STD),
                 owner: Any = None) -> None:  # fmt: skip
        self.runtime, self.shape, self.norm, self._owner = runtime, (tokens_per_tile, hidden_size), norm, owner

    @classmethod
    def load(cls, path: str | Path, tokens_per_tile: int, hidden_size: int, norm: Norm,
             core_mask: str = "NPU_CORE_0_1_2") -> RknnVisionEncoder:  # fmt: skip
        from rknnlite.api import RKNNLite  # board only

        lite = RKNNLite(verbose=False)
        if lite.load_rknn(str(path)) != 0:
            raise RknnError(f"RKNN-Lite could not load {path}")
        if lite.init_runtime(core_mask=getattr(RKNNLite, core_mask)) != 0:
            lite.release()
            raise RknnError("RKNN-Lite init_runtime failed (is librknnrt.so installed and the NPU driver loaded?)")
        return cls(lite, tokens_per_tile, hidden_size, norm=norm, owner=lite)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        tiles = to_uint8_nhwc(np.asarray(pixels, dtype=np.float32), self.norm)
        out = []
        for tile in tiles:
            result = self.runtime.inference(inputs=[tile[None]], data_format="nhwc")
            if result is None:
                raise RknnError("RKNN inference failed")
            out.append(np.asarray(result[0], dtype=np.float32).reshape(self.shape))
        return np.stack(out)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run on float inputs a family prepared (its `vision_inputs`, in the graph's input order)."""
        result = self.runtime.inference(inputs=[np.ascontiguousarray(v, dtype=np.float32) for v in feeds.values()])
        if result is None:
            raise RknnError("RKNN inference failed")
        return np.asarray(result[0], dtype=np.float32).reshape(-1, self.shape[1])

    def close(self) -> None:
        if self._owner is not None:
            self._owner.release()
            self._owner = None
