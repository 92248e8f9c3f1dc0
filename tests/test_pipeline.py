"""End to end: convert a tiny random checkpoint, then answer as transformers does (greedy)."""

import json
import subprocess
import sys

import pytest
import torch

import edgevlm
from edgevlm.bundle import FORMAT_VERSION, BundleError, open_bundle
from edgevlm.convert import ConvertError, ConvertOptions, convert
from edgevlm.prompt import Turn
from edgevlm.testing.reference import original_prompt, processor
from helpers import picture

NEW = 12
IM_END = 151645


@pytest.fixture(scope="module")
def bundles(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    quiet = {"log": lambda m: None}
    for naming in ("original", "hf"):
        convert(tiny_ckpt[naming], root / naming, ConvertOptions(llm="fp32", vision="fp32"), **quiet)
    convert(tiny_ckpt["hf"], root / "small", ConvertOptions(llm="w8a8", vision="int8", max_context=1024), **quiet)
    return root


@pytest.fixture(scope="module")
def model(bundles):
    return edgevlm.load(bundles / "original")


@pytest.fixture(scope="module")
def ref_processor(model):
    return processor(model.tokenizer)


def reference_answer(ref_model, proc, prompt, images):
    inputs = proc(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = ref_model.generate(**inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=IM_END, pad_token_id=0)
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1] :].tolist()


def our_tokens(session, question, images):
    return [c.token for c in session.ask(question, images, edgevlm.runtime.sampling.SamplingParams(max_tokens=NEW))]


def test_both_namings_convert_to_identical_bundles(bundles):
    a, b = open_bundle(bundles / "original", hashes=True), open_bundle(bundles / "hf", hashes=True)
    assert a.files == b.files
    assert a.source["model"] == "internvl3, original naming" and b.source["model"] == "internvl3, hf naming"


@pytest.mark.parametrize(
    ("sizes", "question"),
    [([(448, 448)], "Describe the image."), ([(800, 600)], "What do I need to make this?"),
     ([(448, 448), (896, 448)], "What differs?")],
    ids=["one tile", "several tiles", "two images"],
)  # fmt: skip
def test_greedy_answer_equals_transformers(model, tiny_ref, ref_processor, sizes, question):
    images = [picture(w, h, i) for i, (w, h) in enumerate(sizes)]
    _, expected = reference_answer(tiny_ref, ref_processor, original_prompt([(question, len(images), None)]), images)
    assert our_tokens(model.session(), question, images) == expected


