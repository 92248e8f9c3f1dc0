"""Language models: prefill embeddings, decode tokens, keep (and truncate) a KV cache."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from ..config import TextConfig
from ..embedding import EmbeddingTable
from .ort import create_session


class ContextOverflow(ValueError):
    """A prompt or answer would not fit in the context window."""


class LanguageModel(Protocol):
    """A decoder with a KV cache. `position` is the number of tokens in the cache."""

    max_context: int
    position: int

    def embed(self, ids: list[int]) -> np.ndarray: ...
    def prefill(self, embeds: np.ndarray, position: int | None = None) -> np.ndarray: ...
    def decode(self, token: int) -> np.ndarray: ...
    def truncate(self, position: int) -> None: ...


class OrtLanguageModel:
    """The decoder graph on ONNX Runtime with one preallocated cache buffer per layer.

    Past and present KV are bound to the same buffer (IO binding), so a step writes only its new
    rows and nothing is copied per token. Truncating the cache is moving the position back: rows
    past it are ignored by the attention and overwritten by the next prefill.
    """

    def __init__(self, model: str | Path, embedding: EmbeddingTable, cfg: TextConfig, *, max_context: int,
                 threads: int | None = None, prefill_chunk: int = 512, cache: bool = True) -> None:  # fmt: skip
        self.session = create_session(model, threads=threads, cache=cache)
        self.embedding = embedding
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk
        self.position = 0
        self._binding = self.session.io_binding()
        shape = [1, cfg.num_kv_heads, max_context, cfg.head_dim]
        self._cache = []
        for i in range(cfg.num_layers):
            for kv in ("key", "value"):
                buf = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32)
                self._binding.bind_ortvalue_input(f"past.{i}.{kv}", buf)
                self._binding.bind_ortvalue_output(f"present.{i}.{kv}", buf)
                self._cache.append(buf)
        self._logits = ort.OrtValue.ortvalue_from_shape_and_type([1, cfg.vocab_size], np.float32)
        self._binding.bind_ortvalue_output("logits", self._logits)

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.embedding(ids)

    def _check_room(self, new_tokens: int) -> None:
        if self.position + new_tokens > self.max_context:
            raise ContextOverflow(
                f"context full: {self.position} cached + {new_tokens} new tokens > {self.max_context}"
            )

    def _step(self, embeds: np.ndarray) -> np.ndarray:
        self._check_room(len(embeds))
        total = self.position + len(embeds)
        b = self._binding
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None], dtype=np.float32))
        b.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, dtype=np.int32))
        self.session.run_with_iobinding(b)
        self.position = total
        return self._logits.numpy()[0].copy()  # the bound buffer is overwritten by the next step

    def prefill(self, embeds: np.ndarray, position: int | None = None) -> np.ndarray:
        """Append embeddings [S,H] at `position` (default: the end); the last position's logits."""
        if position is not None:
            self.truncate(position)
        if len(embeds) == 0:
            raise ValueError("prefill needs at least one embedding")
        self._check_room(len(embeds))  # before any chunk is written
        for start in range(0, len(embeds), self.prefill_chunk):
            logits = self._step(embeds[start : start + self.prefill_chunk])
        return logits

    def decode(self, token: int) -> np.ndarray:
        return self._step(self.embedding([token]))

    def truncate(self, position: int) -> None:
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot truncate to {position}: the cache holds {self.position} tokens")
        self.position = position
