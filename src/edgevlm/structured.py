"""Answers that are JSON following a schema: llguidance's matcher masks the logits at every step.

A small model asked nicely for JSON fails now and then; with the mask every token it can pick keeps the
answer a valid prefix of a document the schema accepts, and the stop token is allowed only once the
document is complete. Needs the `json` extra (`pip install edgevlm[json]`), imported on first use.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Tokenizer

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # OpenAI's {"type": "json_object"}
# Fixed separators, no free whitespace between tokens: a model then cannot spend its answer on blank lines
# (random weights did, until max_tokens); a schema's own "x-guidance" options still apply over these.
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaError(ValueError):
    """A schema the grammar engine cannot compile, or the engine is not installed."""


@dataclass(frozen=True)
class ResponseFormat:
    """What the answer must be: a JSON document following `schema` (any JSON object by default)."""

    schema: dict[str, Any] = field(default_factory=lambda: dict(ANY_OBJECT))

    def __hash__(self) -> int:  # a dict field: hash its canonical text (SamplingParams is hashable)
        return hash(self.text)

    @property
    def text(self) -> str:
        return json.dumps(self.schema, sort_keys=True)


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.numpy  # its bitmask helper
    except ImportError:
        raise SchemaError("JSON answers need llguidance: pip install 'edgevlm[json]'") from None
    return llguidance


@functools.lru_cache(maxsize=4)
def _vocabulary(tokenizer: Tokenizer, n_vocab: int, eos: int) -> Any:
    """llguidance's view of a tokenizer (about a second to build for a 151k vocabulary: kept)."""
    return _llguidance().LLTokenizer(tokenizer.to_str(), n_vocab=n_vocab, eos_token=eos)


@functools.lru_cache(maxsize=32)
def _grammar(text: str) -> str:
    """The schema compiled to llguidance's grammar, checked; a SchemaError naming what is wrong."""
    matcher = _llguidance().LLMatcher
    try:
        grammar = matcher.grammar_from_json_schema(text, defaults=COMPACT)
    except ValueError as e:
        raise _unusable(str(e)) from None
    failed, messages = matcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise _unusable(messages[0])
    return grammar


def _unusable(detail: str) -> SchemaError:
    return SchemaError(f"the JSON schema cannot be used: {' '.join(detail.split())[:300]}")


def check(fmt: ResponseFormat) -> None:
    """Raise SchemaError now (before any work) if `fmt`'s schema cannot be compiled."""
    _grammar(fmt.text)


class JsonConstraint:
    """One answer's matcher: which tokens may come next, fed each token chosen."""

    def __init__(self, fmt: ResponseFormat, tokenizer: Tokenizer, n_vocab: int, stop: int) -> None:
        lg = _llguidance()
        self._matcher = lg.LLMatcher(_vocabulary(tokenizer, n_vocab, stop), _grammar(fmt.text))
        if self._matcher.is_error():
            raise _unusable(self._matcher.get_error())
        self._bits = np.zeros((1, (n_vocab + 31) // 32), dtype=np.int32)
        self._fill = lg.numpy.fill_next_token_bitmask

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the schema forbids next set to -inf."""
        self._fill(self._matcher, self._bits)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: len(logits)].astype(bool)
        return np.where(allowed, logits, -np.inf).astype(np.float32)

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the JSON matcher refused token {token}: {self._matcher.get_error()[:200]}")
