"""`edgevlm bench`: load, vision, prefill, first token, decode and memory of a bundle, per stage.

Each figure is the median, min and max over `runs` runs after one warm-up run. Each run is a fresh
process (so its peak resident memory is that of one load and one answer): it drops the bundle's
files from the page cache (posix_fadvise DONTNEED), loads cold, answers, notes its peak memory,
then measures a warm load and the machine's memory read bandwidth.

Decode reads every weight of the language model once per token, so its ceiling is the read
bandwidth over the weights' bytes. The bandwidth of a shared or virtual machine varies from hour to
hour (22 to 34 GB/s seen on one), so each run measures it beside its decode figure: the fraction of
that ceiling reached is what compares across machines and days.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import models
from .bundle import open_bundle
from .runtime.ort import cache_root, default_threads
from .runtime.sampling import SamplingParams

KEYS = ("load_cold_s", "load_warm_s", "vision_ms_per_tile", "prefill_tok_s", "ttft_ms", "decode_tok_s", "peak_rss_mb")
EXTRA = ("llm_load_cold_s", "llm_load_warm_s", "vision_load_cold_s", "vision_load_warm_s", "vision_ms",
         "prefill_tokens", "prefill_ms", "memory_read_gbs", "decode_ceiling_tok_s", "decode_of_ceiling",
         "json_decode_tok_s", "json_tokens", "video_frames", "video_ms_per_frame", "video_ttft_ms",
         "video_prompt_tokens", "video_peak_rss_mb")  # fmt: skip
# A dozen fields of each kind a dashboard reads: the constrained answer's decode speed is measured with it.
BENCH_SCHEMA = {"type": "object", "additionalProperties": False, "required": [f"field{i}" for i in range(12)],
                "properties": {f"field{i}": [{"type": "string", "maxLength": 16}, {"enum": ["red", "green", "blue"]},
                                             {"type": "integer", "minimum": 0, "maximum": 1000}][i % 3]
                               for i in range(12)}}  # fmt: skip
BANDWIDTH_BYTES = 512 * 2**20  # well past any last-level cache the model's weights could live in
# The board demo's published rows (RK3588 NPU), by model; "-" where its table gives no figure.
BOARD_DEMO = {
    "internvl3-1b": {"ram_gb": 1.3, "llm_cold_s": 6.8, "llm_warm_s": 1.1, "vlm_cold_s": 7.8, "vlm_warm_s": 0.75,
                     "resolution": "448x448 (one padded tile)", "tokens_s": 30},
    **{name: {"ram_gb": "-", "llm_cold_s": "-", "llm_warm_s": "-", "vlm_cold_s": "-", "vlm_warm_s": "-",
              "resolution": "-", "tokens_s": tok_s}
       for name, tok_s in (("smolvlm2-256m", 54), ("smolvlm2-500m", 31), ("smolvlm2-2.2b", 11), ("qwen2-vl-2b", 12.5))},
}  # fmt: skip


@dataclass(frozen=True)
class BenchOptions:
    bundle: Path
    image: Path | None = None
    tiles: int = 1
    prompt_tokens: int = 20
    gen_tokens: int = 64
    runs: int = 3
    threads: int | None = None
    backend: str = "auto"  # auto, cpu or rk3588
    video: Path | None = None  # a clip to ask about too (frames sampled as the model does, at most video_frames)
    video_frames: int | None = None


def drop_page_cache(paths: list[Path]) -> bool:
    """Ask the kernel to forget these files' cached pages; False where that is not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def read_bandwidth_gbs(threads: int, nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Memory read bandwidth with `threads` threads (numpy sums, which release the GIL): the best of a few."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(nbytes // 8, dtype=np.uint64)
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _question(tokenizer_encode: Any, n: int) -> str:
    """A question of exactly n text tokens (' cat' is one token in Qwen2's vocabulary)."""
    text = "Describe" + " cat" * (n - 1)
    while len(tokenizer_encode(text)) > n and text.count(" cat"):
        text = text[: -len(" cat")]
    return text


def _picture(opts: BenchOptions, tile: int) -> Image.Image:
    if opts.image:
        return Image.open(opts.image)
    # A strip of exactly `tiles` tiles of the model's size (plus a thumbnail when more than one).
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (tile, tile * opts.tiles, 3), dtype=np.uint8))


def _timed_load(opts: BenchOptions) -> tuple[Any, float, float, float]:
    from . import load

    start = time.perf_counter()
    model = load(opts.bundle, threads=opts.threads, backend=opts.backend)
    ready = time.perf_counter() - start  # text answers possible; the CPU loads the vision encoder on first image
    model.load_vision()  # now, so that it is not counted in the first image's vision time
    return model, ready, model.load_times["llm"], model.load_times["vision"]


