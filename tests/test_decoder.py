import numpy as np
import pytest
import torch

from edgevlm.checkpoint import open_checkpoint
from edgevlm.embedding import EmbeddingTable, write_embedding
from edgevlm.graphs.decoder import DecoderGraphSpec, build_decoder_graph
from edgevlm.runtime.decoder import ContextOverflow, OrtLanguageModel

MAX = 192


def make_lm(ckpt_dir, folder, precision="fp32", quantize_embed=False, **kw):
    ck = open_checkpoint(ckpt_dir)
    folder.mkdir(exist_ok=True)
    write_embedding(ck.get("llm.embed.weight"), folder, quantize=quantize_embed)
    path = build_decoder_graph(
        ck.get, ck.config.text, folder / f"llm_{precision}.onnx", DecoderGraphSpec(precision)
    )
    return OrtLanguageModel(path, EmbeddingTable(folder), ck.config.text, max_context=MAX, cache=False, **kw)


@pytest.fixture(scope="module")
def lm(tiny_ckpt, tmp_path_factory):
    return make_lm(tiny_ckpt["original"], tmp_path_factory.mktemp("lm"), prefill_chunk=7)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(3).integers(0, 151600, 50).tolist()


def ref_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_last_logits_match_transformers(lm, tiny_ref, ids):
    ref = ref_logits(tiny_ref, ids)
    got = lm.prefill(lm.embed(ids), position=0)
    assert np.abs(got - ref[-1]).max() <= 1e-3
    assert lm.position == len(ids)


def test_chunked_prefill_equals_one_block(lm, ids, tiny_ckpt, tmp_path):
    chunked = lm.prefill(lm.embed(ids), position=0)  # chunks of 7
    whole = make_lm(tiny_ckpt["hf"], tmp_path / "w", prefill_chunk=512).prefill(lm.embed(ids))
    np.testing.assert_allclose(chunked, whole, atol=1e-4, rtol=0)


def test_prefill_then_decode_equals_full_forward(lm, tiny_ref, ids):
    ref = ref_logits(tiny_ref, ids)
    lm.prefill(lm.embed(ids[:40]), position=0)
    for i in range(40, len(ids)):
        got = lm.decode(ids[i])
        assert np.abs(got - ref[i]).max() <= 1e-3, i


