"""RK3588 vision export, checked in rknn-toolkit2's simulator (needs .venv-rknn: scripts/setup-rknn)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevlm.accuracy import report
from edgevlm.bundle import open_bundle
from edgevlm.checkpoint import open_checkpoint
from edgevlm.graphs.internvit import build_vision_graph
from edgevlm.graphs.vision import VisionGraphSpec
from edgevlm.rk3588 import export
from edgevlm.rk3588.rknn_lite import to_uint8_nhwc
from edgevlm.runtime.vision import OrtVisionEncoder
from helpers import cosine

pytestmark = pytest.mark.rknn


@pytest.fixture(scope="module")
def rknn_python():
    try:
        return export.rknn_python()
    except export.ExportError as e:
        pytest.skip(f"rknn-toolkit2 environment missing: {e}")


def test_export_tiny_checks_in_the_simulator(rknn_python, tiny_ckpt, tmp_path):
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-m", "edgevlm", "export-rk3588", str(tiny_ckpt["hf"]), str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "simulator vs ONNX Runtime fp32 cosine" in r.stderr
    manifest = open_bundle(out, hashes=True)
    part = manifest.parts["vision_rk3588"]
    assert part.file == "vision.rk3588.rknn" and part.precision == "fp16"
    assert part.extra["simulator_cosine"] >= 0.999 and (out / part.file).stat().st_size > 0
    # The simulator's figures are recorded beside the CPU parts' and shown by verify.
    assert part.accuracy["cosine_worst"] >= 0.99 and part.accuracy["cosine_mean"] >= part.accuracy["cosine_worst"]
    assert part.accuracy["tokens"] > 0 and "simulator" in part.accuracy["inputs"]
    assert manifest.parts["vision"].accuracy["cosine_mean"] > 0.99  # the CPU int8 encoder's, from the conversion
    assert any(line.startswith("vision_rk3588 (fp16): cosine to fp32") for line in report(open_bundle(out).parts))
    assert (out / export.RECIPE_FILE).exists() and "w8a8" in (out / export.RECIPE_FILE).read_text()


def test_board_backend_class_through_the_simulator(rknn_python, tiny_ckpt, tmp_path):
    ck = open_checkpoint(tiny_ckpt["original"])
    onnx_path = build_vision_graph(ck.get, ck.config, tmp_path / "npu.onnx", VisionGraphSpec("fp32", 1, False))
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, (2, 448, 448, 3), dtype=np.uint8)
    pixels = ((raw / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(0, 3, 1, 2).astype(np.float32)
    assert np.array_equal(to_uint8_nhwc(pixels), raw)  # the backend recovers the exact 8-bit tiles
    ref = OrtVisionEncoder(onnx_path, cache=False).encode(pixels)
    np.save(tmp_path / "tile.npy", raw[0])
    np.save(tmp_path / "ref.npy", ref[0])
    np.save(tmp_path / "pixels.npy", pixels)
    script = Path(export.__file__).with_name("rknn_build.py")
    r = subprocess.run([str(rknn_python), str(script), "--onnx", str(onnx_path), "--out", str(tmp_path / "v.rknn"),
                        "--tile", str(tmp_path / "tile.npy"), "--ref", str(tmp_path / "ref.npy"),
                        "--pixels", str(tmp_path / "pixels.npy"), "--features-out", str(tmp_path / "feat.npy")],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["cosine"] >= 0.999
    got = np.load(tmp_path / "feat.npy")
    assert got.shape == ref.shape == (2, 256, 64)
    assert min(cosine(g.ravel(), f.ravel()) for g, f in zip(got, ref, strict=True)) >= 0.999


def test_bad_target_and_missing_toolkit(tiny_ckpt, tmp_path, monkeypatch):
    with pytest.raises(export.ExportError, match="--target"):
        export.export_rk3588(tiny_ckpt["hf"], tmp_path / "x", target="rk9999")
    monkeypatch.setenv("EDGEVLM_RKNN_PYTHON", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setattr(export, "__file__", str(tmp_path / "a" / "b" / "c" / "export.py"))
    with pytest.raises(export.ExportError, match="scripts/setup-rknn"):
        export.rknn_python()


@pytest.mark.slow
def test_full_size_export(rknn_python, tmp_path):
    from edgevlm.testing.random_checkpoint import cached_checkpoint

    out = tmp_path / "full"
    export.export_rk3588(cached_checkpoint("internvl3-1b", "original"), out)
    assert open_bundle(out).parts["vision_rk3588"].extra["simulator_cosine"] >= 0.999


def test_smolvlm2_export_checks_in_the_simulator(rknn_python, smol_ckpt, tmp_path):
    """SigLIP's NPU form (tanh GELU from standard ops) with SmolVLM's mean/std (0.5) baked in."""
    out = tmp_path / "smol"
    export.export_rk3588(smol_ckpt, out, log=lambda m: None)
    part = open_bundle(out, hashes=True).parts["vision_rk3588"]
    assert part.extra["simulator_cosine"] >= 0.999 and part.accuracy["cosine_worst"] >= 0.99
    recipe = (out / export.RECIPE_FILE).read_text()
    assert "smolvlm2 language model" in recipe and "<fake_token_around_image><global-img>" in recipe


def test_qwen2_vl_export_checks_its_static_392_form_in_the_simulator(rknn_python, tmp_path):
    """Qwen2-VL's vision encoder in its NPU form: 392 x 392 (784 patches, 196 tokens), standard ops, the
    rotary tables fed in as float inputs; the simulator matches ONNX Runtime fp32."""
    from edgevlm.models import preset, qwen2_vl
    from edgevlm.testing import qwen2vl as q
    from helpers import picture

    cfg = preset("qwen2-vl-tiny")
    ckpt = tmp_path / "ckpt"
    q.save_checkpoint(q.reference_model(cfg), cfg, ckpt)
    (feeds,) = qwen2_vl.vision_inputs(cfg, qwen2_vl.npu_tiles(cfg, picture(500, 300, 2)))
    assert feeds["pixel_values"].shape == (784, 1176) and feeds["rope_cos"].shape == (784, 8)
    export.export_rk3588(ckpt, tmp_path / "bundle", log=lambda m: None)
    part = open_bundle(tmp_path / "bundle", hashes=True).parts["vision_rk3588"]
    print(f"Qwen2-VL 392 px NPU form, simulator vs ONNX Runtime fp32: {part.extra}")
    assert part.extra["simulator_cosine"] >= 0.999 and part.accuracy["cosine_worst"] >= 0.99
    assert "float inputs" in part.extra["input"] and "392x392 image (784 rows)" in part.extra["input"]

