"""Measuring what quantisation cost: each quantised part of a new bundle run beside its fp32 form, at conversion.

Random test weights have no activation outliers; a user's real checkpoint may, so the converter, which
holds the weights anyway, measures on built-in inputs and records the figures in the manifest:
  vision:  cosine of the image features, mean and worst token, on pictures drawn here (one tile each);
  llm:     KL(fp32 || quantised) and cosine of the logits at every answer position of a conversation of
           a few short English and Chinese exchanges in the family's template, and top-1 agreement of
           the greedy next token there (the quantised run uses the bundle's own int8 embedding table).

The fp32 references are graphs built in memory over the checkpoint's weights as stored (bf16, widened in
the graph as it runs): they need no bundle, so `convert` computes them on the core its own one-core work
leaves idle, and runs only the quantised parts once the bundle is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .accuracy import LlmAccuracy, VisionAccuracy
from .config import TextConfig
from .embedding import EmbeddingTable
from .engine import common_prefix
from .graphs.builder import InMemory
from .graphs.decoder import DecoderGraphSpec, build_decoder_graph, every_position
from .graphs.vision import VisionGraphSpec
from .prompt import PromptEncoder, Turn
from .runtime.memory import memory_mb
from .runtime.ort import Halt, WeightsFed, create_session, session_from_proto
from .runtime.rope import rope_angles

REFERENCE_COPIES = 2.0  # an fp32 reference's peak over its stored weights' size (measured 1.6-1.9x at 1B, bf16)
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


def probe_feeds(family: Any, cfg: Any) -> list[dict[str, np.ndarray]]:
    """The vision graph's inputs for the probe pictures (one tile each)."""
    tiling = family.tiling(cfg, cfg.min_tiles, cfg.max_tiles).capped(1)
    return [f for p in probe_pictures() for f in family.vision_inputs(cfg, tiling.load(p))]


def vision_features(session: Any, feeds: list[dict[str, np.ndarray]], width: int) -> np.ndarray:
    """The image features [T, width] of every feed, in order."""
    return np.concatenate([session.run(["image_features"], f)[0].reshape(-1, width) for f in feeds])


def vision_accuracy(reference: np.ndarray, quantised: np.ndarray, pictures: int) -> VisionAccuracy:
    """Cosine of the quantised vision graph's features to the fp32 graph's, token by token."""
    c = cosines(reference, quantised)
    what = f"{pictures} drawn picture{'s' if pictures > 1 else ''}, one tile each"
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


def scored_positions(spans: list[tuple[int, int]]) -> np.ndarray:
    """The positions whose next-token prediction is one of the spans' (start, end) tokens."""
    return np.concatenate([np.arange(start - 1, end - 1) for start, end in spans])


def reference_logits(text: TextConfig, ids: list[int], scored: np.ndarray, reference: LlmReference,
                     threads: int | None = None, halt: Halt | None = None) -> np.ndarray:  # fmt: skip
    """The fp32 reference's logits [N,V] at the `scored` positions of one prefill of `ids`."""
    graph = InMemory(every_position(reference.graph.model), reference.graph.arrays)
    fp32 = WeightsFed(graph, threads=threads, halt=halt)
    return reference.head(every_output(fp32, text, reference.embed(ids), "hidden")[scored])


def quantised_logits(text: TextConfig, ids: list[int], scored: np.ndarray, quantised: Path) -> np.ndarray:
    """The quantised graph's logits [N,V] (with the embedding table beside it) at the `scored` positions."""
    session = session_from_proto(every_position(quantised), quantised.parent)
    return every_output(session, text, EmbeddingTable(quantised.parent)(ids), "logits")[scored]


def llm_accuracy(reference: np.ndarray, quantised: np.ndarray, spans: list[tuple[int, int]]) -> LlmAccuracy:
    """Logit KL, cosine and top-1 agreement of the quantised logits to the reference's, position by position."""
    kl, c = kl_divergences(reference, quantised), cosines(reference, quantised)
    top1 = float((reference.argmax(-1) == quantised.argmax(-1)).mean())
    return LlmAccuracy(float(kl.mean()), float(kl.max()), float(c.mean()), float(c.min()), top1, len(kl),
                       f"{len(spans)} exchanges (English, Chinese) as one conversation in the template, "
                       "answer positions")  # fmt: skip


