"""A conversation over any engine (CPU or NPU): history, images, and the one context policy.

Each question is sent with the whole conversation; the engine re-uses what its cache already holds,
so a follow-up costs only its new tokens. When a question would not fit the context (with room kept
for the answer), the oldest turns are dropped (`dropped_turns` says how many), on both backends alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .engine import Conversation, TurnStats
from .image import ImageSource
from .prompt import Turn
from .runtime.decoder import ContextOverflow
from .runtime.generate import StreamChunk
from .runtime.sampling import SamplingParams
from .structured import ANY_OBJECT, ResponseFormat, check
from .video import NO_BOUNDS, FrameSampling, VideoSource

if TYPE_CHECKING:
    from .engine import EncodedImage, EncodedVideo, Engine


def answer_room(context_length: int, max_tokens: int) -> int:
    """Room kept for the answer when deciding whether a prompt fits."""
    return min(max_tokens, context_length // 4)


def video_budget(context_length: int, max_tokens: int) -> int:
    """Prompt tokens the videos of a question may take when the user bounds no frame count: three quarters
    of what the context holds besides the answer (InternVL3's 8 frames of 256 tokens fit 4096 tokens)."""
    return (context_length - answer_room(context_length, max_tokens)) * 3 // 4


class ChatSession:
    def __init__(self, engine: Engine, *, system: str | None = None, max_tiles: int | None = None,
                 max_pixels: int | None = None, frames: FrameSampling = NO_BOUNDS) -> None:  # fmt: skip
        self.engine = engine
        self.system = system
        self.max_tiles, self.max_pixels = max_tiles, max_pixels  # per image: tiles, and area once resized
        self.frames = frames  # each video's frames: how many at most, at what rate
        self.clear()

    def clear(self) -> None:
        """Forget the conversation (the engine's cache is re-used only where it still matches)."""
        self.turns: list[Turn] = []
        self.images: list[EncodedImage] = []  # every image of `turns`, in order
        self.videos: list[EncodedVideo] = []  # every video of `turns`, in order
        self.last_stats: TurnStats | None = None
        self.dropped_turns = 0

    def _reserve(self, params: SamplingParams) -> int:
        return answer_room(self.engine.context_length, params.max_tokens)

    def _fit(self, turn: Turn, new_images: list[EncodedImage], new_videos: list[EncodedVideo],
             params: SamplingParams) -> Conversation:  # fmt: skip
        """History + `turn`, dropping the oldest turns while they do not fit."""
        limit = self.engine.context_length - self._reserve(params)
        turns, images, videos = list(self.turns), list(self.images), list(self.videos)
        self.dropped_turns = 0
        while True:
            conversation = Conversation([*turns, turn], images + new_images, self.system, videos + new_videos)
            needed = self.engine.count_tokens(conversation)
            if needed <= limit or not turns:
                break
            dropped = turns.pop(0)
            images, videos = images[len(dropped.images) :], videos[len(dropped.videos) :]
            self.dropped_turns += 1
        if needed > limit:
            frames = sum(v.frames for v in turn.videos)
            raise ContextOverflow(
                f"this question needs {needed} prompt tokens ({sum(i.tiles for i in turn.images)} image tiles"
                f"{f', {frames} video frames' if frames else ''}) plus {self._reserve(params)} for the answer, but "
                f"the context holds {self.engine.context_length}: use fewer tiles, frames or smaller images "
                "(--max-tiles, --frames, --max-pixels) or a bundle with a larger context"
            )
        self.turns, self.images, self.videos = turns, images, videos
        return conversation

    def ask(self, question: str, images: Sequence[ImageSource] = (), params: SamplingParams | None = None, *,
            videos: Sequence[VideoSource] = ()) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream the answer to one user turn; the turn and its (possibly partial) answer join the history.

        Bad images, bad videos and prompts that cannot fit raise here, before any streaming starts."""
        params = params or SamplingParams()
        new_images = [self.engine.encode_image(src, max_tiles=self.max_tiles, max_pixels=self.max_pixels)
                      for src in images]  # fmt: skip
        budget = video_budget(self.engine.context_length, params.max_tokens) // max(1, len(videos))
        new_videos = [self.engine.encode_video(src, frames=self.frames, max_pixels=self.max_pixels,
                                               budget=budget) for src in videos]  # fmt: skip
        turn = Turn(question, tuple(img.tiles.layout for img in new_images),
                    videos=tuple(v.layout for v in new_videos))  # fmt: skip
        conversation = self._fit(turn, new_images, new_videos, params)
        self.last_stats = TurnStats()
        return self._run(conversation, params, self.last_stats)

    def _run(self, conversation: Conversation, params: SamplingParams, stats: TurnStats) -> Iterator[StreamChunk]:
        pieces: list[str] = []
        try:
            for chunk in self.engine.stream(conversation, params, stats):
                pieces.append(chunk.text)
                yield chunk
        finally:
            turn = conversation.turns[-1]
            self.turns.append(Turn(turn.question, turn.images, "".join(pieces), turn.videos))
            self.images, self.videos = conversation.images, conversation.videos

    def chat(self, question: str, images: Sequence[ImageSource] = (), *, videos: Sequence[VideoSource] = (),
             stream: bool = False, schema: dict[str, Any] | None = None, json: bool = False,
             **sampling: Any) -> str | Iterator[str]:  # fmt: skip
        """The answer as a string, or with stream=True an iterator of text pieces. `images` and `videos` are
        paths or bytes (images also PIL images). `sampling` takes the fields of SamplingParams (max_tokens,
        temperature, top_p, top_k, repetition_penalty, seed). With `schema` (a JSON schema) or `json=True`
        (any JSON object) the answer is such a JSON document."""
        if schema is not None or json:
            sampling["response_format"] = ResponseFormat(schema if schema is not None else dict(ANY_OBJECT))
            check(sampling["response_format"])  # a schema that cannot compile fails here, before any work
        pieces = (chunk.text for chunk in self.ask(question, images, SamplingParams(**sampling), videos=videos))
        return pieces if stream else "".join(pieces)

