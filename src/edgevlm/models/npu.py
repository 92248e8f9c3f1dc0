"""How a family's vision encoder runs on the NPU (shared by the families and the RK3588 export)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NpuVision:
    """How a family's vision encoder runs on the NPU: the static graph's batch, the side of the image one
    run sees, and what it is fed: a uint8 image (mean/std folded into the .rknn) when `tiles` is None,
    else the family's float `vision_inputs` of `tiles(image)`, the image at the graph's fixed size
    prepared on the host (patches, rotary tables)."""

    batch: int
    side: int
    tiles: Callable[[Any], Any] | None = None

    @property
    def description(self) -> str:
        if self.tiles is None:
            return f"uint8 NHWC [1,{self.side},{self.side},3], the model's mean/std inside"
        return f"float inputs prepared on the host for a {self.side}x{self.side} image ({self.batch} rows)"


def one_tile_per_run(cfg: Any) -> NpuVision:
    """A tile family's NPU form: one tile per run, fed as a uint8 image."""
    return NpuVision(batch=1, side=cfg.tile_size)


def run_per_tile(cfg: Any, tiles: Any) -> list[dict[str, np.ndarray]]:
    """A tile family's vision feeds for one image (on the CPU): a run per tile."""
    return tiles.per_tile()
