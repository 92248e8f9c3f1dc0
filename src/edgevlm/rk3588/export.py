"""`edgevlm export-rk3588`: the NPU artifacts of a bundle, checked before they reach a board.

Vision: the fp32 graph in its NPU form (one static tile, standard ONNX ops, opset 17) is turned
into an fp16 `.rknn` by rknn-toolkit2 with the model's mean/std baked in, so the board feeds uint8
NHWC pixels. The same build runs in Rockchip's x86 simulator on a test tile and must match ONNX
Runtime fp32 with cosine >= 0.999, or nothing is recorded.

LLM: `.rkllm` files come from Rockchip's rkllm-toolkit (not on any registry reachable here). When
it is importable the conversion runs; otherwise a ready recipe is written beside the bundle, with
its calibration prompts (the model's chat template) and rkllm-toolkit's context limits checked first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..accuracy import VisionAccuracy
from ..atomic import write_text_atomic
from ..bundle import Manifest, Part, open_bundle, write_manifest
from ..checkpoint import open_checkpoint
from ..convert import ConvertError, ConvertOptions, convert, resolve_source
from ..engine import load_prompt
from ..graphs.vision import VisionGraphSpec
from ..image import normalize
from ..models.npu import NpuVision
from ..prompt import PromptEncoder, Turn
from ..runtime.vision import OrtVisionEncoder

TARGETS = ("rk3588", "rk3576", "rk3562")
MIN_COSINE = 0.999
RKNN_FILE = "vision.{target}.rknn"
RECIPE_FILE = "llm_rkllm_recipe.py"
CALIBRATION_FILE = "llm_rkllm_calibration.json"
MAX_RKLLM_CONTEXT = 16384  # rkllm-toolkit 1.3.0's limit; its max_context is also a multiple of 32
# Calibration prompts for the w8a8 activation ranges: the questions users ask, in the model's template.
CALIBRATION_QUESTIONS = (
    "Describe the image.", "What do I need to make this?", "What is written on the sign?",
    "How many people are in the picture, and what are they doing?", "这张图片中有什么？",
    "Explain, step by step, how a bicycle gear works.", "Write a short poem about the sea.",
    "What is the capital of France, and why is it famous?",
)  # fmt: skip


class ExportError(ValueError):
    """The NPU export cannot be made or did not pass its check."""


def rknn_python() -> Path:
    """The interpreter of the rknn-toolkit2 environment."""
    env = os.environ.get("EDGEVLM_RKNN_PYTHON")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / ".venv-rknn" / "bin" / "python")
    for c in candidates:
        if c.exists():
            return c
    raise ExportError("rknn-toolkit2 is not set up: run scripts/setup-rknn (or set EDGEVLM_RKNN_PYTHON to the "
                      "python of an environment with rknn-toolkit2 2.5.0)")  # fmt: skip


def probe_tile(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 [size,size,3] tile with structure (gradients) and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / (size - 1), y * 255 / (size - 1), (x + y) * 255 / (2 * size - 2)], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _source_checkpoint(src: str | Path) -> Path:
    path = Path(src)
    if (path / "manifest.json").exists():  # a bundle: go back to the checkpoint it was made from
        origin = Path(open_bundle(path).source.get("path", ""))
        if not (origin / "config.json").exists():
            raise ExportError(f"{src} is a bundle whose source checkpoint ({origin}) is not here; pass the checkpoint")
        return origin
    return resolve_source(src)


def export_vision(ck_dir: Path, out: Path, target: str, log: Callable[[str], None]) -> dict:
    """Build, simulate and check the vision .rknn; returns the check's figures."""
    ck = open_checkpoint(ck_dir)
    with tempfile.TemporaryDirectory(prefix="edgevlm-rknn-") as tmp:
        work = Path(tmp)
        cfg, form = ck.config, ck.family.npu_vision(ck.config)
        onnx_path = ck.family.build_vision_graph(ck.get, cfg, work / "vision_npu.onnx",
                                                 VisionGraphSpec("fp32", batch=form.batch, contrib=False))  # fmt: skip
        target_file = out / RKNN_FILE.format(target=target)
        cmd = [str(rknn_python()), str(Path(__file__).with_name("rknn_build.py")), "--onnx", str(onnx_path),
               "--out", str(work / target_file.name), "--target", target, "--ref", str(work / "ref.npy"),
               *_probe(form, ck.family, cfg, onnx_path, work)]  # fmt: skip
        log(f"building {target_file.name} with rknn-toolkit2 and checking it in the simulator ...")
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=work)  # the toolkit litters its cwd
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
        if run.returncode != 0 or not lines:
            tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
            raise ExportError("rknn-toolkit2 failed: " + " | ".join(tail))
        check = json.loads(lines[-1])
        if check["cosine"] < MIN_COSINE:
            raise ExportError(f"simulated {target} vision encoder differs from ONNX Runtime fp32: cosine "
                              f"{check['cosine']:.6f} < {MIN_COSINE}")  # fmt: skip
        os.replace(work / target_file.name, target_file)
    log(f"{target_file.name}: simulator vs ONNX Runtime fp32 cosine {check['cosine']:.6f} "
        f"(worst token {check['token_cosine_min']:.6f}), build {check['build_s']:.0f} s")  # fmt: skip
    return check


