"""The one interface both backends implement, and the request and result types they share.

An engine (the CPU's `edgevlm.model.VLM`, the NPU's `edgevlm.rk3588.board.BoardModel`) is a loaded
bundle that answers a `Conversation`: `stream(conversation, params, stats)` yields `StreamChunk`s, the
last with its finish reason, and fills one `TurnStats`. What a backend keeps between calls (a KV cache)
is its own business; `ChatSession` (session.py), the server, the chat command and the bench know only
this interface.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from . import models
from .bundle import BundleError, Manifest
from .feature_cache import FeatureCache
from .image import DEFAULT_MAX_PIXELS, ImageProcessor, ImageSource, Tiles
from .prompt import PromptEncoder, Turn, VideoLayout
from .runtime.generate import GenerationStats, StreamChunk
from .runtime.sampling import SamplingParams
from .tokenizer import check_ids
from .video import NO_BOUNDS, FrameSampling, VideoError, VideoInfo, VideoSource, probe, read_frames

if TYPE_CHECKING:
    from .session import ChatSession

T = TypeVar("T")


@dataclass
class EncodedImage:
    """An image's tiles, its identity, and (once computed) its features [rows, H]."""

    tiles: Tiles
    digest: str
    features: np.ndarray | None = field(default=None, repr=False)
    frames: int = 0  # video frames these pixels hold (0: a picture)


@dataclass
class EncodedVideo:
    """A clip's sampled frames as the vision encoder takes them (each unit one run: a frame, or a pair of
    frames where the encoder takes two), and what its prompt text needs."""

    units: list[EncodedImage]
    layout: VideoLayout


@dataclass
class Conversation:
    """What an engine is asked: the turns (only the last one open), every image and every video of them
    in order, and the system message (None: the model's default)."""

    turns: list[Turn]
    images: list[EncodedImage] = field(default_factory=list)
    system: str | None = None
    videos: list[EncodedVideo] = field(default_factory=list)

    def media(self) -> list[EncodedImage | EncodedVideo]:
        """Images and videos in prompt order: each turn's images, then its videos."""
        images, videos, out = iter(self.images), iter(self.videos), []
        for turn in self.turns:
            out += [next(images) for _ in turn.images] + [next(videos) for _ in turn.videos]
        return out

    def units(self) -> list[EncodedImage]:
        """What the vision encoder runs on, in prompt order: each image, and each video's frames."""
        return [u for m in self.media() for u in (m.units if isinstance(m, EncodedVideo) else [m])]


@dataclass
class TurnStats:
    """What one answer cost (either backend)."""

    images: int = 0
    tiles: int = 0
    vision_ms: float = 0.0  # images and video frames alike
    frames: int = 0  # video frames in the conversation
    frames_encoded: int = 0  # of them, encoded for this answer (the rest were seen before)
    frames_ms: float = 0.0  # the vision time of those
    prompt_tokens: int = 0  # the whole conversation so far
    cached_tokens: int = 0  # re-used from the KV cache
    generation: GenerationStats = field(default_factory=GenerationStats)
    ttft_ms: float = 0.0  # request to first token: vision + prefill + first sample
    memory_mb: float | None = None  # the runtime's own figure, where it gives one (RKLLM)

    def summary(self) -> str:
        g = self.generation
        memory = f" | {self.memory_mb:.0f} MB" if self.memory_mb is not None else ""
        per_frame = f", {self.frames_ms / self.frames_encoded:.0f} ms per frame" if self.frames_encoded else ""
        video = f" | video frames {self.frames} ({self.frames_encoded} encoded{per_frame})" if self.frames else ""
        return (
            f"images {self.images} ({self.tiles} tiles, vision {self.vision_ms:.0f} ms){video} | "
            f"prompt {self.prompt_tokens} tokens ({self.cached_tokens} cached, prefill {g.prompt_tokens} in "
            f"{g.prefill_ms:.0f} ms, {g.prefill_tok_s:.0f} tok/s) | first token {self.ttft_ms:.0f} ms | "
            f"answer {g.generated_tokens} tokens, {g.decode_tok_s:.1f} tok/s | end: {g.finish_reason}{memory}"
        )


