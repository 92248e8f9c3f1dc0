"""The NPU engine on the RK3588: RKNN-Lite for the vision encoder, RKLLM for the language model.

It implements the same interface as the CPU engine (engine.py): a Conversation in, StreamChunks out.
RKLLM works per turn: it takes the prompt as text, with `<image>` where each image's embeddings go
(it expands that to the family's image tokens itself), keeps its own KV cache across turns
(`keep_history`), and streams text back. The engine sends RKLLM only the text its cache lacks, and
clears the cache when a conversation does not continue what it holds. The prompt is rendered with
the bundle's own template; user text has control-token strings broken apart first, because RKLLM
tokenises the whole prompt and would otherwise read them as control tokens.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import models
from ..bundle import Manifest
from ..engine import BundleEngine, Conversation, EncodedImage, TurnStats, load_prompt, tiling_of, without_lead
from ..image import DEFAULT_MAX_PIXELS, ImageSource
from ..prompt import TEMPLATE, ImageLayout, PromptEncoder, PromptFormat, Turn
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
    out, controls = [], added_tokens(encoder)
    for kind, text in encoder.render(turns, system).items:
        assert isinstance(text, str)  # no known ids: RKLLM takes text
        out.append(block.sub(IMAGE_PLACEHOLDER, text) if kind == TEMPLATE else defuse(text, controls))
    return "".join(out)


class BoardModel(BundleEngine):
    """A bundle's NPU artifacts ready to answer. RKLLM holds one conversation in its cache, so sessions of
    one model take turns, not run at once. RKLLM samples by its own settings (greedy by default), not
    per request: of the sampling parameters only max_tokens applies."""

    def __init__(self, manifest: Manifest, encoder: PromptEncoder, vision: object, llm: RkllmModel,
                 load_times: dict[str, float] | None = None) -> None:  # fmt: skip
        self.manifest, self.prompt, self.tokenizer = manifest, encoder, encoder.tokenizer
        self.vision, self.llm = vision, llm
        self.load_times = load_times or {"llm": 0.0, "vision": 0.0}
        self.sent = ""  # the prompt text RKLLM holds in its cache

    @property
    def decode_bytes(self) -> int:
        """Unknown: the weights are RKLLM's own (0, so the bench reports no bandwidth ceiling)."""
        return 0

    def encode_image(self, source: ImageSource, *, max_tiles: int | None = None, max_pixels: int | None = None,
                     decode_limit: int = DEFAULT_MAX_PIXELS) -> EncodedImage:  # fmt: skip
        """As the CPU does, except that RKLLM takes each image as one start/content/end block: a family
        whose tiles are laid out otherwise (SmolVLM2's row/column tags) gets one tile per image."""
        f = self.prompt.format
        several = f.image_text(ImageLayout(3, (2, 1)))  # two tiles and a whole-image one
        one_block = several == f.image_start + f.image_token * several.count(f.image_token) + f.image_end
        return super().encode_image(source, max_tiles=max_tiles if one_block else 1, max_pixels=max_pixels,
                                    decode_limit=decode_limit)  # fmt: skip

    def count_tokens(self, conversation: Conversation) -> int:
        """RKLLM tokenises with the same tokenizer, so the count is the bundle's."""
        return len(self.prompt.encode(conversation.turns, conversation.system))

    def _features(self, images: Sequence[EncodedImage], stats: TurnStats) -> np.ndarray | None:
        """Features [n_image, tiles*rows, H] on the NPU; RKLLM needs one token count for all images."""
        if not images:
            return None
        counts = [img.tiles.count for img in images]
        if len(set(counts)) > 1:
            raise ValueError(f"RKLLM needs the same number of tiles for every image of a turn, got {counts}: "
                             "use --max-tiles 1, or send one image per turn")  # fmt: skip
        start = time.perf_counter()
        width = self.vision.shape[1]  # type: ignore[attr-defined]
        feats = [self.vision.encode(img.tiles.pixels).reshape(-1, width) for img in images]  # type: ignore[attr-defined]
        stats.vision_ms = (time.perf_counter() - start) * 1000
        return np.stack(feats)

    def stream(self, conversation: Conversation, params: SamplingParams, stats: TurnStats, *,
               shared: bool = False) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream RKLLM's answer to a conversation, sending it only what its cache lacks. (RKLLM re-uses
        its cache only when the conversation continues the whole of what it holds, so nothing of another
        client's prompt shows, shared or not.)"""
        full = rkllm_prompt(self.prompt, conversation.turns, conversation.system)
        if self.sent and full.startswith(self.sent):
            new = full[len(self.sent) :]
        else:  # first turn, or a history RKLLM does not hold (cleared, edited, another client's)
            self.llm.clear_kv_cache()
            self.sent, new = "", full
        n_new = new.count(IMAGE_PLACEHOLDER)
        images = conversation.images
        stats.images, stats.tiles = len(images), sum(img.tiles.count for img in images)
        stats.prompt_tokens = self.count_tokens(conversation)
        features = self._features(images[len(images) - n_new :] if n_new else [], stats)
        return without_lead(self._run(full, new, features, params, stats), self.prompt.template.answer_prefix)

    def _run(self, full: str, new: str, features: np.ndarray | None, params: SamplingParams,
             stats: TurnStats) -> Iterator[StreamChunk]:  # fmt: skip
        """RKLLM in a thread, its pieces as StreamChunks; the last one carries the finish reason."""
        begin = time.perf_counter()
        g = stats.generation = GenerationStats()
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        answer: list[str] = []
        perf: list[Perf] = []

        def on_text(text: str, token: int) -> bool:
            pieces.put((text, token))
            return not stop.is_set()

        def run() -> None:
            f, tile = self.prompt.format, tiling_of(self.manifest).tile
            try:
                perf.append(self.llm.run(new, on_text, images=features, keep_history=True,
                                         max_new_tokens=params.max_tokens, image_size=(tile, tile),
                                         image_tokens=(f.image_start, f.image_end, f.image_token)))  # fmt: skip
            except Exception as e:  # handed to the reader
                pieces.put(e)
            finally:
                pieces.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        held: StreamChunk | None = None  # one chunk behind, so the last can carry the finish reason
        try:
            while (item := pieces.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                if held is not None:
                    yield held
                elif not g.generated_tokens:
                    stats.ttft_ms = (time.perf_counter() - begin) * 1000
                answer.append(item[0])
                g.generated_tokens += 1
                held = StreamChunk(item[0], item[1], g)
            self._finish(stats, perf[0] if perf else Perf(), params)
            yield held or StreamChunk("", self.prompt.stop_ids[0], g)  # an empty answer ends at once
        finally:
            stop.set()
            self.llm.abort() if worker.is_alive() else None
            worker.join()
            ended = g.finish_reason == "stop"  # RKLLM's cache then holds the end-of-turn token too
            self.sent = full + "".join(answer) + (self.prompt.template.assistant[1] if ended else "")

    @staticmethod
    def _finish(stats: TurnStats, p: Perf, params: SamplingParams) -> None:
        """RKLLM's figures into the stats. Like the CPU's, the count of generated tokens includes the
        stop token when the answer ended by itself (RKLLM's own count has none)."""
        g = stats.generation
        produced = max(p.generate_tokens, g.generated_tokens)
        g.finish_reason = "length" if produced >= params.max_tokens else "stop"
        g.prompt_tokens, g.prefill_ms, g.decode_ms = p.prefill_tokens, p.prefill_ms, p.generate_ms
        g.generated_tokens = produced + (g.finish_reason == "stop")
        stats.cached_tokens = max(0, stats.prompt_tokens - p.prefill_tokens)
        stats.memory_mb = p.memory_mb


def load_board(bundle: str | Path, *, library: str = "librkllmrt.so", target: str = "rk3588") -> BoardModel:
    """The NPU engine for a bundle with its `export-rk3588` artifacts (on the board itself)."""

    from ..bundle import open_bundle
    from .rknn_lite import RknnError, RknnVisionEncoder

    folder = Path(bundle)
    m = open_bundle(folder)
    if "board" in (not_yet := models.family(m.model.family).NOT_YET):
        raise BoardError(not_yet["board"])
    for part in (f"vision_{target}", f"llm_{target}"):
        if part not in m.parts:
            raise BoardError(f"{folder} has no {part} artifact: run `edgevlm export-rk3588` (and the .rkllm recipe)")
    encoder = load_prompt(folder, m)
    try:
        start = time.perf_counter()
        llm = RkllmModel(folder / m.parts[f"llm_{target}"].file, library=library, max_context=m.context_length)
        middle = time.perf_counter()
        vision = RknnVisionEncoder.load(folder / m.parts[f"vision_{target}"].file, m.model.tokens_per_tile,
                                        m.model.text.hidden_size, (m.model.image_mean, m.model.image_std))  # fmt: skip
        load_times = {"llm": middle - start, "vision": time.perf_counter() - middle}
    except ImportError:
        raise BoardError("rknn-toolkit-lite2 is not installed (pip install rknn-toolkit-lite2 on the board)") from None
    except (RknnError, RkllmError) as e:
        raise BoardError(str(e)) from None
    return BoardModel(m, encoder, vision, llm, load_times)
