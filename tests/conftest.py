"""Shared fixtures: one tiny random InternVL3 (the transformers reference) saved in both namings."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the [test] extra (torch, transformers) is not installed")

from edgevlm.config import preset  # noqa: E402
from edgevlm.testing.random_checkpoint import reference_model, round_parameters, save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cfg():
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_ref(tiny_cfg):
    """The transformers model whose weights the tiny checkpoints hold (bf16-rounded, float32)."""
    model = reference_model(tiny_cfg, seed=0)
    round_parameters(model, "bf16")
    return model


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_ref, tiny_cfg, tmp_path_factory) -> dict[str, Path]:
    """naming -> folder of the same tiny model, bf16, single file."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for naming in ("original", "hf"):
        out[naming] = root / naming
        save_checkpoint(tiny_ref, tiny_cfg, out[naming], naming=naming, dtype="bf16")
    return out