class Engine(Protocol):
    """A loaded bundle that answers conversations, on either backend."""

    manifest: Manifest
    tokenizer: Tokenizer
    prompt: PromptEncoder
    load_times: dict[str, float]
    json_answers: bool  # whether it can constrain answers to a JSON schema (it sees the logits)

    @property
    def context_length(self) -> int: ...

    @property
    def decode_bytes(self) -> int: ...  # weight bytes one decode step reads (0: unknown)

    def count_tokens(self, conversation: Conversation) -> int: ...

    def load_vision(self) -> None: ...  # now, not on the first image (the CPU engine's default)

    def encode_image(self, source: ImageSource, *, max_tiles: int | None = None, max_pixels: int | None = None,
                     decode_limit: int = DEFAULT_MAX_PIXELS) -> EncodedImage: ...  # fmt: skip

    def encode_video(self, source: VideoSource, *, frames: FrameSampling = NO_BOUNDS, max_pixels: int | None = None,
                     decode_limit: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = None,
                     budget: int | None = None) -> EncodedVideo: ...  # fmt: skip

    def stream(self, conversation: Conversation, params: SamplingParams, stats: TurnStats, *,
               shared: bool = False) -> Iterator[StreamChunk]: ...  # fmt: skip

    def session(self, system: str | None = None, *, max_tiles: int | None = None, max_pixels: int | None = None,
                frames: FrameSampling = NO_BOUNDS) -> ChatSession: ...  # fmt: skip


# -- what both backends take from a bundle -----------------------------------------------------


def common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items a and b have in common."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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


def load_prompt(folder: Path, manifest: Manifest) -> PromptEncoder:
    """The bundle's tokenizer under its prompt format (either backend's first load step)."""
    tokenizer = load_part("tokenizer", lambda: Tokenizer.from_file(str(folder / manifest.parts["tokenizer"].file)))
    return load_part("prompt format", lambda: prompt_encoder(manifest, tokenizer))


def prompt_encoder(manifest: Manifest, tokenizer: Tokenizer) -> PromptEncoder:
    """The bundle's prompt format over its tokenizer, with the control-token ids its manifest recorded."""
    check_ids(manifest.tokens, tokenizer)
    fmt = models.family(manifest.model.family).prompt_format(manifest.model)
    return PromptEncoder(tokenizer, fmt, manifest.tokens)


def tiling_of(manifest: Manifest) -> ImageProcessor:
    """The image processing a bundle's model was trained with (its tile limits as converted)."""
    return models.family(manifest.model.family).tiling(manifest.model, manifest.min_tiles, manifest.max_tiles)


def without_lead(chunks: Iterator[StreamChunk], lead: str) -> Iterator[StreamChunk]:
    """The answer without the template's `answer_prefix` it starts with (SmolVLM2 answers " The ..." after
    "Assistant:"): the text shown and kept is then what the template puts back after that prefix."""
    with contextlib.closing(chunks):  # closing this stream closes the engine's (its cache bookkeeping)
        for chunk in chunks:
            if lead and chunk.text:
                chunk, lead = replace(chunk, text=chunk.text.removeprefix(lead)), ""
            yield chunk


