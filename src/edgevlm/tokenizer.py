"""The Qwen2 byte-level BPE tokenizer InternVL3 uses, built with the `tokenizers` library.

A checkpoint ships either tokenizer.json or vocab.json + merges.txt; both end up as one
`tokenizers.Tokenizer` with InternVL3's added tokens at their fixed ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# Qwen2's pre-tokenisation pattern (contractions, letters, single digits, punctuation, spaces).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5's added tokens (151643-151664) and InternVL's (151665-151673), in id order.
ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
)  # fmt: skip
FIRST_ADDED_ID = 151643
NOT_SPECIAL = {"<tool_call>", "</tool_call>"}


class TokenizerError(ValueError):
    """The tokenizer files are missing or disagree with InternVL3's fixed token ids."""


def build_qwen2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A Qwen2 tokenizer from its BPE vocabulary and merges, plus the added tokens."""
    if len(vocab) != FIRST_ADDED_ID:
        raise TokenizerError(f"BPE vocabulary has {len(vocab)} entries, Qwen2 has {FIRST_ADDED_ID}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    add_internvl_tokens(tok)
    return tok


def add_internvl_tokens(tok: Tokenizer) -> None:
    """Add the special tokens at their fixed ids; an existing vocabulary must agree."""
    for offset, content in enumerate(ADDED_TOKENS):
        want = FIRST_ADDED_ID + offset
        have = tok.token_to_id(content)
        if have is None:
            tok.add_tokens([AddedToken(content, special=content not in NOT_SPECIAL, normalized=False)])
            have = tok.token_to_id(content)
        if have != want:
            raise TokenizerError(f"token {content} has id {have}, InternVL3 expects {want}")


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint or bundle folder: tokenizer.json, else vocab.json + merges.txt."""
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise TokenizerError(f"{folder / 'tokenizer.json'}: cannot be read ({e})") from None
        add_internvl_tokens(tok)
        return tok
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
            return build_qwen2_tokenizer(vocab, merges)
        except TokenizerError:
            raise
        except Exception as e:  # tokenizers raises bare Exceptions for a bad vocabulary
            raise TokenizerError(f"{folder}: vocab.json/merges.txt cannot be read ({e})") from None
    raise TokenizerError(f"{folder}: no tokenizer.json, nor vocab.json with merges.txt")