def test_truncate_reuses_the_prefix(lm, ids):
    fresh = lm.prefill(lm.embed(ids), position=0)
    lm.prefill(lm.embed([*ids[:30], 5, 6, 7, 8]), position=0)  # a different continuation
    again = lm.prefill(lm.embed(ids[30:]), position=30)  # back to the shared prefix
    np.testing.assert_allclose(again, fresh, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cannot truncate"):
        lm.truncate(lm.position + 1)


def test_context_overflow_is_a_clear_error(lm):
    lm.truncate(0)
    lm.prefill(lm.embed(list(range(MAX - 2))))
    with pytest.raises(ContextOverflow, match="context full"):
        lm.prefill(lm.embed([1, 2, 3]))
    assert lm.position == MAX - 2  # nothing was written
    lm.decode(1)
    lm.decode(2)
    with pytest.raises(ContextOverflow):
        lm.decode(3)


def test_greedy_32_tokens_equal_transformers_generate(lm, tiny_ref, ids):
    from edgevlm.runtime.generate import generate_step
    from edgevlm.runtime.sampling import SamplingParams

    prompt = ids[:20]
    with torch.no_grad():
        out = tiny_ref.generate(input_ids=torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32,
                                do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    expected = out[0, len(prompt) :].tolist()
    got = list(generate_step(lm, lm.embed(prompt), SamplingParams(max_tokens=32), position=0))
    assert got == expected


@pytest.mark.parametrize(("precision", "quantize_embed", "min_cos"), [("w8a8", True, 0.995), ("w4a8", True, 0.9)])
def test_quantised_close_to_fp32(tiny_ckpt, tmp_path, ids, lm, precision, quantize_embed, min_cos):
    q = make_lm(tiny_ckpt["hf"], tmp_path / precision, precision, quantize_embed)
    a, b = q.prefill(q.embed(ids)), lm.prefill(lm.embed(ids), position=0)
    assert (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) >= min_cos


def test_int8_embedding_rows(tiny_ckpt, tmp_path):
    ck = open_checkpoint(tiny_ckpt["hf"])
    full = ck.get("llm.embed.weight")
    write_embedding(full, tmp_path, quantize=True)
    table = EmbeddingTable(tmp_path)
    rows = [0, 17, 151673, 42]
    got = table(rows)
    err = np.abs(got - full[rows]).max(axis=1) / np.abs(full[rows]).max(axis=1)
    assert err.max() <= 1 / 254 + 1e-6  # half a quantisation step of each row's scale
    with pytest.raises(ValueError, match="out of range"):
        table([151674])


def test_returned_logits_are_not_overwritten_by_the_next_step(lm, ids):
    first = lm.prefill(lm.embed(ids[:10]), position=0)
    kept = first.copy()
    lm.decode(ids[10])
    np.testing.assert_array_equal(first, kept)


def test_a_graph_built_in_memory_with_its_weights_fed_equals_the_written_one(tiny_ckpt, tmp_path, ids, lm):
    """The accuracy measure's fp32 reference (graphs.builder.InMemory run by runtime.ort.WeightsFed) is the
    same graph as the bundle's fp32 file: equal logits to float rounding (its weights are packed per call,
    the file's once: the sums run in another order)."""
    from edgevlm.graphs.builder import InMemory
    from edgevlm.measure import every_output
    from edgevlm.runtime.ort import WeightsFed, create_session

    ck = open_checkpoint(tiny_ckpt["original"])
    memory = build_decoder_graph(ck.get, ck.config.text, InMemory(), DecoderGraphSpec("fp32"))
    assert not list(tmp_path.iterdir()) and len(memory.arrays) > 4 * ck.config.text.num_layers
    file = build_decoder_graph(ck.get, ck.config.text, tmp_path / "llm.onnx", DecoderGraphSpec("fp32"))
    embeds = ck.get("llm.embed.weight")[ids]
    fed = every_output(WeightsFed(memory), ck.config.text, embeds)
    written = every_output(create_session(file, cache=False), ck.config.text, embeds)
    np.testing.assert_allclose(fed, written, rtol=0, atol=1e-5)
    assert np.abs(written).max() > 1e-2  # real logits, not zeros on both sides
    np.testing.assert_allclose(fed[0], lm.prefill(lm.embed(ids), position=0), rtol=0, atol=1e-5)


def test_the_reference_without_its_head_gives_the_whole_graph_s_logits_at_every_position(tiny_ckpt, ids):
    """The accuracy measure's reference: the graph ending at the final norm, its head applied from the stored
    table a block of rows at a time, equals the full fp32 graph's every-position logits."""
    from edgevlm.graphs.builder import InMemory
    from edgevlm.graphs.decoder import every_position
    from edgevlm.measure import every_output, head_of
    from edgevlm.runtime.ort import WeightsFed

    ck, t = open_checkpoint(tiny_ckpt["original"]), open_checkpoint(tiny_ckpt["original"]).config.text
    full, headless = (build_decoder_graph(ck.get, t, InMemory(), DecoderGraphSpec("fp32", head=h)) for h in (1, 0))
    assert "llm.lm_head.weight" in full.arrays and "llm.lm_head.weight" not in headless.arrays
    embeds = ck.get("llm.embed.weight")[ids]
    logits = every_output(WeightsFed(InMemory(every_position(full.model), full.arrays)), t, embeds)
    hidden = every_output(WeightsFed(InMemory(every_position(headless.model), headless.arrays)), t, embeds, "hidden")
    assert logits.shape == (len(ids), t.vocab_size) and hidden.shape == (len(ids), t.hidden_size)
    np.testing.assert_allclose(head_of(ck)(hidden), logits, rtol=0, atol=1e-4)
    assert np.abs(logits).max() > 1e-2
