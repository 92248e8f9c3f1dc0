"""The accuracy report: each quantised part measured against fp32 at conversion, recorded in the manifest."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

import edgevlm
from edgevlm import accuracy, measure
from edgevlm.bundle import open_bundle
from edgevlm.convert import ConvertOptions, convert
from edgevlm.embedding import EmbeddingTable
from edgevlm.engine import load_prompt, tiling_of
from edgevlm.runtime.decoder import OrtLanguageModel
from edgevlm.runtime.vision import OrtVisionEncoder


def _recomputed_vision(quantised, reference):
    """The vision figures through the runtime's own path (the engine's tiling and encoder), not accuracy.py's."""
    m = open_bundle(quantised)
    family = edgevlm.models.family(m.model.family)
    features = []
    for bundle in (reference, quantised):
        enc = OrtVisionEncoder(bundle / "vision.onnx", cache=False)
        tiling = tiling_of(m).capped(1)
        features.append(np.concatenate([enc.run(f).reshape(-1, m.model.text.hidden_size)
                                        for p in measure.probe_pictures()
                                        for f in family.vision_inputs(m.model, tiling.load(p))]))  # fmt: skip
    return measure.cosines(*features)


def _recomputed_llm(quantised, reference):
    """The LLM figures from last-position logits of one prefill per answer position (the runtime's path)."""
    m = open_bundle(quantised)
    prompt = load_prompt(quantised, m)
    logits = []
    for bundle in (reference, quantised):
        lm = OrtLanguageModel(bundle / "llm.onnx", EmbeddingTable(bundle), m.model.text, max_context=512, cache=False)
        ids, spans = measure.conversation(prompt)
        rows = [lm.prefill(lm.embed(ids[:p]), position=0) for start, end in spans for p in range(start, end)]
        logits.append(np.stack(rows))
    return measure.kl_divergences(*logits), measure.cosines(*logits), logits


