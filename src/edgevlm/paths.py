"""Where edgevlm keeps things of its own."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """$EDGEVLM_CACHE, else ~/.cache/edgevlm: optimised graphs, and the test fixtures."""
    return Path(os.environ.get("EDGEVLM_CACHE") or Path.home() / ".cache" / "edgevlm")
