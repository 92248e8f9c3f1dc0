"""A real Qwen2 tokenizer for tests, rebuilt from the vocabulary that ships in llama-cpp-python's
source package on PyPI (`vendor/llama.cpp/models/ggml-vocab-qwen2.gguf` with `.inp`/`.out`
reference tokenisations). Downloaded once into the cache; where PyPI cannot be reached, callers
get `VocabUnavailable` with the reason, and `tiny_tokenizer()` serves instead.
"""

from __future__ import annotations

import json
import tarfile
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, models, trainers

from ..atomic import atomic_dir
from ..models.internvl3 import ADDED_TOKENS
from ..tokenizer import build_qwen2_tokenizer
from . import FixtureUnavailable, cache_dir, pypi_download

PACKAGE, VERSION = "llama-cpp-python", "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
MEMBER_DIR = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/models/"
FILES = ("ggml-vocab-qwen2.gguf", "ggml-vocab-qwen2.gguf.inp", "ggml-vocab-qwen2.gguf.out")
QWEN2_BPE_SIZE = 151643  # entries of Qwen2's byte-level BPE vocabulary; the added tokens follow


class VocabUnavailable(FixtureUnavailable):
    """The vocabulary package could not be fetched (no registry access)."""


def vocab_files() -> Path:
    """The folder holding the three vocabulary files, fetched from PyPI on first use."""
    folder = cache_dir() / f"qwen2-vocab-{VERSION}"
    if all((folder / f).exists() for f in FILES):
        return folder
    try:
        with atomic_dir(folder, replace=True) as tmp:
            archive = tmp / SDIST
            pypi_download(PACKAGE, SDIST, archive)
            with tarfile.open(archive) as tar:
                for name in FILES:
                    src = tar.extractfile(MEMBER_DIR + name)
                    if src is None:
                        raise VocabUnavailable(f"{SDIST} has no {MEMBER_DIR + name}")
                    (tmp / name).write_bytes(src.read())
            archive.unlink()
    except (OSError, KeyError, ValueError, FixtureUnavailable) as e:  # URLError is an OSError
        raise VocabUnavailable(f"cannot fetch {PACKAGE}=={VERSION} from PyPI: {e}") from None
    return folder


def reference_cases(folder: Path) -> list[tuple[str, list[int]]]:
    """The (text, token ids) pairs of llama.cpp's tokenizer test for this vocabulary."""
    texts = (folder / FILES[1]).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    lines = (folder / FILES[2]).read_text(encoding="utf-8").split("\n")[: len(texts)]
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]


@lru_cache(maxsize=1)
def qwen2_tokenizer() -> Tokenizer:
    """The real Qwen2 tokenizer with InternVL3's added tokens (raises VocabUnavailable offline)."""
    from gguf import GGUFReader  # test-only dependency

    reader = GGUFReader(vocab_files() / FILES[0])

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")[:QWEN2_BPE_SIZE]
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    return build_qwen2_tokenizer({t: i for i, t in enumerate(tokens)}, merges, ADDED_TOKENS)


_CORPUS = (
    "Describe the image. What do I need to make this? The cat sits on the mat next to a red bicycle.\n"
    "A photo of a kitchen with flour, eggs, sugar and butter on the table. 1 2 3 4 5 6 7 8 9 0.\n"
    "你好，世界。图片中有一只猫。 Numbers, punctuation: (a), [b], {c}; \"quoted\" 'text' - done!\n"
)


@lru_cache(maxsize=1)
def small_tokenizer() -> Tokenizer:
    """A small byte-level BPE trained here with the added tokens right after it: every special-token id
    differs from InternVL3's (the real vocabulary's)."""
    tok = _trained_bpe()
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return build_qwen2_tokenizer(tok.get_vocab(), merges, ADDED_TOKENS)


def _trained_bpe() -> Tokenizer:
    from tokenizers import decoders, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    return tok


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    """A small byte-level BPE trained here, padded so the added tokens sit at InternVL3's ids (the tiny
    preset's vocabulary is the real one's size)."""
    tok = _trained_bpe()
    vocab = tok.get_vocab()
    vocab.update({f"<|unused_{i}|>": i for i in range(len(vocab), QWEN2_BPE_SIZE)})
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return build_qwen2_tokenizer(vocab, merges, ADDED_TOKENS)


def fixture_tokenizer() -> tuple[Tokenizer, str]:
    """The real tokenizer when reachable, else the tiny one; with a note of which."""
    try:
        return qwen2_tokenizer(), "qwen2 (llama-cpp-python vocabulary)"
    except VocabUnavailable as e:
        return tiny_tokenizer(), f"tiny trained tokenizer ({e})"