def _bundle_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file()]
    root = cache_root()
    return files + ([p for p in root.rglob("*") if p.is_file()] if root.exists() else [])


def run_once(opts: BenchOptions) -> dict[str, float]:
    """A cold load, one answer, then a warm load: the raw figures of one run (call in a fresh process)."""
    from .engine import Conversation, TurnStats, tiling_of
    from .prompt import Turn
    from .runtime.memory import pin_mmap_threshold

    pin_mmap_threshold()  # as the edgevlm command does: the figures are that process's
    dropped = drop_page_cache(_bundle_files(opts.bundle))
    model, cold, llm_cold, vis_cold = _timed_load(opts)
    question = _question(model.prompt.encode_text, opts.prompt_tokens)
    params = SamplingParams(max_tokens=opts.gen_tokens, stop_ids=(-1,))  # never stops early (on the CPU)
    image = model.encode_image(_picture(opts, tiling_of(model.manifest).tile), max_tiles=opts.tiles)
    s = TurnStats()
    for _ in model.stream(Conversation([Turn(question, (image.tiles.layout,))], [image]), params, s):
        pass
    peak = _rss_peak_mb()
    g = s.generation
    json_figures = _json_decode(model, question, opts)
    weights = model.decode_bytes
    del model, image
    gc.collect()
    model, warm, llm_warm, vis_warm = _timed_load(opts)
    video_figures = _video(model, opts, question, params)  # the warm-loaded model answers about the clip
    del model
    gc.collect()
    gbs = read_bandwidth_gbs(opts.threads or default_threads())  # after the peaks were noted: it takes 512 MB
    out = {
        "load_cold_s": cold, "load_warm_s": warm, "llm_load_cold_s": llm_cold, "llm_load_warm_s": llm_warm,
        "vision_load_cold_s": vis_cold, "vision_load_warm_s": vis_warm, "vision_ms": s.vision_ms,
        "vision_ms_per_tile": s.vision_ms / max(s.tiles, 1), "tiles": s.tiles, "prefill_tokens": g.prompt_tokens,
        "prefill_ms": g.prefill_ms, "prefill_tok_s": g.prefill_tok_s, "ttft_ms": s.ttft_ms,
        "decode_tok_s": g.decode_tok_s, "peak_rss_mb": peak, "page_cache_dropped": float(dropped),
        "memory_read_gbs": gbs,
    }  # fmt: skip
    out.update(json_figures)
    out.update(video_figures)
    if weights:  # the NPU backend's weights are RKLLM's own: no ceiling to give
        out["decode_ceiling_tok_s"] = ceiling = gbs * 1e9 / weights
        out["decode_of_ceiling"] = g.decode_tok_s / ceiling
    return out


def _json_decode(model: Any, question: str, opts: BenchOptions) -> dict[str, float]:
    """Decode speed of an answer constrained to BENCH_SCHEMA (text only: the image is not the point), where
    the backend can constrain and llguidance is installed; nothing otherwise."""
    from .engine import Conversation, TurnStats
    from .prompt import Turn
    from .structured import ResponseFormat, SchemaError, check

    fmt = ResponseFormat(BENCH_SCHEMA)
    try:
        check(fmt)
    except SchemaError:  # no llguidance
        return {}
    if not model.json_answers:
        return {}
    s = TurnStats()
    params = SamplingParams(max_tokens=opts.gen_tokens * 4, response_format=fmt)
    for _ in model.stream(Conversation([Turn(question + " Answer in JSON.", ())], []), params, s):
        pass
    return {"json_decode_tok_s": s.generation.decode_tok_s, "json_tokens": float(s.generation.generated_tokens)}


def _video(model: Any, opts: BenchOptions, question: str, params: SamplingParams) -> dict[str, float]:
    """A question about the clip: frames, vision time per frame, first token and the process's peak memory
    after it (one model loaded at a time). Nothing without a clip."""
    if opts.video is None:
        return {}
    from .engine import Conversation, TurnStats
    from .prompt import Turn
    from .session import video_budget
    from .video import FrameSampling

    budget = video_budget(model.context_length, params.max_tokens)
    video = model.encode_video(opts.video, frames=FrameSampling(opts.video_frames), budget=budget)
    s = TurnStats()
    for _ in model.stream(Conversation([Turn(question, videos=(video.layout,))], videos=[video]), params, s):
        pass
    return {"video_frames": float(s.frames), "video_ms_per_frame": s.frames_ms / max(s.frames_encoded, 1),
            "video_ttft_ms": s.ttft_ms, "video_prompt_tokens": float(s.prompt_tokens),
            "video_peak_rss_mb": _rss_peak_mb()}  # fmt: skip


