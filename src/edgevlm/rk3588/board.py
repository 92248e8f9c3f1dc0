"""The NPU engine on the RK3588: RKNN-Lite for the vision encoder, RKLLM for the language model.

It implements the same interface as the CPU engine (engine.py): a Conversation in, StreamChunks out.
RKLLM works per turn: it takes the user's input as text, with `<image>` where each image's embeddings
go (it expands that to the family's image tokens itself), wraps it in the chat template it was given
(the family's system block, user prefix, and user postfix with the assistant prefix), and streams
text back. As in Rockchip's demos the default is `keep_history=0`: each turn sends the whole
conversation (earlier turns rendered inside the input, every image again; image features are
computed once per image), which is correct by construction. Re-using RKLLM's cache across turns
(`keep_history=1`) is an option: it sends only the new turn when the runtime's cache holds exactly the
conversation so far, ended by the model's own stop, and otherwise clears it and sends everything.
User text has control-token strings broken apart first, because RKLLM tokenises the whole input and
would otherwise read them as control tokens.
"""

from __future__ import annotations

import atexit
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..bundle import Manifest
from ..engine import BundleEngine, Conversation, EncodedImage, EncodedVideo, TurnStats, load_prompt, without_lead
from ..image import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ..prompt import TEMPLATE, ImageLayout, PromptEncoder, PromptFormat, Turn
from ..runtime.generate import GenerationStats, StreamChunk
from ..runtime.sampling import SamplingParams
from ..video import VideoSource
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


@dataclass(frozen=True)
class RkllmTurn:
    """A conversation split as RKLLM puts it together: template pieces around the input text."""

    system: str  # the opening and the system block: RKLLM's system prompt
    prefix: str  # before each user input
    postfix: str  # after it: the end of the user turn and the assistant's header
    full: str  # system + prefix + the whole conversation's input + postfix

    @property
    def text(self) -> str:
        """The input for a run that starts from an empty cache."""
        return self.full[len(self.system) + len(self.prefix) : len(self.full) - len(self.postfix)]


def rkllm_turn(encoder: PromptEncoder, turns: Sequence[Turn], system: str | None) -> RkllmTurn:
    t = encoder.format.template
    head, full = rkllm_prompt(encoder, [], system), rkllm_prompt(encoder, turns, system)
    prefix, postfix = t.user[0], t.user[1] + t.assistant[0]
    if not (full.startswith(head + prefix) and full.endswith(postfix)):
        raise AssertionError("the rendered conversation does not have the template's shape")
    return RkllmTurn(head, prefix, postfix, full)


NO_JSON = ("JSON answers need the logits of every step, and the RKLLM runtime samples inside its library: "
           "use the CPU backend (--backend cpu) for them")