def head_of(ck: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The checkpoint's fp32 head as a function of hidden states [N,D]: logits [N,V], a block of rows at a time."""
    def head(hidden: np.ndarray) -> np.ndarray:
        return np.concatenate([hidden @ block.T for block in ck.row_blocks("llm.lm_head.weight")], axis=1)

    return head


def reference_mb(ck: Any, part: str) -> int:
    """Memory an fp32 reference of `part` takes while it runs: its weights as stored (mapped from the
    checkpoint, fed as they are), and beside them the weights widened layer by layer, the concatenated
    ones and the activations."""
    stored = sum(int(np.prod(ck.shape(n))) * ck.stored_itemsize(n) for n in ck.names()
                 if n.startswith("llm.") == (part == "llm"))  # fmt: skip
    return int(REFERENCE_COPIES * stored / 2**20)


def _room(ck: Any, part: str, log: Callable[[str], None]) -> bool:
    """Whether this machine has the memory for the part's fp32 reference now; says why not."""
    need, (_, available) = reference_mb(ck, part), memory_mb()
    if available and need > available:
        log(f"accuracy of the {part} part not measured: its fp32 reference needs about {need / 1024:.1f} GB and "
            f"{available / 1024:.1f} GB are available (--no-accuracy skips this step)")  # fmt: skip
        return False
    return True


@dataclass(frozen=True)
class Probes:
    """The built-in inputs both forms of each part run on: the vision graph's feeds, and the conversation's
    ids with its answers' spans."""

    feeds: list[dict[str, np.ndarray]]
    ids: list[int]
    spans: list[tuple[int, int]]


def probe_inputs(ck: Any, prompt: PromptEncoder) -> Probes:
    return Probes(probe_feeds(ck.family, ck.config), *conversation(prompt))


def parts_to_measure(ck: Any, precisions: dict[str, str], log: Callable[[str], None]) -> list[str]:
    """The parts not kept in fp32 whose reference fits in the memory available now (a line says why not)."""
    return [part for part, form in precisions.items() if form != "fp32" and _room(ck, part, log)]


def references(ck: Any, probes: Probes, parts: Iterable[str], threads: int | None = None,
               halt: Halt | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """The fp32 outputs each of `parts` is measured against (vision features [T,D], LLM logits at the scored
    positions [N,V]), from graphs built in memory over the checkpoint's own weights. They need no bundle:
    `convert` computes them on the core its own work leaves idle (and stops them by `halt` if it fails)."""
    cfg, out = ck.config, {}
    if "vision" in parts:
        graph = ck.family.build_vision_graph(ck.stored, cfg, InMemory(), VisionGraphSpec("fp32"))
        fed = WeightsFed(graph, threads=threads, halt=halt)
        out["vision"] = vision_features(fed, probes.feeds, cfg.text.hidden_size)
        del fed  # its run's memory, before the language model's
    if "llm" in parts:
        graph = build_decoder_graph(ck.stored, cfg.text, InMemory(), DecoderGraphSpec("fp32", head=False))
        reference = LlmReference(graph, functools.partial(ck.rows, "llm.embed.weight"), head_of(ck))
        out["llm"] = reference_logits(cfg.text, probes.ids, scored_positions(probes.spans), reference, threads, halt)
    return out


def quantised_outputs(ck: Any, probes: Probes, bundle: Path, parts: Iterable[str]) -> dict[str, np.ndarray]:
    """The same outputs from the bundle's quantised `parts` (written at `bundle`)."""
    out, width = {}, ck.config.text.hidden_size
    if "vision" in parts:
        session = create_session(bundle / "vision.onnx", cache=False)
        out["vision"] = vision_features(session, probes.feeds, width)
        del session  # before the language model's
    if "llm" in parts:
        out["llm"] = quantised_logits(ck.config.text, probes.ids, scored_positions(probes.spans), bundle / "llm.onnx")
    return out


def figures(probes: Probes, references: dict[str, np.ndarray],
            quantised: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each measured part's figures (accuracy.py's), as recorded in the manifest."""
    out = {}
    if "vision" in references:
        out["vision"] = asdict(vision_accuracy(references["vision"], quantised["vision"], len(probes.feeds)))
    if "llm" in references:
        out["llm"] = asdict(llm_accuracy(references["llm"], quantised["llm"], probes.spans))
    return out