def test_figures_in_the_manifest_equal_a_recomputation(small_bundle, tiny_bundle):
    parts = open_bundle(small_bundle).parts
    vision, llm = parts["vision"].accuracy, parts["llm"].accuracy
    assert set(vision) == {"cosine_mean", "cosine_worst", "tokens", "inputs"}
    c = _recomputed_vision(small_bundle, tiny_bundle)
    assert vision["tokens"] == len(c) > 0
    assert vision["cosine_mean"] == pytest.approx(c.mean(), abs=1e-5)
    assert vision["cosine_worst"] == pytest.approx(c.min(), abs=1e-5)
    kl, cos, (ref, quant) = _recomputed_llm(small_bundle, tiny_bundle)
    assert llm["tokens"] == len(kl) > 20
    assert llm["kl_mean"] == pytest.approx(kl.mean(), rel=0.02, abs=1e-6)
    assert llm["kl_max"] == pytest.approx(kl.max(), rel=0.02, abs=1e-6)
    assert llm["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert llm["top1"] == pytest.approx((ref.argmax(-1) == quant.argmax(-1)).mean(), abs=1.5 / len(kl))
    assert 0 < llm["kl_mean"] < accuracy.LLM_KL_MAX and vision["cosine_mean"] > accuracy.VISION_COSINE_MIN


def test_fp32_parts_record_nothing_and_no_accuracy_skips(tiny_bundle, tiny_ckpt, tmp_path):
    assert all(not p.accuracy for p in open_bundle(tiny_bundle).parts.values())
    said = []
    convert(tiny_ckpt["hf"], tmp_path / "b", ConvertOptions(accuracy=False, max_context=512), log=said.append)
    assert all(not p.accuracy for p in open_bundle(tmp_path / "b").parts.values())
    assert not any("accuracy" in line for line in said)


def test_broken_quantisation_trips_the_warnings(tiny_ckpt, tmp_path, monkeypatch):
    from edgevlm.graphs import decoder, vision

    def zero_scales(real):
        return lambda *a, **k: (lambda q, s: (q, np.zeros_like(s)))(*real(*a, **k))

    monkeypatch.setattr(decoder, "matmul_nbits", zero_scales(decoder.matmul_nbits))
    monkeypatch.setattr(vision, "int8_per_channel", zero_scales(vision.int8_per_channel))
    said = []
    convert(tiny_ckpt["hf"], tmp_path / "b", ConvertOptions(llm="w4a8", max_context=512), log=said.append)
    warned = [line for line in said if line.startswith("warning:")]
    assert len(warned) == 2, said
    assert "int8 vision" in warned[0] and "--vision fp16" in warned[0]
    assert "w4a8 llm" in warned[1] and "--llm w8a8" in warned[1]
    parts = open_bundle(tmp_path / "b").parts
    assert parts["llm"].accuracy["kl_mean"] > accuracy.LLM_KL_MAX
    assert parts["vision"].accuracy["cosine_mean"] < accuracy.VISION_COSINE_MIN


@pytest.mark.parametrize("bundle", ["tiny_bundle", "smol_bundle", "qwen_bundle"])
def test_the_scored_spans_are_the_answers_of_one_conversation(bundle, request):
    """Each family's template: the conversation's ids hold the exchanges in order, and each span is its
    answer and the template's end of turn (what the measure scores), nothing of the questions."""
    folder = request.getfixturevalue(bundle)
    m = open_bundle(folder)
    prompt = load_prompt(folder, m)
    ids, spans = measure.conversation(prompt)
    assert len(spans) == len(measure.EXCHANGES) and spans[-1][1] == len(ids)
    ends = [0] + [end for _, end in spans]
    for k, ((start, end), (question, answer)) in enumerate(zip(spans, measure.EXCHANGES, strict=True)):
        assert ends[k] < start < end  # in order, a question between
        assert question in prompt.tokenizer.decode(ids[ends[k] : start])
        scored = prompt.tokenizer.decode(ids[start:end], skip_special_tokens=False)
        assert scored.removeprefix(" ").startswith(answer) and len(ids[start:end]) > len(prompt.encode_text(answer)) - 2


def test_kl_and_cosine_are_the_textbook_ones():
    p = np.log(np.array([[0.5, 0.25, 0.25]]))
    q = np.log(np.array([[0.25, 0.5, 0.25]]))
    assert measure.kl_divergences(p, q)[0] == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))
    assert measure.cosines(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))[0] == pytest.approx(2**-0.5)


