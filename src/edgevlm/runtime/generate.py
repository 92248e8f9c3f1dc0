"""The generation loop: prefill, then sample and decode token by token, streaming text.

`generate_step` yields token ids; `stream_generate` turns them into text pieces that never split a
UTF-8 character and carries timing stats. Every front end (chat, API, server, bench) sits on
`stream_generate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from ..structured import JsonConstraint
from .decoder import LanguageModel
from .sampling import Sampler, SamplingParams


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefill_ms: float = 0.0
    generated_tokens: int = 0
    decode_ms: float = 0.0  # time in decode steps (the first token comes from the prefill)
    finish_reason: str | None = None  # "stop", "length" (max tokens) or "context" (window full)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / (self.prefill_ms / 1000) if self.prefill_ms else 0.0

    @property
    def decode_tok_s(self) -> float:
        steps = max(self.generated_tokens - 1, 0)
        return steps / (self.decode_ms / 1000) if self.decode_ms else 0.0


@dataclass
class StreamChunk:
    text: str  # new text since the previous chunk (may be empty while a character is incomplete)
    token: int
    stats: GenerationStats = field(repr=False)

    @property
    def finish_reason(self) -> str | None:
        return self.stats.finish_reason


def generate_step(lm: LanguageModel, embeds: np.ndarray, params: SamplingParams, *, seen: Sequence[int] = (),
                  position: int | None = None, stats: GenerationStats | None = None,
                  rope: np.ndarray | None = None,
                  constrain: Callable[[int], JsonConstraint] | None = None) -> Iterator[int]:  # fmt: skip
    """Prefill `embeds` at `position` (at rotary positions `rope`, default: counting on), then yield sampled
    tokens until a stop id, max tokens or a full context. The stop token is yielded but not fed back, so
    the cache ends just before it. `constrain(vocabulary size)` gives the mask of a structured answer."""
    stats = stats if stats is not None else GenerationStats()
    sampler, history = Sampler(params), list(seen)
    t0 = time.perf_counter()
    logits = lm.prefill(embeds, position, rope)
    stats.prompt_tokens, stats.prefill_ms = len(embeds), (time.perf_counter() - t0) * 1000
    constraint = constrain(len(logits)) if constrain else None
    while True:
        token = sampler(constraint.mask(logits) if constraint else logits, history)
        if constraint and token not in params.stop_ids:
            constraint.consume(token)
        history.append(token)
        stats.generated_tokens += 1
        if token in params.stop_ids:
            stats.finish_reason = "stop"
        elif stats.generated_tokens >= params.max_tokens:
            stats.finish_reason = "length"
        elif lm.position + 1 > lm.max_context:
            stats.finish_reason = "context"
        yield token
        if stats.finish_reason:
            return
        t0 = time.perf_counter()
        logits = lm.decode(token)
        stats.decode_ms += (time.perf_counter() - t0) * 1000


class StreamDecoder:
    """Token ids to text pieces; holds back bytes of a character that is not complete yet."""

    def __init__(self, tokenizer: Tokenizer, skip: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip = set(skip)
        self._pending: list[int] = []

    def push(self, token: int) -> str:
        if token in self.skip:
            return self.flush()
        self._pending.append(token)
        text = self.tokenizer.decode(self._pending, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        self._pending.clear()
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self._pending, skip_special_tokens=True) if self._pending else ""
        self._pending.clear()
        return text


def stream_generate(lm: LanguageModel, tokenizer: Tokenizer, embeds: np.ndarray, params: SamplingParams, *,
                    seen: Sequence[int] = (), position: int | None = None,
                    rope: np.ndarray | None = None) -> Iterator[StreamChunk]:  # fmt: skip
    """Generate and yield text pieces; the last chunk has `finish_reason` set."""
    stats = GenerationStats()
    decoder = StreamDecoder(tokenizer, skip=params.stop_ids)
    fmt = params.response_format
    if fmt and not params.stop_ids:
        raise ValueError("a JSON answer needs a stop token (its end)")
    constrain = (lambda n: JsonConstraint(fmt, tokenizer, n, params.stop_ids[0])) if fmt else None
    for token in generate_step(lm, embeds, params, seen=seen, position=position, stats=stats, rope=rope,
                               constrain=constrain):  # fmt: skip
        text = decoder.push(token)
        if stats.finish_reason:
            text += decoder.flush()
        yield StreamChunk(text, token, stats)
