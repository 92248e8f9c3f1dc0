"""The cache of optimised graphs: what it records, and pruning of stale entries."""

import os

import numpy as np
import pytest

from edgevlm.checkpoint import open_checkpoint
from edgevlm.embedding import EmbeddingTable, write_embedding
from edgevlm.graphs.decoder import DecoderGraphSpec, build_decoder_graph
from edgevlm.graphs.internvit import build_vision_graph
from edgevlm.graphs.vision import VisionGraphSpec
from edgevlm.runtime import ort as ort_mod
from edgevlm.runtime.decoder import OrtLanguageModel
from edgevlm.runtime.vision import OrtVisionEncoder

MAX = 64


@pytest.fixture()
def w8a8(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVLM_CACHE", str(tmp_path / "cache"))
    ck = open_checkpoint(tiny_ckpt["original"])
    write_embedding(ck.get("llm.embed.weight"), tmp_path)
    path = build_decoder_graph(ck.get, ck.config.text, tmp_path / "llm.onnx", DecoderGraphSpec("w8a8"))
    return path, EmbeddingTable(tmp_path), ck.config.text


def entries():
    return sorted(p.parent for p in ort_mod.cache_root().glob("*/model.onnx"))


def run(path, table, text, *, cache):
    lm = OrtLanguageModel(path, table, text, max_context=MAX, cache=cache)
    ids = list(range(100, 120))
    return np.stack([lm.prefill(lm.embed(ids), position=0)] + [lm.decode(i) for i in (5, 6, 7)])


def test_cached_graph_gives_the_same_features(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVLM_CACHE", str(tmp_path / "cache"))
    ck = open_checkpoint(tiny_ckpt["original"])
    path = build_vision_graph(ck.get, ck.config, tmp_path / "v.onnx", VisionGraphSpec("int8"))
    pixels = np.random.default_rng(0).standard_normal((1, 3, 448, 448)).astype(np.float32)
    plain = OrtVisionEncoder(path, cache=False).encode(pixels)
    first = OrtVisionEncoder(path).encode(pixels)  # optimises and saves
    (entry,) = entries()
    assert (entry / "source").read_text().startswith(f"{path.resolve()}\n")
    again = OrtVisionEncoder(path).encode(pixels)  # straight from the cache
    assert entries() == [entry]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, plain, rtol=0, atol=1e-5)


def test_stale_entries_are_pruned(w8a8, tmp_path):
    path, table, text = w8a8
    run(path, table, text, cache=True)
    (old,) = entries()
    legacy = ort_mod.cache_root() / "0123456789abcdef0123"  # an entry with no record of its model
    legacy.mkdir()
    (legacy / "model.onnx").write_bytes(b"")
    gone = ort_mod.cache_root() / "fedcba9876543210fedc"  # the model it came from was deleted
    gone.mkdir()
    (gone / "model.onnx").write_bytes(b"")
    (gone / "source").write_text(f"{tmp_path / 'deleted.onnx'}\nsig")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the bundle was converted again
    run(path, table, text, cache=True)
    (new,) = entries()
    assert new != old and not old.exists() and not legacy.exists() and not gone.exists()
