"""Measuring what quantisation cost: each quantised part of a new bundle run beside its fp32 form, at conversion.

Random test weights have no activation outliers; a user's real checkpoint may, so the converter, which
holds the fp32 weights anyway, measures on built-in inputs and records the figures in the manifest:
  vision:  cosine of the image features, mean and worst token, on pictures drawn here (one tile each);
  llm:     KL(fp32 || quantised) and cosine of the logits at every answer position of a conversation of
           a few short English and Chinese exchanges in the family's template, and top-1 agreement of
           the greedy next token there (the quantised run uses the bundle's own int8 embedding table).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .accuracy import LlmAccuracy, VisionAccuracy, warnings
from .config import TextConfig
from .embedding import EmbeddingTable
from .engine import common_prefix
from .graphs.builder import InMemory
from .graphs.decoder import DecoderGraphSpec, build_decoder_graph, every_position
from .graphs.vision import VisionGraphSpec
from .prompt import PromptEncoder, Turn
from .runtime.memory import memory_mb
from .runtime.ort import WeightsFed, create_session, session_from_proto
from .runtime.rope import rope_angles

REFERENCE_COPIES = 1.5  # an fp32 reference's peak over its weights' size while it runs (measured 1.4 at 1B)
# Photo-like 4:3 scenes (width, height, sun); each becomes one tile of the family's own size (Qwen2-VL, which
# takes an image whole: 300 tokens for the first).
PICTURES = ((560, 420, (400, 90)), (640, 480, (120, 70)))
EXCHANGES = (  # (question, answer): the answer's positions are scored
    ("Describe the image.", "A red bicycle leans against a brick wall next to a blue door in the afternoon sun."),
    ("What do I need to make this?", "You need flour, two eggs, a cup of milk, a pinch of salt and some butter."),
    ("请描述这张图片。", "图片里有一只橘色的猫坐在窗台上，窗外是下着雨的街道。"),
    ("这是在哪里拍的？", "这是在一个热闹的市场里拍的，人们正在买新鲜的水果和蔬菜。"),
)


def probe_pictures(count: int = 1) -> list[Image.Image]:
    """Natural-looking scenes (sky, sun, hills, a house, a tree, texture), the same every time. One by
    default: an fp32 tile of the 1B model's encoder takes about 2 s on a 2-core VNNI host, the int8 one 0.8 s."""
    rng = np.random.default_rng(0)
    pictures = []
    for width, height, sun in PICTURES[:count]:
        sky = np.linspace([90, 150, 230], [200, 225, 250], height)[:, None, :].repeat(width, 1)
        img = Image.fromarray(sky.astype(np.uint8))
        d = ImageDraw.Draw(img)
        d.ellipse([sun[0] - 40, sun[1] - 40, sun[0] + 40, sun[1] + 40], fill=(255, 220, 90))
        d.polygon([(0, 300), (width * 0.4, 220), (width * 0.8, 290), (width, 250), (width, height), (0, height)],
                  fill=(70, 140, 60))  # fmt: skip
        d.rectangle([width * 0.3, 260, width * 0.55, 380], fill=(180, 60, 50))
        d.polygon([(width * 0.27, 262), (width * 0.425, 190), (width * 0.58, 262)], fill=(90, 50, 40))
        d.rectangle([width * 0.4, 320, width * 0.45, 380], fill=(60, 60, 140))
        d.rectangle([width * 0.75, 250, width * 0.78, 360], fill=(100, 70, 40))
        d.ellipse([width * 0.68, 180, width * 0.85, 280], fill=(40, 110, 40))
        grain = rng.normal(0, 12, (height, width, 3))
        noisy = np.clip(np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float64) + grain, 0, 255)
        pictures.append(Image.fromarray(noisy.astype(np.uint8)))
    return pictures


ROWS_AT_ONCE = 8  # float64 work on a few rows at a time: 151k-wide temporaries stay small and re-used