def _probe(form: NpuVision, family: Any, cfg: Any, onnx_path: Path, work: Path) -> list[str]:
    """Write a probe picture's inputs and ONNX Runtime's fp32 features of it (ref.npy) into `work`; the
    arguments that hand them to rknn_build.py."""
    from PIL import Image

    picture = probe_tile(form.side)
    if form.tiles is None:  # a uint8 image, the model's mean/std folded into the .rknn
        norm = (cfg.image_mean, cfg.image_std)
        ref = OrtVisionEncoder(onnx_path, cache=False).encode(normalize(Image.fromarray(picture), norm)[None])[0]
        np.save(work / "tile.npy", picture)
        np.save(work / "ref.npy", ref)
        return ["--tile", str(work / "tile.npy"), "--mean", ",".join(map(str, norm[0])),
                "--std", ",".join(map(str, norm[1]))]  # fmt: skip
    (feeds,) = family.vision_inputs(cfg, form.tiles(Image.fromarray(picture)))
    np.save(work / "ref.npy", OrtVisionEncoder(onnx_path, cache=False).run(feeds))
    np.savez(work / "feeds.npz", *feeds.values())  # in the graph's input order
    return ["--feeds", str(work / "feeds.npz")]


RECIPE = '''"""Convert the {label} language model to .rkllm for {target} (w8a8) with Rockchip's rkllm-toolkit.

Run on an x86_64 Linux machine with rkllm-toolkit 1.3.0 installed (from Rockchip's rknn-llm
releases), then copy the .rkllm into the bundle folder and run `edgevlm export-rk3588` again
(or just put it there: the board backend looks for {out_name}). At run time the board backend
gives RKLLM this model's image tags: start {start!r}, end {end!r}, content {content!r}.

    python {recipe}
"""

from rkllm.api import RKLLM

import json
import os

calibration = os.path.join(os.path.dirname(os.path.abspath(__file__)), {calibration!r})
assert json.load(open(calibration, encoding="utf-8")), "no calibration prompts in " + calibration
assert {context} % 32 == 0 and {context} <= {max_context}, "max_context must be a multiple of 32, at most {max_context}"
llm = RKLLM()
assert llm.load_huggingface(model={checkpoint!r}, device="cpu") == 0, "load failed"
assert llm.build(do_quantization=True, optimization_level=1, quantized_dtype="w8a8", quantized_algorithm="normal",
                 target_platform={target!r}, num_npu_core=3, max_context={context},
                 dataset=calibration) == 0, "build failed"
assert llm.export_rkllm({out!r}) == 0, "export failed"
print("wrote", {out!r})
'''