def test_verify_prints_the_figures(small_bundle):
    out = subprocess.run([sys.executable, "-m", "edgevlm", "verify", str(small_bundle)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    llm = open_bundle(small_bundle).parts["llm"].accuracy
    assert f"KL {llm['kl_mean']:.4f}" in out and "cosine" in out and "top-1" in out
    assert json.loads((small_bundle / "manifest.json").read_text())["parts"]["vision"]["accuracy"]


def test_the_server_lists_the_figures(small_bundle):
    pytest.importorskip("uvicorn", reason="the [server] extra is not installed")
    import httpx

    from helpers import KEY, Server

    s = Server(small_bundle)
    try:
        (entry,) = httpx.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    finally:
        s.stop()
    parts = open_bundle(small_bundle).parts
    assert entry["accuracy"]["llm"] == {"precision": "w8a8", **parts["llm"].accuracy}
    assert entry["accuracy"]["vision"]["cosine_mean"] == parts["vision"].accuracy["cosine_mean"]


def test_a_reference_that_would_not_fit_in_memory_is_skipped_with_a_reason(tiny_ckpt, tmp_path, monkeypatch):
    from edgevlm.checkpoint import open_checkpoint

    ck = open_checkpoint(tiny_ckpt["hf"])
    llm_mb = measure.reference_mb(ck, "llm")  # its bf16 weights as stored and, beside them, their widening
    assert llm_mb == int(2.0 * 2 * sum(np.prod(ck.shape(n)) for n in ck.names() if n.startswith("llm.")) / 2**20)
    monkeypatch.setattr(measure, "memory_mb", lambda: (16000, llm_mb - 1))  # room for the vision one only
    said = []
    convert(tiny_ckpt["hf"], tmp_path / "b", ConvertOptions(max_context=512), log=said.append)
    parts = open_bundle(tmp_path / "b").parts
    assert parts["vision"].accuracy and not parts["llm"].accuracy
    (line,) = [s for s in said if "not measured" in s]
    assert line.startswith("accuracy of the llm part not measured: its fp32 reference needs about")
    assert accuracy.report(parts)[1] == f"llm (w8a8): {accuracy.NOT_MEASURED}"


def _probes_of(ck):
    from edgevlm.prompt import PromptEncoder
    from edgevlm.tokenizer import control_ids, load_tokenizer

    tokenizer, fmt = load_tokenizer(ck.path, ck.family.ADDED_TOKENS), ck.family.prompt_format(ck.config)
    return measure.probe_inputs(ck, PromptEncoder(tokenizer, fmt, control_ids(tokenizer, fmt.all_controls)))


@pytest.mark.parametrize("family", ["tiny", "smol", "qwen"])
def test_references_fed_the_stored_bf16_bytes_equal_the_fp32_graphs(family, request):
    """The measure's fp32 references take the checkpoint's bf16 weights as stored and widen them in the graph
    as it runs: the same numbers as the same graphs over float32 copies (bf16 widens exactly)."""
    from edgevlm.checkpoint import open_checkpoint

    folder = {"tiny": lambda: request.getfixturevalue("tiny_ckpt")["hf"],
              "smol": lambda: request.getfixturevalue("smol_ckpt"),
              "qwen": lambda: request.getfixturevalue("qwen_ckpts")["hf"]}[family]()  # fmt: skip
    ck = open_checkpoint(folder)
    assert {ck.stored_dtype(n) for n in ck.names()} == {"BF16"}
    assert ck.stored("llm.layers.0.mlp.down.weight").dtype.name == "bfloat16"
    probes = _probes_of(ck)
    fed = measure.references(ck, probes, ["vision", "llm"])
    ck.stored = ck.get  # the same graphs, built over float32 copies of every weight
    widened = measure.references(ck, probes, ["vision", "llm"])
    for part in ("vision", "llm"):
        assert fed[part].shape == widened[part].shape and fed[part].dtype == np.float32
        np.testing.assert_allclose(fed[part], widened[part], rtol=0, atol=1e-6 * np.abs(widened[part]).max())


def test_a_failing_conversion_halts_its_references(tiny_ckpt):
    """The runs a Halt was given to stop once the block it guards fails (convert's Ctrl-C does not wait
    for its fp32 references); a block that ends well leaves them running."""
    from edgevlm.checkpoint import open_checkpoint
    from edgevlm.runtime.ort import Halt

    ck = open_checkpoint(tiny_ckpt["hf"])
    probes = _probes_of(ck)
    with Halt() as kept:
        pass
    assert measure.references(ck, probes, ["vision"], halt=kept)["vision"].shape[1] == ck.config.text.hidden_size
    with pytest.raises(KeyboardInterrupt), Halt() as halt:
        raise KeyboardInterrupt
    with pytest.raises(Exception, match="terminate"):
        measure.references(ck, probes, ["vision"], halt=halt)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_references_of_a_checkpoint_not_in_bf16(dtype, tiny_ref, tiny_cfg, tiny_ckpt, tmp_path):
    """fp16 and fp32 checkpoints' references take float32 weights (only bf16 is widened in the graph) and
    agree with the bf16 checkpoint's to its rounding (the reference model's weights are bf16-exact)."""
    from edgevlm.checkpoint import open_checkpoint
    from edgevlm.testing.random_checkpoint import save_checkpoint

    save_checkpoint(copy.deepcopy(tiny_ref), tiny_cfg, tmp_path / dtype, naming="hf", dtype=dtype)  # it rounds
    ck, bf16 = open_checkpoint(tmp_path / dtype), open_checkpoint(tiny_ckpt["hf"])
    assert ck.stored("llm.layers.0.mlp.down.weight").dtype == np.float32
    got, want = (measure.references(c, _probes_of(c), ["vision", "llm"]) for c in (ck, bf16))
    for part in ("vision", "llm"):
        np.testing.assert_allclose(got[part], want[part], rtol=0, atol=2e-3 * np.abs(want[part]).max())
