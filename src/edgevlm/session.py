"""A conversation: history, images and the exact token ids whose KV rows the model caches.

Each new turn appends to the ids of the previous one (generated tokens included), so the model
prefills only the new turn. When a turn would not fit the context, the oldest turns are dropped
(`dropped_turns` says how many) and the conversation is re-rendered from its text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .image import ImageSource
from .prompt import Turn
from .runtime.decoder import ContextOverflow
from .runtime.generate import StreamChunk
from .runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from .model import VLM, EncodedImage, TurnStats


class ChatSession:
    def __init__(self, model: VLM, *, system: str | None = None, max_tiles: int | None = None) -> None:
        self.model = model
        self.system = system
        self.max_tiles = max_tiles
        self.clear()

    def clear(self) -> None:
        """Forget the conversation (the model's cache is re-used only where it still matches)."""
        self.turns: list[Turn] = []
        self.images: list[EncodedImage] = []  # every image of `turns`, in order
        self.ids: list[int] = []
        self.answer_ended = True
        self.last_stats: TurnStats | None = None
        self.dropped_turns = 0

    def _reserve(self, params: SamplingParams) -> int:
        """Room kept for the answer when deciding whether a prompt fits."""
        return min(params.max_tokens, self.model.context_length // 4)

    def _render(self, turn: Turn, new_images: list[EncodedImage], params: SamplingParams):
        """ids and images for history + `turn`, dropping the oldest turns if they do not fit."""
        limit = self.model.context_length - self._reserve(params)
        self.dropped_turns = 0
        if self.ids:
            ids = self.ids + self.model.prompt.continue_ids(self.answer_ended, turn)
            if len(ids) <= limit:
                return ids, self.images + new_images
        turns, images = list(self.turns), list(self.images)
        while True:
            ids = self.model.prompt.encode([*turns, turn], self.system)
            if len(ids) <= limit or not turns:
                break
            dropped = turns.pop(0)
            images = images[len(dropped.image_tiles) :]
            self.dropped_turns += 1
        if len(ids) > limit:
            tiles = sum(turn.image_tiles)
            raise ContextOverflow(
                f"this question needs {len(ids)} prompt tokens ({tiles} image tiles x "
                f"{self.model.config.tokens_per_tile}) plus {self._reserve(params)} for the answer, but the "
                f"context holds {self.model.context_length}: use fewer tiles (--max-tiles) or convert with a "
                "larger --max-context"
            )
        self.turns, self.images = turns, images
        return ids, images + new_images

    def ask(self, question: str, images: Sequence[ImageSource] = (), params: SamplingParams | None = None
            ) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream the answer to one user turn; the turn and its (possibly partial) answer join the history.

        Bad images and prompts that cannot fit raise here, before any streaming starts."""
        from .model import TurnStats

        params = params or SamplingParams()
        new_images = [self.model.encode_image(src, max_tiles=self.max_tiles) for src in images]
        turn = Turn(question, tuple(img.tiles.count for img in new_images))
        ids, all_images = self._render(turn, new_images, params)
        stats = self.last_stats = TurnStats()
        return self._run(question, turn, ids, all_images, params, stats)

    def _run(self, question: str, turn: Turn, ids: list[int], all_images: list[EncodedImage],
             params: SamplingParams, stats: TurnStats) -> Iterator[StreamChunk]:  # fmt: skip
        generated: list[int] = []
        try:
            for chunk in self.model.generate(ids, all_images, params, stats):
                generated.append(chunk.token)
                yield chunk
        finally:
            stop = set(params.stop_ids or self.model.prompt.stop_ids)
            answer = self.model.tokenizer.decode([t for t in generated if t not in stop], skip_special_tokens=True)
            self.turns.append(Turn(question, turn.image_tiles, answer))
            self.images = all_images
            self.ids = ids + generated
            self.answer_ended = bool(generated) and generated[-1] in stop

    def chat(self, question: str, images: Sequence[ImageSource] = (), *, stream: bool = False, max_tokens: int = 512,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
             seed: int | None = None) -> str | Iterator[str]:  # fmt: skip
        """The answer as a string, or with stream=True an iterator of text pieces."""
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                repetition_penalty=repetition_penalty, seed=seed)  # fmt: skip
        pieces = (chunk.text for chunk in self.ask(question, images, params))
        return pieces if stream else "".join(pieces)
