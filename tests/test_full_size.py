"""Full-size (InternVL3-1B shape) checks: slow, run with `scripts/test -m slow`."""

import numpy as np
import pytest

from edgevlm.checkpoint import open_checkpoint
from edgevlm.models import preset
from edgevlm.testing.random_checkpoint import cached_checkpoint
from helpers import cosine

pytestmark = pytest.mark.slow


def test_internvl3_1b_random_checkpoint_opens_strictly():
    ck = open_checkpoint(cached_checkpoint("internvl3-1b", "original"))
    assert ck.config == preset("internvl3-1b").with_naming("original")
    assert ck.shape("llm.embed.weight") == (151674, 896)
    qkv = ck.get("vision.layers.23.attn.qkv.weight")
    assert qkv.shape == (3072, 1024) and np.isfinite(qkv).all() and qkv.std() > 0


@pytest.fixture(scope="module")
def full():
    """The cached InternVL3-1B-shaped checkpoint and its transformers twin (same seed, bf16-rounded)."""

    from edgevlm.testing.random_checkpoint import reference_model, round_parameters

    model = reference_model(preset("internvl3-1b"), seed=0)
    round_parameters(model, "bf16")
    return open_checkpoint(cached_checkpoint("internvl3-1b", "original")), model


def test_full_size_vision_parity_and_int8(full, tmp_path):
    import torch

    from edgevlm.graphs.internvit import build_vision_graph
    from edgevlm.graphs.vision import VisionGraphSpec
    from edgevlm.runtime.vision import OrtVisionEncoder

    ck, model = full
    pixels = np.random.default_rng(0).standard_normal((1, 3, 448, 448)).astype(np.float32)
    with torch.no_grad():
        ref = model.get_image_features(torch.from_numpy(pixels), vision_feature_layer=-1,
                                       vision_feature_select_strategy="default").pooler_output.numpy()  # fmt: skip

    def run(spec):
        path = build_vision_graph(ck.get, ck.config, tmp_path / f"{spec.precision}.onnx", spec)
        return OrtVisionEncoder(path, cache=False).encode(pixels)

    fp32 = run(VisionGraphSpec("fp32", contrib=False))
    assert cosine(fp32, ref).min() >= 0.99999 and np.abs(fp32 - ref).max() <= 1e-3
    int8 = run(VisionGraphSpec("int8"))
    tile = cosine(int8.ravel(), fp32.ravel())
    print(f"int8 vs fp32: tile cosine {tile:.6f}, token min {cosine(int8, fp32).min():.6f}")
    assert tile >= 0.9995  # the README's accuracy figure


def test_full_size_llm_parity_and_w8a8(full, tmp_path):
    import torch

    from edgevlm.embedding import EmbeddingTable, write_embedding
    from edgevlm.graphs.decoder import DecoderGraphSpec, build_decoder_graph
    from edgevlm.runtime.decoder import OrtLanguageModel

    ck, model = full
    ids = np.random.default_rng(5).integers(0, 151000, 96).tolist()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()

    def teacher_forced(precision, quantize):
        folder = tmp_path / precision
        folder.mkdir()
        write_embedding(ck.get("llm.embed.weight"), folder, quantize=quantize)
        path = build_decoder_graph(ck.get, ck.config.text, folder / "llm.onnx", DecoderGraphSpec(precision))
        lm = OrtLanguageModel(path, EmbeddingTable(folder), ck.config.text, max_context=256, cache=False)
        first = lm.prefill(lm.embed(ids[:32]))
        return np.stack([first] + [lm.decode(t) for t in ids[32:-1]])  # logits at positions 31..94

    fp32 = teacher_forced("fp32", False)
    assert cosine(fp32, ref[31:95]).min() >= 0.99999
    w8 = teacher_forced("w8a8", True)
    assert len(w8) == 64

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(fp32.astype(np.float64)), log_softmax(w8.astype(np.float64))
    kl = (np.exp(p) * (p - q)).sum(-1)
    c = cosine(w8, fp32).min()
    print(f"w8a8 vs fp32 over 64 positions: cosine min {c:.5f}, KL mean {kl.mean():.5f} max {kl.max():.5f}")
    assert c >= 0.998 and kl.mean() <= 0.002  # the README's accuracy figures


def test_full_size_conversion_records_what_quantising_cost(full, tmp_path):
    """The figures convert records at the 1B shape, recomputed against transformers itself (the fp32 truth)
    through the runtime's own path: the encoder on the probe tile, and teacher-forced decode steps."""
    import torch

    from edgevlm import measure
    from edgevlm.bundle import open_bundle
    from edgevlm.convert import ConvertOptions, convert
    from edgevlm.embedding import EmbeddingTable
    from edgevlm.engine import load_prompt, tiling_of
    from edgevlm.runtime.decoder import OrtLanguageModel
    from edgevlm.runtime.vision import OrtVisionEncoder

    ck, model = full
    out = tmp_path / "b"
    convert(ck.path, out, ConvertOptions(max_context=1024), log=lambda m: None)
    m = open_bundle(out)
    vision, llm, width = m.parts["vision"].accuracy, m.parts["llm"].accuracy, m.model.text.hidden_size
    tiles = tiling_of(m).capped(1).load(measure.probe_pictures()[0])
    with torch.no_grad():
        ref = model.get_image_features(torch.from_numpy(tiles.pixels), vision_feature_layer=-1,
                                       vision_feature_select_strategy="default").pooler_output.numpy()  # fmt: skip
    got = OrtVisionEncoder(out / "vision.onnx", cache=False).encode(tiles.pixels)
    c = measure.cosines(ref.reshape(-1, width), got.reshape(-1, width))
    assert vision["tokens"] == len(c) and vision["cosine_mean"] == pytest.approx(c.mean(), abs=2e-5)
    lm = OrtLanguageModel(out / "llm.onnx", EmbeddingTable(out), m.model.text, max_context=1024, cache=False)
    ids, spans = measure.conversation(load_prompt(out, m))
    scored = np.concatenate([np.arange(start - 1, end - 1) for start, end in spans])
    with torch.no_grad():
        refs = model(input_ids=torch.tensor([ids])).logits[0].numpy()[scored]
    first = spans[0][0]  # the runtime's path: a prefill to the first answer, then a decode step per token
    ours = np.stack([lm.prefill(lm.embed(ids[:first]), position=0)] + [lm.decode(t) for t in ids[first:-1]])
    kl = measure.kl_divergences(refs, ours[scored - (first - 1)])
    print(f"recorded {llm}, recomputed KL mean {kl.mean():.5f} over {len(kl)}")
    assert llm["tokens"] == len(kl) and llm["kl_mean"] == pytest.approx(kl.mean(), rel=0.05)
    # The worst position moves a little more: one-token decode steps take other int8 kernels than a prefill.
    assert llm["kl_max"] == pytest.approx(kl.max(), rel=0.15) and llm["kl_mean"] < 0.01