def check_context(context: int) -> None:
    """rkllm-toolkit's limits on max_context, checked before anything runs."""
    if context % 32 or not 32 <= context <= MAX_RKLLM_CONTEXT:
        raise ExportError(f"the bundle's context of {context} tokens cannot be built by rkllm-toolkit: it needs a "
                          f"multiple of 32 from 32 to {MAX_RKLLM_CONTEXT} (convert with --context)")  # fmt: skip


def calibration_prompts(encoder: PromptEncoder) -> list[dict[str, str]]:
    """rkllm-toolkit's calibration dataset: each question rendered in the model's chat template."""
    rendered = ("".join(str(text) for _, text in encoder.render([Turn(q)], None).items) for q in CALIBRATION_QUESTIONS)
    return [{"input": text, "target": ""} for text in rendered]


def export_llm(ck_dir: Path, out: Path, target: str, manifest: Manifest, log: Callable[[str], None]) -> Path | None:
    """Run rkllm-toolkit when importable; otherwise write its recipe (and its calibration prompts). Returns
    the .rkllm if made (export_rk3588 has checked the context)."""
    rkllm_out = out / f"llm.{target}.rkllm"
    recipe = out / RECIPE_FILE
    encoder = load_prompt(out, manifest)
    write_text_atomic(out / CALIBRATION_FILE, json.dumps(calibration_prompts(encoder), ensure_ascii=False, indent=1))
    # rkllm-toolkit loads the language model part of a vision-language checkpoint itself.
    fmt, cfg = encoder.format, manifest.model
    text = RECIPE.format(target=target, checkpoint=str(ck_dir.resolve()), context=manifest.context_length,
                         label=cfg.label, out=str(rkllm_out.resolve()), out_name=rkllm_out.name, recipe=recipe.name,
                         calibration=CALIBRATION_FILE, max_context=MAX_RKLLM_CONTEXT, start=fmt.image_start,
                         end=fmt.image_end, content=fmt.image_token)  # fmt: skip
    write_text_atomic(recipe, text)
    try:
        import rkllm.api  # noqa: F401
    except ImportError:
        log(f"rkllm-toolkit is not installed here: wrote {recipe}; run it with `python {recipe.name}` on an "
            "x86_64 Linux machine that has rkllm-toolkit 1.3.0")  # fmt: skip
        return None
    subprocess.run([sys.executable, str(recipe)], check=True)
    return rkllm_out


def export_rk3588(src: str | Path, out: str | Path, *, target: str = "rk3588",
                  log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:  # fmt: skip
    """Add the NPU artifacts for `target` to the bundle `out` (converting `src` into it first if needed)."""
    if target not in TARGETS:
        raise ExportError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    out = Path(out)
    ck_dir = _source_checkpoint(src)
    family = models.family(models.load_config(ck_dir).family)
    if "export-rk3588" in family.NOT_YET:
        raise ExportError(family.NOT_YET["export-rk3588"])
    if not (out / "manifest.json").exists():
        if out.exists() and any(out.iterdir()):
            raise ConvertError(f"{out} exists and is not a bundle")
        convert(ck_dir, out, ConvertOptions(force=out.exists()), log=log)
    manifest = open_bundle(out)
    check_context(manifest.context_length)  # before the long vision build
    check = export_vision(ck_dir, out, target, log)
    rkllm_file = export_llm(ck_dir, out, target, manifest, log)
    parts, form = dict(manifest.parts), models.family(manifest.model.family).npu_vision(manifest.model)
    simulated = VisionAccuracy(check["token_cosine_mean"], check["token_cosine_min"], check["tokens"],
                               "rknn-toolkit2's simulator against ONNX Runtime fp32, one probe tile")  # fmt: skip
    parts[f"vision_{target}"] = Part(RKNN_FILE.format(target=target), "fp16", {
        "target": target, "input": form.description, "simulator_cosine": round(check["cosine"], 7),
    }, asdict(simulated))  # fmt: skip
    if rkllm_file and rkllm_file.exists():
        parts[f"llm_{target}"] = Part(rkllm_file.name, "w8a8", {"target": target, "runtime": "rkllm 1.3.0"})
    write_manifest(out, replace(manifest, parts=parts))
    return out
