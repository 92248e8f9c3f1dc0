"""A conversation on the RK3588 NPU: RKNN-Lite for the vision encoder, RKLLM for the language model.

RKLLM works per turn: it takes the prompt as text, with `<image>` where each image's embeddings go
(it expands that to `<img>` + `<IMG_CONTEXT>` x n + `</img>` itself), keeps its own KV cache
across turns (`keep_history`), and streams text back. The prompt is rendered with edgevlm's own
template; text typed by the user has control-token strings broken apart first, because RKLLM
tokenises the whole prompt and would otherwise read them as control tokens.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import Manifest
from ..image import DEFAULT_MAX_PIXELS, ImageSource, Tiling
from ..model import EncodedImage, Prepared, TurnStats, encode_image, prompt_encoder, tiling_of
from ..prompt import PromptEncoder, PromptFormat, Turn
from ..runtime.generate import GenerationStats, StreamChunk
from ..runtime.sampling import SamplingParams
from .rkllm import Perf, RkllmError, RkllmModel

IMAGE_PLACEHOLDER = "<image>"


class BoardError(ValueError):
    """The board backend cannot start: a missing artifact or NPU library."""


_ZWSP = "\u200b"  # splits "<|im_end|>" into text that no tokenizer reads as one token
def defuse(text: str, controls: Sequence[str]) -> str:
    """User text with every control-token string broken by a zero-width space after its first character."""
    pattern = re.compile("|".join(re.escape(t) for t in (*controls, IMAGE_PLACEHOLDER)))
    return pattern.sub(lambda m: m.group(0)[0] + _ZWSP + m.group(0)[1:], text)


def added_tokens(encoder: PromptEncoder) -> list[str]:
    """Every added token of the tokenizer: RKLLM tokenises the whole prompt and would read any of them."""
    return [t.content for t in encoder.tokenizer.get_added_tokens_decoder().values()]


def rkllm_prompt(encoder: PromptEncoder, turns: Sequence[Turn], system: str | None) -> str:
    """The conversation as RKLLM takes it: trusted template text, defused user text, `<image>` slots."""
    f: PromptFormat = encoder.format
    block = re.compile(re.escape(f.image_start) + f"(?:{re.escape(f.image_token)})+" + re.escape(f.image_end))
    out = []
    for trusted, text in encoder.render(turns, system).items:
        out.append(block.sub(IMAGE_PLACEHOLDER, text) if trusted else defuse(text, added_tokens(encoder)))
    return "".join(out)


@dataclass
class BoardStats:
    images: int = 0
    vision_ms: float = 0.0
    perf: Perf = field(default_factory=Perf)

    def summary(self) -> str:
        p = self.perf
        rate = p.generate_tokens / (p.generate_ms / 1000) if p.generate_ms else 0.0
        return (f"NPU | images {self.images}, vision {self.vision_ms:.0f} ms | prefill {p.prefill_tokens} tokens "
                f"in {p.prefill_ms:.0f} ms | answer {p.generate_tokens} tokens, {rate:.1f} tok/s | "
                f"{p.memory_mb:.0f} MB")  # fmt: skip


class BoardSession:
    """History plus RKLLM's own cache: each turn sends only the text RKLLM has not seen."""

    def __init__(self, encoder: PromptEncoder, vision: object, llm: RkllmModel, *, system: str | None = None,
                 tiling: Tiling | None = None) -> None:  # fmt: skip
        self.encoder, self.vision, self.llm = encoder, vision, llm
        self.system, self.tiling = system, tiling or Tiling()
        self.load_times = {"llm": 0.0, "vision": 0.0}
        self.clear()

    def clear(self) -> None:
        self.turns: list[Turn] = []
        self.sent = ""  # the prompt text RKLLM holds in its cache
        self.last_stats = BoardStats()
        self.dropped_turns = 0

    def _features(self, pixels: Sequence[np.ndarray]) -> np.ndarray | None:
        """Features [n_image, tiles*256, H] on the NPU; RKLLM needs one token count for all images."""
        if not pixels:
            return None
        counts = [len(p) for p in pixels]
        if len(set(counts)) > 1:
            raise ValueError(f"RKLLM needs the same number of tiles for every image of a turn, got {counts}: "
                             "use --max-tiles 1, or send one image per turn")  # fmt: skip
        start = time.perf_counter()
        feats = [self.vision.encode(p).reshape(-1, self.vision.shape[1]) for p in pixels]  # type: ignore[attr-defined]
        self.last_stats.vision_ms = (time.perf_counter() - start) * 1000
        return np.stack(feats)

    def ask(self, question: str, images: Sequence[ImageSource] = (), *, max_tokens: int = 512) -> Iterator[str]:
        """Stream the answer; closing the iterator (Ctrl-C, a client gone) aborts the run."""
        tiles = [self.tiling.load(src) for src in images]
        turn = Turn(question, tuple(t.count for t in tiles))
        pieces = self.run_prompt(rkllm_prompt(self.encoder, [*self.turns, turn], self.system),
                                 [t.pixels for t in tiles], max_tokens)  # fmt: skip
        return self._recorded(turn, pieces)

    def _recorded(self, turn: Turn, pieces: Iterator[tuple[str, int]]) -> Iterator[str]:
        answer: list[str] = []
        try:
            for text, _ in pieces:
                answer.append(text)
                yield text
        finally:
            pieces.close()  # type: ignore[attr-defined]
            self.turns.append(Turn(turn.question, turn.image_tiles, "".join(answer)))

    def run_prompt(self, full: str, pixels: Sequence[np.ndarray], max_tokens: int) -> Iterator[tuple[str, int]]:
        """Run a whole rendered conversation, sending RKLLM only what its cache lacks; yields (text, token).
        `pixels` are the tiles of every image of the conversation, in order."""
        if self.sent and full.startswith(self.sent):
            new = full[len(self.sent) :]
        else:  # first turn, or a history RKLLM does not hold (cleared, edited)
            self.llm.clear_kv_cache()
            new = full
        n_new = new.count(IMAGE_PLACEHOLDER)
        self.last_stats = BoardStats(images=n_new)
        features = self._features(list(pixels)[len(pixels) - n_new :] if n_new else [])
        return self._stream(full, new, features, max_tokens)

    def _stream(self, full: str, new: str, features: np.ndarray | None,
                max_tokens: int) -> Iterator[tuple[str, int]]:  # fmt: skip
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        answer: list[str] = []

        def on_text(text: str, token: int) -> bool:
            pieces.put((text, token))
            return not stop.is_set()

        def run() -> None:
            try:
                f = self.encoder.format
                self.last_stats.perf = self.llm.run(new, on_text, images=features, keep_history=True,
                                                    image_tokens=(f.image_start, f.image_end, f.image_token),
                                                    max_new_tokens=max_tokens)  # fmt: skip
            except Exception as e:  # handed to the reader
                pieces.put(e)
            finally:
                pieces.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                answer.append(item[0])
                yield item
        finally:
            stop.set()
            self.llm.abort() if worker.is_alive() else None
            worker.join()
            # RKLLM's cache now holds the prompt, the answer and its end-of-turn token.
            self.sent = full + "".join(answer) + self.encoder.template.assistant[1]