class BoardModel(BundleEngine):
    """A bundle's NPU artifacts ready to answer. RKLLM holds one conversation in its cache, so sessions of
    one model take turns, not run at once. RKLLM samples by its own settings (greedy by default), not
    per request: of the sampling parameters only max_tokens applies."""

    def __init__(self, manifest: Manifest, encoder: PromptEncoder, vision: object, llm: RkllmModel,
                 load_times: dict[str, float] | None = None, *, keep_history: bool = False) -> None:  # fmt: skip
        self.manifest, self.prompt, self.tokenizer = manifest, encoder, encoder.tokenizer
        self.vision, self.llm = vision, llm
        self.load_times = load_times or {"llm": 0.0, "vision": 0.0}
        self.keep_history = keep_history
        self.family = models.family(manifest.model.family)
        self.form = self.family.npu_vision(manifest.model)  # the .rknn's fixed input
        self.held: str | None = None  # with keep_history: the conversation RKLLM's cache holds (full form)

    json_answers = False  # RKLLM samples inside its library: no logits to mask

    def load_vision(self) -> None:
        """Loaded with the model: the NPU's memory is reserved up front, as Rockchip's demos do."""

    def close(self) -> None:
        """Release the runtimes (RKLLM's model, RKNN-Lite's context); also run at exit."""
        self.llm.close()
        getattr(self.vision, "close", lambda: None)()

    @property
    def decode_bytes(self) -> int:
        """Unknown: the weights are RKLLM's own (0, so the bench reports no bandwidth ceiling)."""
        return 0

    def encode_image(self, source: ImageSource, *, max_tiles: int | None = None, max_pixels: int | None = None,
                     decode_limit: int = DEFAULT_MAX_PIXELS) -> EncodedImage:  # fmt: skip
        """As the CPU does, except that RKLLM takes each image as one start/content/end block: a family
        whose tiles are laid out otherwise (SmolVLM2's row/column tags) gets one tile per image; and a
        family whose .rknn takes float inputs (Qwen2-VL) gets its fixed size (max_pixels does not apply)."""
        if self.form.tiles is not None:
            return self.encoded(self.form.tiles(load_image(source, max_pixels=decode_limit)))
        f = self.prompt.format
        several = f.image_text(ImageLayout(3, (2, 1)))  # two tiles and a whole-image one
        one_block = several == f.image_start + f.image_token * several.count(f.image_token) + f.image_end
        return super().encode_image(source, max_tiles=max_tiles if one_block else 1, max_pixels=max_pixels,
                                    decode_limit=decode_limit)  # fmt: skip

    def encode_video(self, source: VideoSource, **limits: object) -> EncodedVideo:
        """Not on the NPU yet: RKLLM takes a turn's images as blocks of one size, with no text between them,
        which no family's frame layout is."""
        raise BoardError("videos are not supported on the NPU backend yet; run with --backend cpu")

    def count_tokens(self, conversation: Conversation) -> int:
        """RKLLM tokenises with the same tokenizer, so the count is the bundle's."""
        return len(self.prompt.encode(conversation.turns, conversation.system))

    def _features(self, images: Sequence[EncodedImage], stats: TurnStats) -> np.ndarray | None:
        """Features [n_image, tiles*rows, H], computed on the NPU once per image; RKLLM needs one token count
        for all images of a run."""
        if not images:
            return None
        counts = [img.tiles.count for img in images]
        if len(set(counts)) > 1:
            raise ValueError(f"RKLLM needs the same number of tiles for every image of a conversation, got {counts}: "
                             "use --max-tiles 1, or one image per conversation")  # fmt: skip
        start = time.perf_counter()
        width = self.vision.shape[1]  # type: ignore[attr-defined]
        for img in images:
            if img.features is None:
                img.features = self._encode(img).reshape(-1, width)
                self.image_cache.put(img.digest, img.features)
        stats.vision_ms = (time.perf_counter() - start) * 1000
        return np.stack([img.features for img in images])

    def _encode(self, img: EncodedImage) -> np.ndarray:
        v: Any = self.vision
        if self.form.tiles is None:
            return v.encode(img.tiles.pixels)
        return np.concatenate([v.run(feeds) for feeds in self.family.vision_inputs(self.manifest.model, img.tiles)])

    def stream(self, conversation: Conversation, params: SamplingParams, stats: TurnStats, *,
               shared: bool = False) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream RKLLM's answer to a conversation. (With keep_history the cache is re-used only when the
        conversation continues the whole of what it holds, so nothing of another client's prompt shows.)"""
        if params.response_format is not None:
            raise BoardError(NO_JSON)
        turn = rkllm_turn(self.prompt, conversation.turns, conversation.system)
        text, held = turn.text, self.held if self.keep_history else None
        reused = held is not None and turn.full.startswith(held + turn.prefix)
        if reused:
            text = turn.full[len(held) + len(turn.prefix) : len(turn.full) - len(turn.postfix)]  # the new turn only
        elif self.keep_history:
            self.llm.clear_kv_cache()
        self.held = None  # until this run ends by the model's own stop
        images = conversation.images
        n_new = text.count(IMAGE_PLACEHOLDER)
        if n_new > len(images) or (not reused and n_new != len(images)):  # every slot sent has its image
            raise ValueError(f"the conversation has {n_new} image slots but {len(images)} images")
        stats.images, stats.tiles = len(images), sum(img.tiles.count for img in images)
        stats.prompt_tokens = self.count_tokens(conversation)
        features = self._features(images[len(images) - n_new :] if n_new else [], stats)
        self.llm.set_chat_template(turn.system, turn.prefix, turn.postfix)
        return without_lead(self._run(turn, text, features, params, stats), self.prompt.template.answer_prefix)

    def _run(self, turn: RkllmTurn, text: str, features: np.ndarray | None, params: SamplingParams,
             stats: TurnStats) -> Iterator[StreamChunk]:  # fmt: skip
        """RKLLM in a thread, its pieces as StreamChunks; the last one carries the finish reason. Stopping
        early (the consumer closes the stream) aborts the run from this thread, as Rockchip's demos do."""
        begin = time.perf_counter()
        g = stats.generation = GenerationStats()
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        answer: list[str] = []
        perf: list[Perf] = []

        def on_text(piece: str, token: int) -> bool:
            pieces.put((piece, token))
            return not stop.is_set()

        def run() -> None:
            f, side = self.prompt.format, self.form.side
            try:
                perf.append(self.llm.run(text, on_text, images=features, keep_history=self.keep_history,
                                         max_new_tokens=params.max_tokens, image_size=(side, side),
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
            if worker.is_alive():
                self.llm.abort()
            worker.join()
            if self.keep_history and g.finish_reason == "stop":
                # RKLLM's cache then ends with the stop token the model generated.
                self.held = turn.full + "".join(answer) + self.prompt.template.stop[0]

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


def load_board(bundle: str | Path, *, library: str = "librkllmrt.so", target: str = "rk3588",
               keep_history: bool = False) -> BoardModel:  # fmt: skip
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
    board = BoardModel(m, encoder, vision, llm, load_times, keep_history=keep_history)
    atexit.register(board.close)  # rkllm_destroy and the RKNN-Lite release, as Rockchip's demos end
    return board
