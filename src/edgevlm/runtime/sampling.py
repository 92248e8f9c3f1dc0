"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..structured import ResponseFormat

DEFAULT_MAX_TOKENS = 512  # an answer's length when nobody says (the server caps it to the room left)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 is greedy (deterministic)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no nucleus cut
    repetition_penalty: float = 1.0  # 1: off; >1 discourages tokens already seen (HF's rule)
    seed: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop_ids: tuple[int, ...] = ()
    response_format: ResponseFormat | None = None  # the answer is JSON following this schema

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.temperature < math.inf, f"temperature must be >= 0 and finite, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.seed is None or 0 <= self.seed < 2**64, f"seed must be in [0, 2^64), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Sampler:
    """Stateful only in its random generator, so a seed makes a whole answer reproducible."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, seen: Iterable[int] = ()) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if p.repetition_penalty != 1.0:
            logits = logits.copy()
            ids = np.fromiter(set(seen), dtype=np.int64)
            if ids.size:
                v = logits[ids]
                logits[ids] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        logits = logits / p.temperature
        if p.top_k and p.top_k < logits.size:
            cut = np.partition(logits, -p.top_k)[-p.top_k]
            logits = np.where(logits >= cut, logits, -np.inf)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, p.top_p)) + 1]  # smallest set reaching top_p
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(probs.size, p=probs))
