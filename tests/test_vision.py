import dataclasses

import numpy as np
import onnx
import pytest
import torch

from edgevlm.checkpoint import open_checkpoint
from edgevlm.graphs.internvit import build_vision_graph
from edgevlm.graphs.vision import VisionGraphSpec
from edgevlm.runtime import ort as ort_mod
from edgevlm.runtime.vision import OrtVisionEncoder
from helpers import cosine


def reference_features(model, pixels, layer=-1):
    with torch.no_grad():
        out = model.get_image_features(
            torch.from_numpy(pixels), vision_feature_layer=layer, vision_feature_select_strategy="default"
        )
    return out.pooler_output.numpy()


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).standard_normal((3, 3, 448, 448)).astype(np.float32)


@pytest.fixture(scope="module")
def ref_features(tiny_ref, pixels):
    return reference_features(tiny_ref, pixels)


def encode(ckpt, tmp_path, spec, pixels, cfg=None, **kw):
    ck = open_checkpoint(ckpt)
    path = build_vision_graph(ck.get, cfg or ck.config, tmp_path / f"v_{spec.precision}_{spec.contrib}.onnx", spec)
    return OrtVisionEncoder(path, cache=False, **kw).encode(pixels), path


@pytest.mark.parametrize(
    "spec", [VisionGraphSpec("fp32", contrib=False), VisionGraphSpec("fp32"), VisionGraphSpec("fp16", contrib=False)]
)
@pytest.mark.parametrize("naming", ["original", "hf"])
def test_fp_graphs_match_transformers(tiny_ckpt, tmp_path, pixels, ref_features, spec, naming):
    out, _ = encode(tiny_ckpt[naming], tmp_path, spec, pixels)
    assert out.shape == ref_features.shape == (3, 256, 64)
    assert cosine(out, ref_features).min() >= 0.99999
    assert np.abs(out - ref_features).max() <= 1e-3


def test_int8_graph_is_close_to_fp32(tiny_ckpt, tmp_path, pixels, ref_features):
    out, _ = encode(tiny_ckpt["hf"], tmp_path, VisionGraphSpec("int8"), pixels)
    per_tile = [cosine(o.ravel(), r.ravel()) for o, r in zip(out, ref_features, strict=True)]
    assert min(per_tile) >= 0.999
    assert cosine(out, ref_features).min() >= 0.99


def test_select_layer_minus_two(tiny_ckpt, tiny_ref, tmp_path, pixels):
    ck = open_checkpoint(tiny_ckpt["original"])
    cfg = dataclasses.replace(ck.config, vision=dataclasses.replace(ck.config.vision, select_layer=-2))
    out, _ = encode(tiny_ckpt["original"], tmp_path, VisionGraphSpec("fp32", contrib=False), pixels[:1], cfg=cfg)
    ref = reference_features(tiny_ref, pixels[:1], layer=-2)
    assert cosine(out, ref).min() >= 0.99999


def test_npu_form_is_standard_ops_static_single_tile(tiny_ckpt, tmp_path, pixels, ref_features):
    spec = VisionGraphSpec("fp32", batch=1, contrib=False)
    out, path = encode(tiny_ckpt["hf"], tmp_path, spec, pixels)  # three tiles, run one by one
    assert cosine(out, ref_features).min() >= 0.99999
    model = onnx.load(path, load_external_data=False)
    assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version == 17
    assert {n.domain for n in model.graph.node} == {""}
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 448, 448]
    onnx.checker.check_model(str(path))
    names = {n.name for n in model.graph.node}
    assert "/vision/layers.1/attn/qkv/MatMul" in names and "/projector/fc2/MatMul" in names


def test_batching_and_cached_session(tiny_ckpt, tmp_path, pixels, monkeypatch):
    monkeypatch.setenv("EDGEVLM_CACHE", str(tmp_path / "cache"))
    ck = open_checkpoint(tiny_ckpt["hf"])
    path = build_vision_graph(ck.get, ck.config, tmp_path / "v.onnx", VisionGraphSpec("fp32"))
    one = OrtVisionEncoder(path, batch=1).encode(pixels)
    cached = list(ort_mod.cache_root().glob("*/model.onnx"))
    assert len(cached) == 1 and (cached[0].parent / "model.onnx.data").exists()
    again = OrtVisionEncoder(path, batch=2).encode(pixels)  # from the cached optimised graph
    np.testing.assert_allclose(again, one, rtol=0, atol=1e-5)
    assert len(list(ort_mod.cache_root().glob("*/model.onnx"))) == 1
    with pytest.raises(ValueError, match="expected tiles"):
        OrtVisionEncoder(path).encode(pixels[:, :, :100])


def test_bad_spec():
    with pytest.raises(ValueError, match="precision"):
        VisionGraphSpec("int4")
    with pytest.raises(ValueError, match="contrib"):
        VisionGraphSpec("int8", contrib=False)