def _run_in_child(opts: BenchOptions) -> dict[str, float]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_once, (opts,))


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(opts: BenchOptions) -> dict[str, Any]:
    from .accuracy import accuracy_record
    from .doctor import host
    from .engine import tiling_of

    manifest = open_bundle(opts.bundle)
    _run_in_child(opts)  # warm-up: first-time caches (optimised graphs) are built here
    samples = [_run_in_child(opts) for _ in range(opts.runs)]
    result: dict[str, Any] = {k: _summary([s[k] for s in samples]) for k in KEYS + EXTRA if k in samples[0]}
    result.update(
        bundle=str(opts.bundle), llm=manifest.parts["llm"].precision, vision=manifest.parts["vision"].precision,
        tiles=int(samples[0]["tiles"]), tile_px=tiling_of(manifest).tile,
        prompt_tokens=int(samples[0]["prefill_tokens"]), gen_tokens=opts.gen_tokens,
        question_tokens=opts.prompt_tokens, threads=opts.threads or default_threads(), runs=opts.runs,
        page_cache_dropped=bool(samples[0]["page_cache_dropped"]), samples=samples,
        model=models.preset_name(manifest.model), board_demo=BOARD_DEMO.get(models.preset_name(manifest.model) or ""),
        host=asdict(host()),  # speed at the compute-bound stages follows the instruction sets
        accuracy=accuracy_record(manifest),  # what quantising each part cost, as measured at conversion
    )  # fmt: skip
    return result


def format_table(r: dict[str, Any]) -> str:
    def m(key: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(r[key]["median"])

    head = "| | RAM (GB) | LLM cold (s) | LLM warm (s) | VLM cold (s) | VLM warm (s) | resolution | tokens/s |"
    rule = "|---|---|---|---|---|---|---|---|"
    b = r["board_demo"]
    ours = (f"| edgevlm ({r['llm']} + {r['vision']} vision, {r['threads']} threads) | "
            f"{r['peak_rss_mb']['median'] / 1024:.2f} | {m('llm_load_cold_s')} | {m('llm_load_warm_s')} | "
            f"{m('vision_load_cold_s')} | {m('vision_load_warm_s')} | {r['tiles']} x {r['tile_px']} px tiles | "
            f"{m('decode_tok_s', '{:.1f}')} |")  # fmt: skip
    board = [f"| board demo (RK3588 NPU, published, {r['model']}) | {b['ram_gb']} | {b['llm_cold_s']} | "
             f"{b['llm_warm_s']} | {b['vlm_cold_s']} | {b['vlm_warm_s']} | {b['resolution']} | {b['tokens_s']} |"
             ] if b else []  # fmt: skip
    stages = [
        ("load to ready, cold", "load_cold_s", "s"), ("load to ready, warm", "load_warm_s", "s"),
        ("vision encoder load, warm", "vision_load_warm_s", "s"),
        ("vision per tile", "vision_ms_per_tile", "ms"), ("prefill", "prefill_tok_s", "tokens/s"),
        ("time to first token", "ttft_ms", "ms"), ("decode", "decode_tok_s", "tokens/s"),
        *([("decode, answer constrained to a 12-field JSON schema", "json_decode_tok_s", "tokens/s")]
          if "json_decode_tok_s" in r else []),
        ("peak resident memory", "peak_rss_mb", "MB"),
        *([("video: frames taken", "video_frames", ""), ("video: vision per frame", "video_ms_per_frame", "ms"),
           ("video: prompt", "video_prompt_tokens", "tokens"), ("video: time to first token", "video_ttft_ms", "ms"),
           ("video: peak resident memory", "video_peak_rss_mb", "MB")] if "video_frames" in r else []),
    ]  # fmt: skip
    rows = [
        f"| {name} | {r[k]['median']:.2f} {unit} | {r[k]['min']:.2f} | {r[k]['max']:.2f} |" for name, k, unit in stages
    ]
    footer = (f"prompt {r['prompt_tokens']} tokens ({r['question_tokens']}-token question + {r['tiles']} tile(s)), "
              f"{r['gen_tokens']} generated, {r['runs']} runs after a warm-up")  # fmt: skip
    if "decode_ceiling_tok_s" in r:
        footer += (f"\nmemory read {m('memory_read_gbs', '{:.1f}')} GB/s: decode ceiling "
                   f"{m('decode_ceiling_tok_s', '{:.1f}')} tokens/s, "
                   f"{m('decode_of_ceiling', '{:.0%}')} of it reached")  # fmt: skip
    if not r["page_cache_dropped"]:
        footer += "\nnote: the page cache could not be dropped; cold = warm here."
    if "host" in r:
        from .doctor import describe_host

        footer += f"\nhost: {describe_host(r['host'])}"
    stage_head = ["| stage | median | min | max |", "|---|---|---|---|"]
    return "\n".join([head, rule, ours, *board, "", *stage_head, *rows, "", footer])


def run_bench(opts: BenchOptions, json_path: Path | None) -> int:
    result = bench(opts)
    print(format_table(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