class BoardModel:
    """The board's counterpart of `edgevlm.model.VLM` for the Python API: sessions and one-off chats.
    RKLLM holds one conversation in its cache, so sessions of one model take turns, not run at once."""

    def __init__(self, bundle: str | Path, *, library: str = "librkllmrt.so", target: str = "rk3588") -> None:
        from ..bundle import open_bundle

        self.manifest = open_bundle(bundle)
        self.session_ = load_board_session(bundle, library=library, target=target, manifest=self.manifest)

    @classmethod
    def from_parts(cls, manifest: Manifest, session: BoardSession) -> BoardModel:
        model = cls.__new__(cls)
        model.manifest, model.session_ = manifest, session
        return model

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    @property
    def load_times(self) -> dict[str, float]:
        return self.session_.load_times

    @property
    def prompt(self) -> PromptEncoder:
        return self.session_.encoder

    def encode_image(self, source: ImageSource, *, max_tiles: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
                     ) -> EncodedImage:  # fmt: skip
        return encode_image(self.manifest, source, max_tiles=max_tiles, max_pixels=max_pixels)

    def answer(self, request: Prepared, params: SamplingParams, stats: TurnStats) -> Iterator[StreamChunk]:
        """The server's entry point: a whole conversation in, RKLLM's answer out as StreamChunks.
        RKLLM samples by its own settings (from the bundle's defaults), not per request."""
        s = self.session_
        full = rkllm_prompt(s.encoder, request.turns, request.system)
        begin = time.perf_counter()
        pieces = s.run_prompt(full, [img.tiles.pixels for img in request.images], params.max_tokens)
        g = stats.generation = GenerationStats()
        stats.prompt_tokens, stats.images = len(request.ids), len(request.images)
        stats.tiles = sum(img.tiles.count for img in request.images)
        try:
            for text, token in pieces:
                if not g.generated_tokens:
                    stats.ttft_ms = (time.perf_counter() - begin) * 1000
                g.generated_tokens += 1
                yield StreamChunk(text, token, g)
        finally:
            pieces.close()  # type: ignore[attr-defined]
            p = s.last_stats.perf
            stats.vision_ms = s.last_stats.vision_ms
            stats.cached_tokens = max(0, len(request.ids) - p.prefill_tokens)
            g.prompt_tokens, g.prefill_ms, g.decode_ms = p.prefill_tokens, p.prefill_ms, p.generate_ms
            produced = max(p.generate_tokens, g.generated_tokens)  # the runtime's count, when it gives one
            g.finish_reason = "length" if produced >= params.max_tokens else "stop"
            # Usage counts generated tokens less the stop token; RKLLM's count has none to take off.
            g.generated_tokens = produced + (g.finish_reason == "stop")
        yield StreamChunk("", -1, g)  # the closing chunk carries the finish reason

    def session(self, system: str | None = None, *, max_tiles: int | None = None) -> BoardSession:
        s = self.session_
        s.system, s.tiling = system, tiling_of(self.manifest).capped(max_tiles)
        s.clear()
        return s

    def chat(self, question: str, images: Sequence[ImageSource] = (), *, stream: bool = False,
             system: str | None = None, max_tiles: int | None = None,
             max_tokens: int = 512) -> str | Iterator[str]:  # fmt: skip
        pieces = self.session(system, max_tiles=max_tiles).ask(question, images, max_tokens=max_tokens)
        return pieces if stream else "".join(pieces)


