"""llguidance against outlines-core for constrained JSON answers: schema coverage, compile time, mask time.

    .venv-json/bin/python benchmarks/json_engines.py TOKENIZER_JSON   (a venv with both engines,
    numpy, tokenizers and jsonschema; outlines-core is not a dependency of edgevlm)

For each schema (the twelve the tests validate, and harder ones), each engine compiles it against the
tokenizer's whole vocabulary; then a valid document, tokenised, is walked token by token: each step
computes the mask of allowed tokens and advances (what the generation loop does). Prints one row per
schema and engine; medians of per-token times.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SCHEMAS = json.loads((Path(__file__).resolve().parents[1] / "tests" / "schemas.json").read_text())

HARD = {  # beyond the tests' twelve: what users' schemas also hold
    "ref and defs": ({"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
                                       "additionalProperties": False}},
                      "type": "object", "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
                      "required": ["a", "b"], "additionalProperties": False}, {"a": {"x": 1}, "b": {"x": 2}}),
    "unbounded strings": ({"type": "object", "properties": {"caption": {"type": "string"}}, "required": ["caption"],
                           "additionalProperties": False}, {"caption": "a red bicycle by a blue door"}),
    "format date-time": ({"type": "object", "properties": {"t": {"type": "string", "format": "date-time"}},
                          "required": ["t"], "additionalProperties": False}, {"t": "2026-11-30T02:20:00Z"}),
    "any object": ({"type": "object"}, {"door": "open", "people": 2}),
}  # fmt: skip
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # as structured.py
EXAMPLES = {
    "flat object": {"name": "door", "open": True}, "yes or no": {"answer": "yes"}, "integer range": {"count": 3},
    "number bounds": {"score": 0.5}, "bounded array": {"objects": ["cat", "sofa"]}, "enum array": ["cat", "dog"],
    "pattern": {"plate": "AB-123"}, "nested": {"box": {"x": 10, "y": 20, "label": "cat"}},
    "list of objects": {"items": [{"what": "cup", "n": 2}]}, "nullable": {"colour": None}, "any of": 3,
    "date-like string": {"day": "2026-11-29"},
}  # fmt: skip


def bytes_of_tokens(tok: Tokenizer) -> dict[bytes, list[int]]:
    """Each token's bytes (undoing GPT-2's byte-to-character map of byte-level BPE vocabularies)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = printable + [256 + i for i in range(256 - len(printable))]
    others = [b for b in range(256) if b not in printable]
    to_byte = {chr(c): b for c, b in zip(chars, printable + others, strict=True)}
    out: dict[bytes, list[int]] = {}
    for text, i in tok.get_vocab(with_added_tokens=False).items():
        if all(ch in to_byte for ch in text):
            out.setdefault(bytes(to_byte[ch] for ch in text), []).append(i)
    return out


def run_llguidance(tok: Tokenizer, schema: dict, ids: list[int], eos: int, n_vocab: int) -> tuple[float, float]:
    import llguidance
    import llguidance.numpy as lgn

    vocab = llguidance.LLTokenizer(tok.to_str(), n_vocab=n_vocab, eos_token=eos)
    start = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=COMPACT)
    m = llguidance.LLMatcher(vocab, grammar)
    if m.is_error():
        raise ValueError(m.get_error()[:120])
    compile_s = time.perf_counter() - start
    bits, steps = np.zeros((1, (n_vocab + 31) // 32), dtype=np.int32), []
    for t in ids:
        t0 = time.perf_counter()
        lgn.fill_next_token_bitmask(m, bits)
        allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[:n_vocab]
        steps.append(time.perf_counter() - t0)
        if not allowed[t] or not m.consume_token(t):
            raise ValueError(f"refused its own valid document at token {t}")
    return compile_s, statistics.median(steps)


def run_outlines(vocab, schema: dict, ids: list[int]) -> tuple[float, float]:
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    start = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(schema), None), vocab)
    compile_s = time.perf_counter() - start
    state, steps = index.get_initial_state(), []
    for t in ids:
        t0 = time.perf_counter()
        allowed = index.get_allowed_tokens(state)
        steps.append(time.perf_counter() - t0)
        if t not in allowed:
            raise ValueError(f"refused its own valid document at token {t}")
        state = index.get_next_state(state, t)
    return compile_s, statistics.median(steps)


def main() -> None:
    from outlines_core import Vocabulary

    tok = Tokenizer.from_file(sys.argv[1])
    eos = tok.token_to_id("<|im_end|>")
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    vocab = Vocabulary(eos, {k: v for k, v in bytes_of_tokens(tok).items() if eos not in v})
    cases = {name: (SCHEMAS[name], EXAMPLES[name]) for name in SCHEMAS} | HARD
    print("| schema | llguidance compile / per-token mask | outlines-core compile / per-token mask |")
    print("|---|---|---|")
    for name, (schema, example) in cases.items():
        text = json.dumps(example, separators=(", ", ": "))
        ids = tok.encode(text, add_special_tokens=False).ids
        cells = []
        for run in (partial(run_llguidance, tok, schema, ids, eos, n_vocab), partial(run_outlines, vocab, schema, ids)):
            try:
                c, s = run()
                cells.append(f"{c * 1000:.0f} ms / {s * 1e6:.0f} us")
            except Exception as e:  # an engine that cannot take the schema: its coverage
                cells.append(f"fails: {type(e).__name__}: {str(e).splitlines()[0][:70]}")
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
