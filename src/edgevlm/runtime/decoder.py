"""Language models: prefill embeddings, decode tokens, keep (and truncate) a KV cache."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from ..config import TextConfig
from ..embedding import EmbeddingTable
from .ort import create_session
from .rope import rope_angles


class ContextOverflow(ValueError):
    """A prompt or answer would not fit in the context window."""


class LanguageModel(Protocol):
    """A decoder with a KV cache. `position` is the number of tokens in the cache.

    `rope` gives the rotary positions [S] (or M-RoPE's [S,3]) of the tokens prefilled; by default they
    continue from the largest cached one, one per token."""

    max_context: int
    position: int

    def embed(self, ids: list[int]) -> np.ndarray: ...
    def prefill(self, embeds: np.ndarray, position: int | None = None, rope: np.ndarray | None = None
                ) -> np.ndarray: ...  # fmt: skip
    def decode(self, token: int) -> np.ndarray: ...
    def truncate(self, position: int) -> None: ...


class OrtLanguageModel:
    """The decoder graph on ONNX Runtime with one preallocated cache buffer per layer.

    Past and present KV are bound to the same buffer (IO binding), so a step writes only its new
    rows and nothing is copied per token. Truncating the cache is moving the position back: rows
    past it are ignored by the attention and overwritten by the next prefill. The rotary tables are
    bound buffers too: each step writes its tokens' cos and sin into their first rows.
    """

    def __init__(self, model: str | Path, embedding: EmbeddingTable, cfg: TextConfig, *, max_context: int,
                 threads: int | None = None, prefill_chunk: int = 512, cache: bool = True) -> None:  # fmt: skip
        self.session = create_session(model, threads=threads, cache=cache)
        self.text = cfg
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
        # Rotary tables of max_context rows (the op wants at least the cache's length), shared with ORT.
        self._tables = {f: np.zeros((max_context, cfg.head_dim // 2), dtype=np.float32) for f in ("cos", "sin")}
        for f, table in self._tables.items():
            self._binding.bind_ortvalue_input(f"rope_{f}", ort.OrtValue.ortvalue_from_numpy(table))
        # The rotary position of each cached row: one number, or M-RoPE's (time, height, width).
        axes = (len(cfg.mrope_section),) if cfg.mrope_section else ()
        self._rope = np.zeros((max_context, *axes), dtype=np.int64)

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.embedding(ids)

    def _check_room(self, new_tokens: int) -> None:
        if self.position + new_tokens > self.max_context:
            raise ContextOverflow(
                f"context full: {self.position} cached + {new_tokens} new tokens > {self.max_context}"
            )

    def next_rope(self) -> int:
        """The rotary position that follows the last cached token."""
        return int(self._rope[: self.position].max()) + 1 if self.position else 0  # M-RoPE: the largest, + 1

    def _step(self, embeds: np.ndarray, rope: np.ndarray) -> np.ndarray:
        self._check_room(len(embeds))
        n, total = len(embeds), self.position + len(embeds)
        angles = rope_angles(self.text, rope)
        self._tables["cos"][:n], self._tables["sin"][:n] = np.cos(angles), np.sin(angles)
        self._rope[self.position : total] = rope if rope.ndim == self._rope.ndim else rope[:, None]  # text: all axes
        b = self._binding
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None], dtype=np.float32))
        b.bind_cpu_input("position_ids", np.arange(n, dtype=np.int64)[None])
        b.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, dtype=np.int32))
        self.session.run_with_iobinding(b)
        self.position = total
        return self._logits.numpy()[0].copy()  # the bound buffer is overwritten by the next step

    def prefill(self, embeds: np.ndarray, position: int | None = None, rope: np.ndarray | None = None
                ) -> np.ndarray:  # fmt: skip
        """Append embeddings [S,H] at `position` (default: the end), at rotary positions `rope` [S] (default:
        continuing from the cached tokens'); the last position's logits."""
        if position is not None:
            self.truncate(position)
        if len(embeds) == 0:
            raise ValueError("prefill needs at least one embedding")
        self._check_room(len(embeds))  # before any chunk is written
        rope = self.next_rope() + np.arange(len(embeds)) if rope is None else np.asarray(rope, dtype=np.int64)
        if rope.shape[:1] != (len(embeds),) or rope.shape[1:] not in ((), self._rope.shape[1:]):
            raise ValueError(f"rope positions {list(rope.shape)} do not match the {len(embeds)} embeddings")
        for start in range(0, len(embeds), self.prefill_chunk):
            end = start + self.prefill_chunk
            logits = self._step(embeds[start:end], rope[start:end])
        return logits

    def decode(self, token: int) -> np.ndarray:
        return self._step(self.embedding([token]), np.array([self.next_rope()]))

    def truncate(self, position: int) -> None:
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot truncate to {position}: the cache holds {self.position} tokens")
        self.position = position
