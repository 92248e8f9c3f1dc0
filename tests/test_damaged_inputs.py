"""Damaged bundles and checkpoints: one line naming the problem, exit 2, never a traceback; a manifest
that names a file outside its bundle is refused and that file is never opened."""

import json
import shutil
import struct
import sys

import pytest

from edgevlm.cli import main
from helpers import assert_one_line_error, run_edgevlm

OPENED: list = []
WATCHING = [False]


def _audit(event, args):
    if WATCHING[0] and event == "open" and isinstance(args[0], str):
        OPENED.append(args[0])


sys.addaudithook(_audit)  # permanent by design; it records only while a test watches


@pytest.fixture()
def bundle(small_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    return copy


def flip(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x5A
    path.write_bytes(bytes(data))


def edit_manifest(folder, change):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m = change(m) or m
    path.write_text(json.dumps(m))


@pytest.mark.parametrize(("name", "where"), [("vision.onnx", 0.5), ("llm.onnx", 0.3), ("llm.onnx", 0.01),
                                             ("tokenizer.json", 0.5), ("tokenizer.json", 0.0),
                                             ("embed_tokens.scale.npy", 0.0)])  # fmt: skip
def test_a_flipped_byte_is_one_line(bundle, name, where):
    flip(bundle / name, where)
    assert_one_line_error(run_edgevlm("chat", "-m", bundle, "-p", "hi"), name, "sha256")


def _set(path, value):
    def change(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


MANIFESTS = {
    "a list": (lambda m: [m], "not an edgevlm bundle manifest"),
    "a string": (lambda m: "manifest", "not an edgevlm bundle manifest"),
    "format_version text": (_set(["format_version"], "one"), "format_version"),
    "format_version negative": (_set(["format_version"], -1), "format_version"),
    "format_version fractional": (_set(["format_version"], 1.5), "format_version"),
    "format_version newer": (_set(["format_version"], 99), "newer"),
    "zero heads": (_set(["model", "text", "num_heads"], 0), "num_heads"),
    "heads as text": (_set(["model", "vision", "num_heads"], "16"), "num_heads"),
    "hidden not a multiple": (_set(["model", "text", "hidden_size"], 63), "hidden_size"),
    "eps NaN-like": (_set(["model", "text", "rms_norm_eps"], -1.0), "rms_norm_eps"),
    "model a string": (_set(["model"], "internvl"), "malformed"),
    "text missing": (lambda m: m["model"].pop("text") and None, "malformed"),
    "context as text": (_set(["context_length"], "4096"), "context_length"),
    "tiles zero": (_set(["tiling", "max_tiles"], 0), "max_tiles"),
    "files a list": (_set(["files"], []), "files"),
    "part missing": (lambda m: m["parts"].pop("llm") and None, "no llm part"),
    "part not in files": (_set(["parts", "vision", "file"], "other.onnx"), "not a file of the bundle"),
    "entry without size": (lambda m: m["files"]["llm.onnx"].pop("size") and None, "size"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_bad_manifest_is_one_line(bundle, case):
    change, words = MANIFESTS[case]
    edit_manifest(bundle, change)
    for command in ("chat", "verify"):
        args = ("chat", "-m", bundle, "-p", "hi") if command == "chat" else ("verify", bundle)
        assert_one_line_error(run_edgevlm(*args), words)


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/hostname", "..", "sub/x", "a\\..\\b"])
def test_a_file_outside_the_bundle_is_refused_unread(bundle, tmp_path, capsys, name):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")

    def point_outside(m):
        m["files"][name] = {"size": 7, "sha256": "0" * 64}
        m["parts"]["tokenizer"]["file"] = name

    edit_manifest(bundle, point_outside)
    OPENED.clear()
    WATCHING[0] = True
    try:
        code = main(["verify", str(bundle)])
    finally:
        WATCHING[0] = False
    assert code == 2 and "not a plain file name inside the bundle" in capsys.readouterr().err
    assert not [p for p in OPENED if p.endswith(("secret.txt", "hostname"))], OPENED


def test_a_link_out_of_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "tokenizer.json"
    shutil.move(bundle / "tokenizer.json", outside)
    (bundle / "tokenizer.json").symlink_to(outside)
    assert_one_line_error(run_edgevlm("verify", bundle), "points outside the bundle")


# -- checkpoints -------------------------------------------------------------------------------


@pytest.fixture()
def ckpt(tiny_ckpt, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(tiny_ckpt["hf"], copy)
    return copy


CONFIGS = {
    "hidden as text": (["text_config", "hidden_size"], "abc", "hidden_size"),
    "hidden as numeric text": (["text_config", "hidden_size"], "64", "hidden_size"),
    "zero heads": (["text_config", "num_attention_heads"], 0, "num_heads"),
    "zero vision heads": (["vision_config", "num_attention_heads"], 0, "num_heads"),
    "kv heads not dividing": (["text_config", "num_key_value_heads"], 3, "num_key_value_heads"),
    "negative layers": (["vision_config", "num_hidden_layers"], -2, "num_layers"),
    "layers as float": (["text_config", "num_hidden_layers"], 2.5, "num_layers"),
    "image size zero": (["vision_config", "image_size"], [0, 0], "image_size"),
    "vision config a list": (["vision_config"], [1, 2], "vision_config"),
    "rope parameters a string": (["text_config", "rope_parameters"], "fast", "rope_parameters"),
    "ratio zero": (["downsample_ratio"], 0, "downsample_ratio"),
    "ratio not dividing": (["downsample_ratio"], 0.3, "downsample_ratio"),
    "tie as text": (["text_config", "tie_word_embeddings"], "no", "tie_word_embeddings"),
    "bias as number": (["vision_config", "attention_bias"], 2, "qkv_bias"),
    "architectures a number": (["architectures"], 5, "not a supported model"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config_values_are_one_line(ckpt, tmp_path, case):
    path, value, words = CONFIGS[case]
    raw = json.loads((ckpt / "config.json").read_text())
    if case == "architectures a number":
        raw.pop("model_type")
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (ckpt / "config.json").write_text(json.dumps(raw))
    assert_one_line_error(run_edgevlm("info", ckpt), words)
    assert_one_line_error(run_edgevlm("convert", ckpt, tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


def rewrite_header(file, change):
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header = change(header) or header
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def _first_tensor(change):
    def apply(header):
        name = next(k for k in header if k != "__metadata__")
        header[name] = change(header[name]) or header[name]

    return apply


HEADERS = {
    "header a list": (lambda h: [h], "not a JSON object"),
    "entry a string": (_first_tensor(lambda t: "F32"), "no entry object"),
    "offsets missing": (_first_tensor(lambda t: t.pop("data_offsets") and None), "data_offsets"),
    "offsets short": (_first_tensor(lambda t: t.update(data_offsets=t["data_offsets"][:1])), "data_offsets"),
    "offsets as text": (_first_tensor(lambda t: t.update(data_offsets=["0", "8"])), "data_offsets"),
    "offsets negative": (_first_tensor(lambda t: t.update(data_offsets=[-8, 0])), "data_offsets"),
    "offsets beyond the file": (_first_tensor(lambda t: t.update(data_offsets=[0, 10**12])), "past the end"),
    "offsets not the shape": (_first_tensor(lambda t: t.update(data_offsets=[0, 2])), "needs"),
    "shape a string": (_first_tensor(lambda t: t.update(shape="64")), "shape"),
    "dtype odd": (_first_tensor(lambda t: t.update(dtype=["F32"])), "dtype"),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_bad_safetensors_headers_are_one_line(ckpt, case):
    change, words = HEADERS[case]
    rewrite_header(ckpt / "model.safetensors", change)
    assert_one_line_error(run_edgevlm("info", ckpt), "model.safetensors", words)


def test_bad_shard_index_is_one_line(ckpt):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    assert_one_line_error(run_edgevlm("info", ckpt), "not a file of the checkpoint folder")
    (ckpt / "model.safetensors.index.json").write_text("[1, 2]")
    assert_one_line_error(run_edgevlm("info", ckpt), "not a valid index")


@pytest.mark.parametrize(("naming", "key", "value", "words"),
                         [("original", "template", "vicuna_v1", "template 'vicuna_v1' is not supported"),
                          ("hf", "image_token_id", 7, "image_token_id 7 is not the tokenizer's <IMG_CONTEXT>")])
def test_a_config_the_family_cannot_run_is_refused_at_convert(tiny_ckpt, tmp_path, naming, key, value, words):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_ckpt[naming], ckpt)
    raw = json.loads((ckpt / "config.json").read_text())
    raw[key] = value
    (ckpt / "config.json").write_text(json.dumps(raw))
    assert_one_line_error(run_edgevlm("convert", ckpt, tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_without_the_image_token_is_refused_at_convert(ckpt, tmp_path):
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<IMG_CONTEXT>"]
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    assert_one_line_error(run_edgevlm("convert", ckpt, tmp_path / "out"), "no <IMG_CONTEXT> token")
