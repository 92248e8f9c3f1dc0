"""Build a .rknn from the NPU form of the vision graph, then check it in Rockchip's simulator.

Runs inside the rknn-toolkit2 environment (scripts/setup-rknn), which has its own old numpy and
onnx, so it imports nothing from edgevlm: `python rknn_build.py --onnx ... --out ...`. The
simulator can only run a model built in the same process, so build and check happen together.
Prints one JSON line: {"cosine", "token_cosine_min", "token_cosine_mean", "tokens", "build_s", "simulate_s",
"rss_mb"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

Norm = tuple[list[float], list[float]]  # the model's per-channel mean and std, 0..1: baked into the .rknn


def _encode_with_backend(rknn: object, pixels: np.ndarray, ref: np.ndarray, norm: Norm) -> np.ndarray:
    """Run tiles through edgevlm's board backend class with the simulator as its runtime."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # src/, for edgevlm (numpy-only here)
    from edgevlm.rk3588.rknn_lite import RknnVisionEncoder

    return RknnVisionEncoder(rknn, ref.shape[-2], ref.shape[-1], norm=norm).encode(pixels)  # type: ignore[arg-type]


def _build(rknn: Any, onnx_path: str, out: str, **config: Any) -> float:
    """Configure, load, build (fp16) and export the .rknn, then start the x86 simulator on it (the
    simulator only runs a model built in the same process); the time the export ended."""
    rknn.config(**config)
    for step, ret in (("load_onnx", lambda: rknn.load_onnx(model=onnx_path)),
                      ("build", lambda: rknn.build(do_quantization=False)),
                      ("export_rknn", lambda: rknn.export_rknn(out))):  # fmt: skip
        if ret() != 0:
            raise RuntimeError(f"rknn {step} failed")
    built = time.time()
    if rknn.init_runtime() != 0:  # no target: the simulator
        raise RuntimeError("rknn init_runtime (simulator) failed")
    return built


def build_and_check(onnx_path: str, out: str, target: str, tile: np.ndarray, ref: np.ndarray, norm: Norm,
                    pixels: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:  # fmt: skip
    from rknn.api import RKNN

    rknn = RKNN(verbose=False)
    mean, std = ([v * 255 for v in values] for values in norm)  # the toolkit takes 0..255
    try:
        start = time.time()
        built = _build(rknn, onnx_path, out, mean_values=[mean], std_values=[std], target_platform=target)
        got = np.asarray(rknn.inference(inputs=[tile[None]], data_format="nhwc")[0], dtype=np.float32)
        simulated = time.time()
        features = _encode_with_backend(rknn, pixels, ref, norm) if pixels is not None else None
    finally:
        rknn.release()
    return _figures(got.reshape(ref.shape), ref.astype(np.float32), built - start, simulated - built), features


def build_and_check_feeds(onnx_path: str, out: str, target: str, feeds: list[np.ndarray], ref: np.ndarray) -> dict:
    """The same for a graph whose inputs are not an image (patches, rotary tables): float inputs as they
    are, no mean/std folded in."""
    from rknn.api import RKNN

    rknn = RKNN(verbose=False)
    try:
        start = time.time()
        built = _build(rknn, onnx_path, out, target_platform=target)
        got = np.asarray(rknn.inference(inputs=feeds)[0], dtype=np.float32)
        simulated = time.time()
    finally:
        rknn.release()
    return _figures(got.reshape(ref.shape), ref.astype(np.float32), built - start, simulated - built)


def _figures(got: np.ndarray, ref: np.ndarray, build_s: float, simulate_s: float) -> dict:
    per_token = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
    cosine = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref) + 1e-12))
    return {"cosine": cosine, "token_cosine_min": float(per_token.min()), "token_cosine_mean": float(per_token.mean()),
            "tokens": int(per_token.size), "build_s": build_s,
            "simulate_s": simulate_s, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--onnx", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--target", default="rk3588")
    p.add_argument("--tile", help="uint8 [T,T,3] .npy test tile (an image graph)")
    p.add_argument("--feeds", help="the graph's inputs in order (.npz of arr_0, arr_1, ...), for a graph that "
                                   "takes no image")  # fmt: skip
    p.add_argument("--ref", required=True, help="ONNX Runtime fp32 features of that tile (.npy)")
    p.add_argument("--mean", default="0.485,0.456,0.406", help="the model's mean per channel, 0..1 (ImageNet's)")
    p.add_argument("--std", default="0.229,0.224,0.225", help="the model's std per channel, 0..1")
    p.add_argument("--pixels", help="normalised tiles [N,3,T,T] (.npy) to run through the board backend class")
    p.add_argument("--features-out", help="where to save those tiles' features (.npy)")
    args = p.parse_args()
    if args.feeds:
        with np.load(args.feeds) as npz:
            feeds = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        print(json.dumps(build_and_check_feeds(args.onnx, args.out, args.target, feeds, np.load(args.ref))))
        return 0
    pixels = np.load(args.pixels) if args.pixels else None
    norm = ([float(v) for v in args.mean.split(",")], [float(v) for v in args.std.split(",")])
    result, features = build_and_check(args.onnx, args.out, args.target, np.load(args.tile), np.load(args.ref), norm,
                                       pixels)  # fmt: skip
    if features is not None:
        np.save(args.features_out, features)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