class BundleEngine:
    """What both engines do alike with their bundle: its context, its images, sessions and one-off chats."""

    manifest: Manifest

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def encode_image(self, source: ImageSource, *, max_tiles: int | None = None, max_pixels: int | None = None,
                     decode_limit: int = DEFAULT_MAX_PIXELS) -> EncodedImage:  # fmt: skip
        """Load and tile an image as the bundle's model wants it, with at most `max_tiles` tiles and resized to
        at most `max_pixels`, which bound its tokens; images over `decode_limit` pixels are refused
        (features are computed when first needed)."""
        tiles = tiling_of(self.manifest).capped(max_tiles, max_pixels).load(source, max_pixels=decode_limit)
        return self.encoded(tiles)

    def encode_video(self, source: VideoSource, *, frames: FrameSampling = NO_BOUNDS, max_pixels: int | None = None,
                     decode_limit: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = None,
                     budget: int | None = None) -> EncodedVideo:  # fmt: skip
        """Sample and decode a clip's frames as the bundle's model wants them (its family's sampler within
        `frames`), each resized to at most `max_pixels`. Without a frame count given, the frames are also
        kept to what `budget` prompt tokens hold. Frames over `decode_limit` pixels and clips longer than
        `max_seconds` are refused."""
        if self.prompt.no_videos:  # said before any work
            raise VideoError(self.prompt.no_videos)
        processor = tiling_of(self.manifest).capped(None, max_pixels)
        info = probe(source, max_pixels=decode_limit, max_seconds=max_seconds)
        indices = self._sample(processor, info, frames, budget)
        tiles = processor.frames(read_frames(source, indices, max_pixels=decode_limit))
        group = processor.frame_group
        units = [replace(self.encoded(t), frames=min(group, len(indices) - k * group)) for k, t in enumerate(tiles)]
        times = tuple(i / info.fps if info.fps else 0.0 for i in indices)
        return EncodedVideo(units, VideoLayout(len(indices), len(units), tiles[0].grid, times, info.duration))

    def _sample(self, processor: ImageProcessor, info: VideoInfo, frames: FrameSampling,
                budget: int | None) -> list[int]:  # fmt: skip
        """The family's frames of a clip; without a frame count given, as many as `budget` tokens hold."""
        indices = processor.sample(info, frames)
        if budget is None or frames.frames is not None:
            return indices
        blank = Image.new("RGB", (info.width, info.height))  # every frame of a clip has its size
        per_frame = self.rows(processor.frames([blank])[0]) / processor.frame_group
        if len(indices) * per_frame <= budget:
            return indices
        return processor.sample(info, replace(frames, frames=max(processor.frame_group, int(budget // per_frame))))

    def rows(self, tiles: Tiles) -> int:
        """Feature rows (image tokens) of an image or a video's unit, as its family writes it in the prompt."""
        f = self.prompt.format
        return f.image_text(tiles.layout).count(f.image_token)

    @functools.cached_property
    def image_cache(self) -> FeatureCache:
        """Features of images seen before, across sessions and requests (`image_cache.resize(mb)` bounds it)."""
        return FeatureCache()

    def encoded(self, tiles: Tiles) -> EncodedImage:
        """Tiles with their identity (pixels, shape and grid: a uniform picture's tiles can repeat), and
        their features when this engine has seen them before."""
        digest = hashlib.sha1(tiles.pixels.tobytes() + repr((tiles.pixels.shape, tiles.grid)).encode()).hexdigest()
        return EncodedImage(tiles, digest, self.image_cache.get(digest))

    def session(self, system: str | None = None, *, max_tiles: int | None = None, max_pixels: int | None = None,
                frames: FrameSampling = NO_BOUNDS) -> ChatSession:  # fmt: skip
        """A conversation; `frames` bounds the frames taken from its videos."""
        from .session import ChatSession  # session.py builds on this module

        return ChatSession(self, system=system, max_tiles=max_tiles, max_pixels=max_pixels,  # type: ignore[arg-type]
                           frames=frames)  # fmt: skip

    def chat(self, question: str, images: Sequence[ImageSource] = (), *, videos: Sequence[VideoSource] = (),
             stream: bool = False, system: str | None = None, max_tiles: int | None = None,
             max_pixels: int | None = None, frames: int | None = None, fps: float | None = None,
             **sampling: Any) -> str | Iterator[str]:  # fmt: skip
        """One question (with images and videos: at most `frames` frames of each, at `fps`) in a fresh
        conversation; the answer, or its pieces with stream=True."""
        session = self.session(system, max_tiles=max_tiles, max_pixels=max_pixels, frames=FrameSampling(frames, fps))
        return session.chat(question, images, videos=videos, stream=stream, **sampling)