def load_board_session(bundle: str | Path, *, system: str | None = None, max_tiles: int | None = None,
                       library: str = "librkllmrt.so", target: str = "rk3588",
                       manifest: Manifest | None = None) -> BoardSession:  # fmt: skip
    """A BoardSession for a bundle with its `export-rk3588` artifacts (on the board itself)."""
    from tokenizers import Tokenizer

    from ..bundle import open_bundle
    from .rknn_lite import RknnError, RknnVisionEncoder

    folder = Path(bundle)
    m = manifest or open_bundle(folder)
    for part in (f"vision_{target}", f"llm_{target}"):
        if part not in m.parts:
            raise BoardError(f"{folder} has no {part} artifact: run `edgevlm export-rk3588` (and the .rkllm recipe)")
    encoder = prompt_encoder(m, Tokenizer.from_file(str(folder / m.parts["tokenizer"].file)))
    try:
        start = time.perf_counter()
        llm = RkllmModel(folder / m.parts[f"llm_{target}"].file, library=library, max_context=m.context_length)
        middle = time.perf_counter()
        vision = RknnVisionEncoder.load(folder / m.parts[f"vision_{target}"].file, m.model.tokens_per_tile,
                                        m.model.text.hidden_size)  # fmt: skip
        load_times = {"llm": middle - start, "vision": time.perf_counter() - middle}
    except ImportError:
        raise BoardError("rknn-toolkit-lite2 is not installed (pip install rknn-toolkit-lite2 on the board)") from None
    except (RknnError, RkllmError) as e:
        raise BoardError(str(e)) from None
    session = BoardSession(encoder, vision, llm, system=system, tiling=tiling_of(m).capped(max_tiles))
    session.load_times = load_times
    return session
