"""Full-size (InternVL3-1B shape) checks: slow, run with `scripts/test -m slow`."""

import numpy as np
import pytest

from edgevlm.checkpoint import open_checkpoint
from edgevlm.config import preset
from edgevlm.testing.random_checkpoint import cached_checkpoint

pytestmark = pytest.mark.slow


def test_internvl3_1b_random_checkpoint_opens_strictly():
    ck = open_checkpoint(cached_checkpoint("internvl3-1b", "original"))
    assert ck.config == preset("internvl3-1b").with_naming("original")
    assert ck.shape("llm.embed.weight") == (151674, 896)
    qkv = ck.get("vision.layers.23.attn.qkv.weight")
    assert qkv.shape == (3072, 1024) and np.isfinite(qkv).all() and qkv.std() > 0