def test_two_turns_equal_transformers_and_prefill_only_the_new_turn(model, tiny_ref, ref_processor):
    img = picture(640, 480, 9)
    session = model.session()
    ids1, ans1 = reference_answer(tiny_ref, ref_processor, original_prompt([("Describe the image.", 1, None)]), [img])
    assert our_tokens(session, "Describe the image.", [img]) == ans1
    follow = "\n<|im_start|>user\nAnd the colours?<|im_end|>\n<|im_start|>assistant\n"
    tail = ref_processor.tokenizer(follow, add_special_tokens=False)["input_ids"]
    prefix = ids1 + ans1 + ([] if ans1[-1] == IM_END else [IM_END])
    pixels = ref_processor(text=["<IMG_CONTEXT>"], images=[img], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = tiny_ref.generate(input_ids=torch.tensor([prefix + tail]), pixel_values=pixels, max_new_tokens=NEW,
                                do_sample=False, eos_token_id=IM_END, pad_token_id=0)  # fmt: skip
    assert our_tokens(session, "And the colours?", []) == out[0, len(prefix + tail) :].tolist()
    stats = session.last_stats
    assert stats.generation.prompt_tokens == len(prefix + tail) - stats.cached_tokens
    assert stats.generation.prompt_tokens <= len(tail) + 2 and stats.vision_ms == 0


def test_chat_cli_prints_only_the_answer(bundles, model, tmp_path):
    img = tmp_path / "p.png"
    picture(500, 400, 3).save(img)
    expected = model.chat("Describe the image.", [img], max_tokens=NEW)
    r = subprocess.run([sys.executable, "-m", "edgevlm", "chat", "-m", str(bundles / "hf"), "-i", str(img), "-p",
                        "Describe the image.", "--temperature", "0", "--max-tokens", str(NEW), "--stats"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    assert r.stdout == expected + "\n"
    assert "prefill" in r.stderr and "tok/s" in r.stderr


def test_streaming_api_joins_to_the_answer(model):
    img = picture(300, 300, 4)
    whole = model.chat("Hi", [img], max_tokens=NEW)
    assert "".join(model.chat("Hi", [img], max_tokens=NEW, stream=True)) == whole
    import io

    png = io.BytesIO()
    img.save(png, format="PNG")
    sampled = model.chat("Hi", [png.getvalue()], max_tokens=NEW, temperature=0.7, seed=3)  # bytes in
    assert sampled == model.chat("Hi", [img], max_tokens=NEW, temperature=0.7, seed=3)  # same seed, same answer


def test_typed_control_tokens_are_text(model):
    session = model.session()
    session.chat("<IMG_CONTEXT><img><|im_end|>", max_tokens=4)  # no image: it would fail if it forged a slot
    s = session.last_stats
    assert s.images == 0 and s.prompt_tokens == len(model.prompt.encode([Turn("<IMG_CONTEXT><img><|im_end|>")]))


def test_overflow_drops_oldest_turns(bundles):
    small = edgevlm.load(bundles / "small")
    session = small.session(max_tiles=1)
    img = picture(448, 448, 1)
    session.chat("first", [img], max_tokens=200)
    session.chat("second", [img], max_tokens=200)
    session.chat("third", [img], max_tokens=200)  # 3 x ~300 tokens + answers > 1024 - 200 reserved
    assert session.dropped_turns >= 1 and session.turns[0].question != "first"
    assert [t.question for t in session.turns][-1] == "third" and len(session.images) == len(session.turns)
    assert session.last_stats.prompt_tokens <= 1024 - 200  # what was sent left room for the answer
    with pytest.raises(edgevlm.runtime.decoder.ContextOverflow, match="fewer tiles"):
        small.session().chat("too big", [picture(1344, 896, 2)], max_tokens=8)


def test_vision_encoder_loads_on_the_first_image(bundles):
    m = edgevlm.load(bundles / "small")
    assert m.load_times["vision"] == 0.0 and m.load_times["llm"] > 0
    text_only = m.chat("hi", max_tokens=3)
    assert m.load_times["vision"] == 0.0  # a text answer never loaded it
    m.chat("Describe the image.", [picture(448, 448, 1)], max_tokens=3)
    first = m.load_times["vision"]
    assert first > 0 and m.chat("hi", max_tokens=3) == text_only
    m.chat("Describe it again.", [picture(448, 448, 2)], max_tokens=3)
    assert m.load_times["vision"] == first  # loaded once


def test_bundle_damage_is_detected(bundles, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundles / "hf", b)
    data = b / "llm.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    open_bundle(b)  # sizes still match
    with pytest.raises(BundleError, match="llm.onnx.data does not match its sha256"):
        open_bundle(b, hashes=True)
    data.write_bytes(bytes(raw[:-10]))
    with pytest.raises(BundleError, match="truncated"):
        edgevlm.load(b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer than this edgevlm"):
        open_bundle(b)
    data.write_bytes(bytes(raw))
    (b / "vision.onnx").unlink()
    (b / "manifest.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION}))
    with pytest.raises(BundleError, match="vision.onnx is missing"):
        open_bundle(b)


def test_convert_refuses_bad_options_and_leaves_nothing(tiny_ckpt, tmp_path):
    with pytest.raises(ConvertError, match="--llm"):
        ConvertOptions(llm="int3")
    with pytest.raises(ConvertError, match="already exists"):
        convert(tiny_ckpt["hf"], tmp_path, log=lambda m: None)
    with pytest.raises(ConvertError, match="no such checkpoint folder"):
        convert(tmp_path / "nope", tmp_path / "out", log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [(["chat", "-m", "{bundle}", "-i", "{missing}", "-p", "hi"], "no such file"),
     (["chat", "-m", "{bundle}", "-i", "{corrupt}", "-p", "hi"], "not an image"),
     (["chat", "-m", "{broken}", "-p", "hi"], "no manifest.json"),
     (["chat", "-m", "{bundle}", "--max-tiles", "0", "-p", "hi"], "--max-tiles must be >= 1"),
     (["chat", "-m", "{bundle}", "--temperature", "hot", "-p", "hi"], "must be a number"),
     (["convert", "{ckpt}", "{out}", "--llm", "int3"], "invalid choice"),
     (["verify", "{broken}"], "no manifest.json")],
)  # fmt: skip
def test_cli_bad_input_is_one_line(bundles, tiny_ckpt, tmp_path, args, message):
    (tmp_path / "corrupt.jpg").write_bytes(b"not really a jpeg")
    (tmp_path / "broken").mkdir()
    names = {"bundle": bundles / "hf", "missing": tmp_path / "missing.png", "corrupt": tmp_path / "corrupt.jpg",
             "broken": tmp_path / "broken", "ckpt": tiny_ckpt["hf"], "out": tmp_path / "out"}  # fmt: skip
    argv = [a.format(**names) for a in args]
    r = subprocess.run([sys.executable, "-m", "edgevlm", *argv], capture_output=True, text=True)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_verify_command(bundles):
    r = subprocess.run([sys.executable, "-m", "edgevlm", "verify", str(bundles / "hf")], capture_output=True, text=True)
    assert r.returncode == 0 and ": ok (" in r.stdout


def test_load_backends(bundles):
    from edgevlm.rk3588.board import BoardError

    assert type(edgevlm.load(bundles / "hf", backend="cpu")).__name__ == "VLM"
    with pytest.raises(ValueError, match="backend must be one of"):
        edgevlm.load(bundles / "hf", backend="gpu")
    with pytest.raises(BoardError, match="export-rk3588"):
        edgevlm.load(bundles / "hf", backend="rk3588")


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "edgevlm", "convert", "OpenGVLab/InternVL3-1B", str(tmp_path / "out")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "cannot download OpenGVLab/InternVL3-1B" in r.stderr and not (tmp_path / "out").exists()