def _by_rows(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """f applied to a few rows of both arrays at a time (fresh memory costs more than the arithmetic: the
    logits' float64 copies at once took 0.95 s in a new process, by rows 0.13 s)."""
    @functools.wraps(f)
    def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([f(a[i : i + ROWS_AT_ONCE], b[i : i + ROWS_AT_ONCE])
                               for i in range(0, len(a), ROWS_AT_ONCE)] or [np.zeros(0)])  # fmt: skip

    return rows


@_by_rows
def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of a and b ([N, D])."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


@_by_rows
def kl_divergences(reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(logits)) of each row ([N, V])."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p_log, q_log = log_softmax(reference), log_softmax(logits)
    return (np.exp(p_log) * (p_log - q_log)).sum(-1)


def measure_vision(family: Any, cfg: Any, quantised: Path, reference: InMemory) -> VisionAccuracy:
    """Cosine of the quantised vision graph's features to the fp32 graph's, on the probe pictures."""
    tiling = family.tiling(cfg, cfg.min_tiles, cfg.max_tiles).capped(1)
    feeds = [f for p in probe_pictures() for f in family.vision_inputs(cfg, tiling.load(p))]
    runs = []
    for load in (lambda: WeightsFed(reference), lambda: create_session(quantised, cache=False)):
        session = load()
        runs.append(np.concatenate([session.run(["image_features"], f)[0].reshape(-1, cfg.text.hidden_size)
                                    for f in feeds]))  # fmt: skip
        del session
    c = cosines(*runs)
    what = f"{len(feeds)} drawn picture{'s' if len(feeds) > 1 else ''}, one tile each"
    return VisionAccuracy(float(c.mean()), float(c.min()), len(c), what)


def conversation(prompt: PromptEncoder) -> tuple[list[int], list[tuple[int, int]]]:
    """The built-in exchanges as one conversation in the family's template: its ids, and where each answer
    (with the template's end of turn) starts and ends. One prefill scores them all, later turns with the
    earlier ones in their context as in a chat."""
    answered = [Turn(q, (), answer=a) for q, a in EXCHANGES]
    ids = prompt.encode(answered)

    def reach(part: list[int]) -> int:  # how far `part` is the conversation's own prefix
        return min(len(part), common_prefix(ids, part))

    spans = [(reach(prompt.encode([*answered[:k], Turn(q, ())])), reach(prompt.encode(answered[: k + 1])))
             for k, (q, _) in enumerate(EXCHANGES)]  # fmt: skip
    return ids, spans


def every_output(session: Any, t: TextConfig, embeds: np.ndarray, name: str = "logits") -> np.ndarray:
    """Output `name` ([S,V] logits, or [S,D] hidden states of a graph without its head) at every position of
    one prefill from an empty cache (the graph of `every_position`)."""
    n = len(embeds)
    angles = rope_angles(t, np.arange(n))
    feeds = {"inputs_embeds": embeds[None].astype(np.float32), "position_ids": np.arange(n, dtype=np.int64)[None],
             "seqlens_k": np.array([n - 1], dtype=np.int32), "total_sequence_length": np.array(n, dtype=np.int32),
             "rope_cos": np.cos(angles).astype(np.float32), "rope_sin": np.sin(angles).astype(np.float32)}  # fmt: skip
    empty = np.zeros((1, t.num_kv_heads, n, t.head_dim), dtype=np.float32)  # the op's cache, none of it used
    feeds |= {f"past.{i}.{kv}": empty for i in range(t.num_layers) for kv in ("key", "value")}
    return session.run([name], feeds)[0]


@dataclass(frozen=True)
class LlmReference:
    """The fp32 language model the quantised one is measured against: its graph without the head (built in
    memory, weights fed), the fp32 embedding rows of given ids, and the head's logits of hidden states [N,D]
    (taken from the stored table as needed: no fp32 copy of a 151k-row table is made)."""

    graph: InMemory
    embed: Callable[[list[int]], np.ndarray]
    head: Callable[[np.ndarray], np.ndarray]


def measure_llm(text: TextConfig, ids: list[int], spans: list[tuple[int, int]], quantised: Path,
                reference: LlmReference) -> LlmAccuracy:  # fmt: skip
    """Logit KL, cosine and top-1 agreement of the quantised language model (its graph, and the embedding
    table beside it) against the fp32 reference, at each position of `ids` that predicts a token of one of
    `spans` (start, end)."""
    scored = np.concatenate([np.arange(start - 1, end - 1) for start, end in spans])
    fp32 = WeightsFed(InMemory(every_position(reference.graph.model), reference.graph.arrays))
    ref = reference.head(every_output(fp32, text, reference.embed(ids), "hidden")[scored])
    del fp32
    session = session_from_proto(every_position(quantised), quantised.parent)
    quant = every_output(session, text, EmbeddingTable(quantised.parent)(ids), "logits")[scored]
    del session
    kl, c = kl_divergences(ref, quant), cosines(ref, quant)
    top1 = float((ref.argmax(-1) == quant.argmax(-1)).mean())
    return LlmAccuracy(float(kl.mean()), float(kl.max()), float(c.mean()), float(c.min()), top1, len(kl),
                       f"{len(spans)} exchanges (English, Chinese) as one conversation in the template, "
                       "answer positions")  # fmt: skip


def head_of(ck: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The checkpoint's fp32 head as a function of hidden states [N,D]: logits [N,V], a block of rows at a time."""
    def head(hidden: np.ndarray) -> np.ndarray:
        return np.concatenate([hidden @ block.T for block in ck.row_blocks("llm.lm_head.weight")], axis=1)

    return head


def reference_mb(ck: Any, part: str) -> int:
    """Memory an fp32 reference of `part` takes while it runs: its fp32 weights (fed to ONNX Runtime where
    they are), the quantised graph's session and the activations beside them."""
    fp32 = sum(4 * int(np.prod(ck.shape(n))) for n in ck.names() if n.startswith("llm.") == (part == "llm"))
    return int(REFERENCE_COPIES * fp32 / 2**20)


def _room(ck: Any, part: str, log: Callable[[str], None]) -> bool:
    """Whether this machine has the memory for the part's fp32 reference now; says why not."""
    need, (_, available) = reference_mb(ck, part), memory_mb()
    if available and need > available:
        log(f"accuracy of the {part} part not measured: its fp32 reference needs about {need / 1024:.1f} GB and "
            f"{available / 1024:.1f} GB are available (--no-accuracy skips this step)")  # fmt: skip
        return False
    return True


def measure(ck: Any, prompt: PromptEncoder, bundle: Path, precisions: dict[str, str],
            log: Callable[[str], None]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Figures of each part of `bundle` (written, manifest not yet) not kept in fp32, against fp32 graphs
    built in memory for the measure; a part whose reference would not fit in the memory available is left
    unmeasured, with a line saying so."""
    cfg, family = ck.config, ck.family
    figures: dict[str, dict[str, Any]] = {}
    if precisions["vision"] != "fp32" and _room(ck, "vision", log):
        reference = family.build_vision_graph(ck.get, cfg, InMemory(), VisionGraphSpec("fp32"))
        figures["vision"] = asdict(measure_vision(family, cfg, bundle / "vision.onnx", reference))
        del reference
    if precisions["llm"] != "fp32" and _room(ck, "llm", log):
        graph = build_decoder_graph(ck.get, cfg.text, InMemory(), DecoderGraphSpec("fp32", head=False))
        reference = LlmReference(graph, functools.partial(ck.rows, "llm.embed.weight"), head_of(ck))
        figures["llm"] = asdict(measure_llm(cfg.text, *conversation(prompt), bundle / "llm.onnx", reference))
        del reference, graph
    for warning in warnings(figures, precisions):
        log(warning)
    return figures
