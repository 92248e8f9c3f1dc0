"""A loaded bundle: vision encoder, language model, tokenizer and prompt encoder together.

`VLM.generate` is the one streaming entry point every front end uses. It keeps the ids (and image
identities) whose KV rows are in the language model's cache, and prefills only what differs from
them: a follow-up question, or a request whose history is a prefix of the cached one, costs only
its new tokens, and an image already seen is not encoded again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

from . import models
from .bundle import BundleError, Manifest, open_bundle
from .embedding import EmbeddingTable
from .image import DEFAULT_MAX_PIXELS, ImageSource, Tiles, Tiling
from .prompt import PromptEncoder, Turn
from .runtime.decoder import OrtLanguageModel
from .runtime.generate import GenerationStats, StreamChunk, stream_generate
from .runtime.sampling import SamplingParams
from .runtime.vision import OrtVisionEncoder
from .session import ChatSession
from .tokenizer import check_ids

T = TypeVar("T")


@dataclass
class EncodedImage:
    """An image's tiles, its identity, and (once computed) its features [tiles*256, H]."""

    tiles: Tiles
    digest: str
    features: np.ndarray | None = field(default=None, repr=False)


def load_part(name: str, loader: Callable[[], T]) -> T:
    """Load one part of a bundle; a part that its library cannot read is a BundleError naming it.
    (ONNX Runtime and tokenizers raise their own, untyped exceptions for a damaged file.)"""
    try:
        return loader()
    except BundleError:
        raise
    except Exception as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BundleError(f"the bundle's {name} cannot be loaded ({detail}); is it damaged? "
                          "`edgevlm verify` checks every file") from None  # fmt: skip


def prompt_encoder(manifest: Manifest, tokenizer: Tokenizer) -> PromptEncoder:
    """The bundle's prompt format over its tokenizer, with the control-token ids its manifest recorded."""
    check_ids(manifest.tokens, tokenizer)
    fmt = models.family(manifest.model.family).prompt_format(manifest.model)
    return PromptEncoder(tokenizer, fmt, manifest.tokens, manifest.model.tokens_per_tile)


def tiling_of(manifest: Manifest) -> Tiling:
    """The tiling a bundle's model was trained with (its tile limits as converted)."""
    return models.family(manifest.model.family).tiling(manifest.model, manifest.min_tiles, manifest.max_tiles)


