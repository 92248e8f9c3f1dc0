"""A cached random-weight checkpoint of any preset, built by its family's reference builder.

    python -m edgevlm.testing.checkpoints PRESET    (prints the checkpoint folder)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..models import FAMILIES, preset


def _internvl3(name: str) -> Path:
    from .random_checkpoint import cached_checkpoint

    return cached_checkpoint(name, "original")


def _smolvlm2(name: str) -> Path:
    from .smolvlm import cached_checkpoint

    return cached_checkpoint(name)


def _qwen2_vl(name: str) -> Path:
    from .qwen2vl import cached_checkpoint

    return cached_checkpoint(name)


BUILDERS: dict[str, Callable[[str], Path]] = {"internvl3": _internvl3, "smolvlm2": _smolvlm2, "qwen2_vl": _qwen2_vl}
assert set(BUILDERS) == set(FAMILIES), "every family has a reference builder"


def cached(name: str) -> Path:
    """The folder of a random checkpoint of preset `name` (built on first use, then re-used)."""
    return BUILDERS[preset(name).family](name)


if __name__ == "__main__":
    try:
        print(cached(sys.argv[1]))
    except ConfigError as e:
        sys.exit(f"error: {e}")