def encode_image(manifest: Manifest, source: ImageSource, *, max_tiles: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:  # fmt: skip
    """Load and tile an image as a bundle's model wants it (features are computed when first needed)."""
    tiles = tiling_of(manifest).capped(max_tiles).load(source, max_pixels=max_pixels)
    return EncodedImage(tiles, hashlib.sha1(tiles.pixels.tobytes()).hexdigest())


@dataclass
class Prepared:
    """A request ready to run: the conversation, its token ids, and its images in order."""

    turns: list[Turn]
    system: str | None
    ids: list[int]
    images: list[EncodedImage]


@dataclass
class TurnStats:
    """What one answer cost."""

    images: int = 0
    tiles: int = 0
    vision_ms: float = 0.0
    prompt_tokens: int = 0  # the whole conversation so far
    cached_tokens: int = 0  # re-used from the KV cache
    generation: GenerationStats = field(default_factory=GenerationStats)
    ttft_ms: float = 0.0  # request to first token: vision + prefill + first sample

    def summary(self) -> str:
        g = self.generation
        return (
            f"images {self.images} ({self.tiles} tiles, vision {self.vision_ms:.0f} ms) | "
            f"prompt {self.prompt_tokens} tokens ({self.cached_tokens} cached, prefill {g.prompt_tokens} in "
            f"{g.prefill_ms:.0f} ms, {g.prefill_tok_s:.0f} tok/s) | first token {self.ttft_ms:.0f} ms | "
            f"answer {g.generated_tokens} tokens, {g.decode_tok_s:.1f} tok/s | end: {g.finish_reason}"
        )


def _common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class VLM:
    """An InternVL3 bundle ready to answer."""

    def __init__(self, folder: str | Path, *, threads: int | None = None, verify: bool = False) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = open_bundle(self.folder, hashes=verify)
        m = self.manifest
        self.config = m.model
        part = self.folder.joinpath
        self.tokenizer = load_part("tokenizer", lambda: Tokenizer.from_file(str(part(m.parts["tokenizer"].file))))
        self.prompt = load_part("prompt format", lambda: prompt_encoder(m, self.tokenizer))
        # The LLM first: its load peak (packed and unpacked weights at once) then comes before the vision
        # weights are resident, which measured 130 MB lower than the other order.
        start = time.perf_counter()
        self.lm = load_part("llm", lambda: OrtLanguageModel(part(m.parts["llm"].file), EmbeddingTable(self.folder),
                                                            m.model.text, max_context=m.context_length,
                                                            threads=threads))  # fmt: skip
        middle = time.perf_counter()
        self.vision = load_part("vision", lambda: OrtVisionEncoder(part(m.parts["vision"].file), threads=threads))
        self.load_times = {"llm": middle - start, "vision": time.perf_counter() - middle}
        self._cached: list[object] = []  # one key per KV row: a token id, or (image digest, row) for image rows
        self._ends: set[int] = set()  # lengths of _cached where the last request's prompt and answer end
        self._public = self.prompt.encode([], None)  # the template's opening, with the default system message

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def encode_image(self, source: ImageSource, *, max_tiles: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:  # fmt: skip
        return encode_image(self.manifest, source, max_tiles=max_tiles, max_pixels=max_pixels)

    def answer(self, request: Prepared, params: SamplingParams, stats: TurnStats) -> Iterator[StreamChunk]:
        """Stream the answer to a prepared request (the server's entry point: requests of several clients
        share the cache, so re-use never reveals how much of another client's prompt a request matched)."""
        return self.generate(request.ids, request.images, params, stats, shared=True)

    def _features(self, image: EncodedImage, stats: TurnStats) -> np.ndarray:
        if image.features is None:
            start = time.perf_counter()
            image.features = self.vision.encode(image.tiles.pixels).reshape(-1, self.config.text.hidden_size)
            stats.vision_ms += (time.perf_counter() - start) * 1000
        return image.features

    def _keys(self, ids: Sequence[int], images: Sequence[EncodedImage]) -> list[object]:
        slots = [i for i, t in enumerate(ids) if t == self.prompt.image_token_id]
        rows = [(img.digest, r) for img in images for r in range(img.tiles.count * self.config.tokens_per_tile)]
        if len(slots) != len(rows):
            raise ValueError(f"the prompt has {len(slots)} image tokens but its images give {len(rows)} features")
        keys: list[object] = list(ids)
        for pos, row in zip(slots, rows, strict=True):
            keys[pos] = row
        return keys

    def _embeddings(self, ids: Sequence[int], keys: list[object], start: int, images: Sequence[EncodedImage],
                    stats: TurnStats) -> np.ndarray:  # fmt: skip
        embeds = self.lm.embed(list(ids[start:]))
        by_digest = {img.digest: img for img in images}
        for pos in range(start, len(keys)):
            key = keys[pos]
            if isinstance(key, tuple):
                embeds[pos - start] = self._features(by_digest[key[0]], stats)[key[1]]
        return embeds

    def generate(self, ids: list[int], images: Sequence[EncodedImage], params: SamplingParams,
                 stats: TurnStats | None = None, *, shared: bool = False) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream the answer to a fully rendered prompt, re-using the cached prefix (see `_reuse`)."""
        stats = stats if stats is not None else TurnStats()
        begin = time.perf_counter()
        keys = self._keys(ids, images)
        reuse = self._reuse(keys, shared)
        stats.images = len(images)
        stats.tiles = sum(img.tiles.count for img in images)
        stats.prompt_tokens, stats.cached_tokens = len(ids), reuse
        embeds = self._embeddings(ids, keys, reuse, images, stats)
        self._cached = keys[:reuse]
        generated: list[int] = []
        params = params if params.stop_ids else replace(params, stop_ids=self.prompt.stop_ids)
        try:
            for chunk in stream_generate(self.lm, self.tokenizer, embeds, params, seen=ids, position=reuse):
                if not generated:
                    stats.ttft_ms = (time.perf_counter() - begin) * 1000
                generated.append(chunk.token)
                stats.generation = chunk.stats
                yield chunk
        finally:
            fed = keys + generated[:-1]  # the last token was sampled but never fed back
            self._cached = fed if self.lm.position == len(fed) else fed[: min(len(fed), self.lm.position)]
            self._ends = {n for n in (len(keys), len(self._cached)) if n <= len(self._cached)}

    def _reuse(self, keys: list[object], shared: bool) -> int:
        """How many cached rows the prompt `keys` re-uses. The last prompt token is always fed: it gives the
        logits. With `shared`, only whole earlier requests (prompt, or prompt and answer) or the public
        opening of the template count, so the figure says nothing about a partial match."""
        common = min(_common_prefix(self._cached, keys), len(keys) - 1)
        if not shared:
            return common
        public = len(self._public) if keys[: len(self._public)] == self._public else 0
        return max((n for n in (*self._ends, public) if n <= common), default=0)

    def session(self, system: str | None = None, *, max_tiles: int | None = None) -> ChatSession:
        return ChatSession(self, system=system, max_tiles=max_tiles)

    def chat(self, question: str, images: Sequence[ImageSource] = (), *, stream: bool = False,
             system: str | None = None, max_tiles: int | None = None, max_tokens: int = 512,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
             seed: int | None = None) -> str | Iterator[str]:  # fmt: skip
        """One question (with images) in a fresh conversation; the answer, or its pieces with stream=True."""
        return self.session(system, max_tiles=max_tiles).chat(
            question, images, stream=stream, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
        )  # fmt: skip


def load(path: str | Path, *, threads: int | None = None, verify: bool = False) -> VLM:
    """Open a bundle made by `edgevlm convert`."""
    return VLM(path, threads=threads, verify=verify)
