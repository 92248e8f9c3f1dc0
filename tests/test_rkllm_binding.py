"""The RKLLM 1.3.0 binding against a C library with the same ABI, compiled here."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgevlm.rk3588 import rkllm
from helpers import build_stub, picture


@pytest.fixture(scope="module")
def lib_path(tmp_path_factory):
    return build_stub(tmp_path_factory.mktemp("rkllm"))


@pytest.fixture(scope="module")
def stub(lib_path):
    lib = ctypes.CDLL(str(lib_path))
    lib.stub_sizeof.restype = lib.stub_offsetof.restype = ctypes.c_size_t
    lib.stub_str.restype = ctypes.c_char_p
    lib.stub_num.restype = ctypes.c_double
    for f in ("stub_sizeof", "stub_offsetof", "stub_str", "stub_num"):
        getattr(lib, f).argtypes = [ctypes.c_char_p]
    return lib


@pytest.fixture()
def model(lib_path):
    m = rkllm.RkllmModel("/models/internvl3-1b.rkllm", library=lib_path, max_context=2048, max_new_tokens=77)
    yield m
    m.close()


def real_header() -> Path | None:
    """Rockchip's rkllm.h: RKLLM_HEADER, or where a board's runtime package puts it."""
    import os

    for candidate in (os.environ.get("RKLLM_HEADER"), "/usr/include/rkllm.h", "/usr/local/include/rkllm.h"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module", params=["stand-in", "rkllm.h"])
def layout(request, stub, tmp_path_factory):
    """The C layout facts of the stand-in's declarations, and of Rockchip's real header when there is one."""
    if request.param == "stand-in":
        return stub
    header, cxx = real_header(), shutil.which("c++") or shutil.which("g++")
    if header is None or cxx is None:
        pytest.skip("needs Rockchip's rkllm.h (RKLLM_HEADER, or /usr/include/rkllm.h on a board) and a C++ compiler")
    out = tmp_path_factory.mktemp("abi") / "abi_probe.so"
    native = Path(__file__).parent / "native"
    subprocess.run([cxx, "-shared", "-fPIC", f"-I{header.parent}", f"-I{native}", "-o", str(out),
                    str(native / "abi_probe.cpp")], check=True)  # fmt: skip
    lib = ctypes.CDLL(str(out))
    lib.stub_sizeof.restype = lib.stub_offsetof.restype = ctypes.c_size_t
    lib.stub_sizeof.argtypes = lib.stub_offsetof.argtypes = [ctypes.c_char_p]
    return lib


@pytest.mark.parametrize(
    "name", ["Param", "ExtendParam", "Result", "Input", "MultimodalInput", "ImageInput", "InferParam", "Callbacks",
             "PerfStat"],
)  # fmt: skip
def test_struct_sizes_match_the_c_abi(layout, name):
    assert ctypes.sizeof(getattr(rkllm, name)) == layout.stub_sizeof(name.encode())


@pytest.mark.parametrize(
    ("struct", "field"),
    [("Param", "extend_param"), ("Param", "skip_special_token"), ("Param", "top_p"), ("Result", "perf"),
     ("Result", "token_id"), ("Input", "input_type"), ("Input", "input_data"), ("ImageInput", "image_width"),
     ("MultimodalInput", "video"), ("InferParam", "keep_history"), ("InferParam", "max_new_tokens"),
     ("ExtendParam", "reserved")],
)  # fmt: skip
def test_field_offsets_match_the_c_abi(layout, struct, field):
    assert getattr(getattr(rkllm, struct), field).offset == layout.stub_offsetof(f"{struct}.{field}".encode())


def test_init_passes_parameters(model, stub):
    assert stub.stub_str(b"model_path") == b"/models/internvl3-1b.rkllm"
    assert stub.stub_num(b"max_context_len") == 2048 and stub.stub_num(b"max_new_tokens_param") == 77
    assert stub.stub_num(b"temperature") == 0.0 and stub.stub_num(b"top_k") == 1
    assert stub.stub_num(b"skip_special_token") == 1 and stub.stub_num(b"base_domain_id") == 1


def test_multimodal_run_streams_whole_characters(model, stub):
    images = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8) / 10  # 2 images, 3 tokens, dim 8
    pieces = []
    perf = model.run("Image-1: <image>\nImage-2: <image>\nDescribe.", lambda t, i: pieces.append(t), images=images,
                     image_size=(448, 448), image_tokens=("<img>", "</img>", "<IMG_CONTEXT>"), keep_history=True,
                     max_new_tokens=33)  # fmt: skip
    assert "".join(pieces) == "Hello 你好! more more more"
    assert all("\ufffd" not in p for p in pieces)
    assert stub.stub_num(b"input_type") == rkllm.INPUT_MULTIMODAL
    assert stub.stub_num(b"n_image") == 2 and stub.stub_num(b"n_image_tokens") == 3
    assert stub.stub_num(b"image_width") == 448 and stub.stub_num(b"image_height") == 448
    assert stub.stub_str(b"image_start") == b"<img>" and stub.stub_str(b"image_end") == b"</img>"
    assert stub.stub_str(b"image_content") == b"<IMG_CONTEXT>"
    assert stub.stub_num(b"embed_sum") == pytest.approx(float(images.sum()), rel=1e-6)
    assert stub.stub_num(b"embed_last") == pytest.approx(float(images.ravel()[-1]))
    assert stub.stub_str(b"prompt").startswith(b"Image-1: <image>")
    assert stub.stub_num(b"keep_history") == 1 and stub.stub_num(b"max_new_tokens") == 33
    assert perf == rkllm.Perf(12.5, 42, 7.25, 8, 321.0)


def test_text_run_and_history_flag(model, stub):
    out = []
    model.run("Hi", lambda t, i: out.append(i), keep_history=False)
    assert stub.stub_num(b"input_type") == rkllm.INPUT_PROMPT and stub.stub_num(b"keep_history") == 0
    assert stub.stub_str(b"prompt") == b"Hi" and out[0] == 100


def test_abort_from_another_thread_stops_the_run(model, stub):
    """Rockchip's pattern: the callback only hands text on; another thread calls rkllm_abort."""
    import threading

    second, aborted, seen, running = threading.Event(), threading.Event(), [], []

    def on_text(text, token):
        seen.append(text)
        if len(seen) == 2:
            second.set()
            aborted.wait(5)

    worker = threading.Thread(target=lambda: model.run("Hi", on_text))
    worker.start()
    assert second.wait(5)
    running.append(model.is_running())  # 1.3.0: rkllm_is_running returns 1 while a task runs
    model.abort()
    aborted.set()
    worker.join(5)
    assert seen == ["Hel", "lo "] and running == [True] and not model.is_running()
    assert stub.stub_num(b"aborts_in_callback") == 0


def test_false_from_on_text_only_mutes_the_run(model, stub):
    """Returning False stops the text without re-entering the runtime from its own callback."""
    aborts, seen = stub.stub_num(b"aborts"), []
    perf = model.run("Hi", lambda t, i: seen.append(t) or len(seen) < 2)
    assert seen == ["Hel", "lo "] and perf.generate_tokens == 8 and stub.stub_num(b"aborts") == aborts


def test_error_state_raises(model):
    with pytest.raises(rkllm.RkllmError, match="reported an error"):
        model.run("fail", lambda t, i: None)


def test_version_is_read_from_the_library_as_rockchip_builds_it(lib_path):
    """The real runtime prints "rkllm-runtime version: %s, ..." with the version a separate string."""
    data = lib_path.read_bytes()
    assert b"rkllm-runtime version: %s" in data and b"rkllm-runtime version: 1.3.0" not in data
    assert rkllm.library_version(lib_path) == (1, 3, 0)


def test_an_older_runtime_is_refused_before_it_is_called(tmp_path):
    old = build_stub(tmp_path, "1.2.1")
    with pytest.raises(rkllm.RkllmError, match=r"is RKLLM runtime 1\.2\.1; edgevlm needs 1\.3 or newer") as e:
        rkllm.RkllmModel("m.rkllm", library=old)
    assert "\n" not in str(e.value)


def test_the_version_check_finds_a_library_loaded_by_bare_name(tmp_path):
    """dlopen finds a bare name on the library path: the check reads the file that was mapped."""
    import os
    import sys

    old = build_stub(tmp_path, "1.2.1b1")
    code = ("from edgevlm.rk3588 import rkllm\n"
            "try:\n    rkllm.RkllmModel('m.rkllm')\nexcept rkllm.RkllmError as e:\n    print(e)")  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"{old} is RKLLM runtime 1.2.1; edgevlm needs 1.3")
    assert "I rkllm:" not in out  # refused before rkllm_init ran


def test_a_newer_runtime_is_used_with_a_warning(tmp_path):
    newer = build_stub(tmp_path, "1.4.0")
    with pytest.warns(UserWarning, match="1.4.0; edgevlm is tested with 1.3.x"):
        m = rkllm.RkllmModel("m.rkllm", library=newer)
    assert m.version == (1, 4, 0) and m.path == newer
    m.close()


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(rkllm.RkllmError, match="cannot load the RKLLM runtime"):
        rkllm.RkllmModel("m.rkllm", library=tmp_path / "nope.so", verify_version=False)


@pytest.mark.board
def test_real_runtime_on_a_board():
    try:
        lib = ctypes.CDLL("librkllmrt.so")
    except OSError:
        pytest.skip("needs an RK3588 board with librkllmrt.so 1.3 installed")
    path = rkllm.loaded_path(lib)
    assert path is not None and path.exists()
    assert (rkllm.library_version(path) or (0, 0, 0)) >= (1, 3, 0)


class FakeRknn:
    """An RKNN runtime stand-in: features are the tile's mean pixel, repeated (shape checks only)."""

    def __init__(self, rows=256, width=8):
        self.calls, self.shape = [], (rows, width)

    def inference(self, inputs, data_format="nhwc"):
        self.calls.append((inputs[0].shape, inputs[0].dtype, data_format))
        return [np.full((1, *self.shape), inputs[0].mean() / 255, dtype=np.float32)]


@pytest.fixture(scope="module")
def board_bundle(tiny_ckpt, tmp_path_factory):
    from edgevlm.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp("board") / "b"
    convert(tiny_ckpt["hf"], out, ConvertOptions(max_tiles=1), log=lambda m: None)
    return out


def board_engine(bundle, llm, runtime, keep_history=False, **manifest_changes):
    """The NPU engine over the stand-in RKLLM library and a fake RKNN runtime (256 rows of width 8)."""
    from dataclasses import replace

    from tokenizers import Tokenizer

    from edgevlm.bundle import open_bundle
    from edgevlm.engine import prompt_encoder
    from edgevlm.rk3588.board import BoardModel
    from edgevlm.rk3588.rknn_lite import RknnVisionEncoder

    m = replace(open_bundle(bundle), **manifest_changes)
    encoder = prompt_encoder(m, Tokenizer.from_file(str(bundle / "tokenizer.json")))
    vision = RknnVisionEncoder(runtime, *runtime.shape, norm=(m.model.image_mean, m.model.image_std))
    return BoardModel(m, encoder, vision, llm, keep_history=keep_history)


INTERNVL_USER, INTERNVL_END = "\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"


def test_board_engine_drives_rkllm_per_turn(model, stub, board_bundle):
    """keep_history=0, as Rockchip's demos run: RKLLM gets the family's template pieces, and each turn
    the whole conversation as input, with every image again (encoded on the NPU once)."""
    from PIL import Image

    from edgevlm.models.internvl3 import DEFAULT_SYSTEM
    from edgevlm.rk3588.board import defuse

    runtime = FakeRknn()
    session = board_engine(board_bundle, model, runtime).session()
    img = Image.new("RGB", (640, 480), (200, 100, 50))
    clears = stub.stub_num(b"clears")
    answer = session.chat("What is this <|im_end|>?", [img])
    assert answer == "Hello 你好! more more more"  # WAITING bytes not doubled
    assert runtime.calls == [((1, 448, 448, 3), np.uint8, "nhwc")]  # one tile, uint8 NHWC
    assert stub.stub_str(b"system").decode() == f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>"
    assert stub.stub_str(b"prefix").decode() == INTERNVL_USER and stub.stub_str(b"postfix").decode() == INTERNVL_END
    typed = defuse("<|im_end|>", ["<|im_end|>"])
    assert stub.stub_str(b"prompt").decode() == f"<image>\nWhat is this {typed}?"  # typed control text defused
    assert stub.stub_num(b"n_image") == 1 and stub.stub_num(b"n_image_tokens") == 256
    assert stub.stub_num(b"keep_history") == 0
    s = session.last_stats
    assert s.generation.finish_reason == "stop" and s.images == 1 and s.memory_mb == 321.0
    session.chat("And the colour?")
    first = f"<image>\nWhat is this {typed}?{INTERNVL_END}Hello 你好! more more more<|im_end|>"
    assert stub.stub_str(b"prompt").decode() == f"{first}{INTERNVL_USER}And the colour?"
    assert stub.stub_num(b"input_type") == rkllm.INPUT_MULTIMODAL and stub.stub_num(b"n_image") == 1
    assert len(runtime.calls) == 1 and stub.stub_num(b"clears") == clears  # features kept; nothing to clear
    pieces = session.ask("Stop early")
    next(pieces)
    pieces.close()  # Ctrl-C: ends the run (from this thread, if it is still going), keeps the partial answer
    assert session.turns[-1].answer == "Hel" and stub.stub_num(b"aborts_in_callback") == 0
    session.chat("Go on")  # the cut answer is closed in the conversation sent
    assert stub.stub_str(b"prompt").decode().endswith(f"Stop early{INTERNVL_END}Hel<|im_end|>{INTERNVL_USER}Go on")


def test_cache_reuse_sends_only_a_turn_that_continues_the_cache(model, stub, board_bundle):
    """keep_history=1 (the option): only the new turn goes when RKLLM's cache holds the conversation so
    far, ended by the model's own stop; an answer cut short (length, Ctrl-C, client gone) clears it."""
    from PIL import Image

    session = board_engine(board_bundle, model, FakeRknn(), keep_history=True).session()
    clears = stub.stub_num(b"clears")
    session.chat("What?", [Image.new("RGB", (64, 64))])
    assert stub.stub_num(b"keep_history") == 1 and stub.stub_num(b"clears") == clears + 1  # a fresh cache
    session.chat("And the colour?")
    assert stub.stub_str(b"prompt") == b"And the colour?" and stub.stub_num(b"input_type") == rkllm.INPUT_PROMPT
    assert stub.stub_num(b"clears") == clears + 1
    session.chat("Short", max_tokens=3)  # cut by length: the cache does not end where a turn ends
    assert session.last_stats.generation.finish_reason == "length"
    session.chat("Again")
    sent = stub.stub_str(b"prompt").decode()
    assert stub.stub_num(b"clears") == clears + 2 and sent.startswith("<image>\nWhat?") and sent.endswith("Again")
    assert stub.stub_num(b"n_image") == 1  # the whole conversation again, with its image
    pieces = session.ask("Stop early")
    next(pieces)
    pieces.close()
    session.chat("Once more")
    assert stub.stub_num(b"clears") == clears + 3 and stub.stub_str(b"prompt").decode().startswith("<image>")


def test_board_close_releases_both_runtimes(lib_path, stub, board_bundle):
    llm = rkllm.RkllmModel("m.rkllm", library=lib_path)
    board = board_engine(board_bundle, llm, FakeRknn())
    closed = []
    board.vision.close = lambda: closed.append(True)
    destroys = stub.stub_num(b"destroys")
    board.close()
    assert stub.stub_num(b"destroys") == destroys + 1 and closed == [True]


def test_board_sessions_tile_as_the_manifest_says(model, stub, board_bundle):
    from dataclasses import replace

    from PIL import Image

    from edgevlm.bundle import open_bundle

    runtime = FakeRknn()
    m = open_bundle(board_bundle)
    board = board_engine(board_bundle, model, runtime, min_tiles=2, max_tiles=6,
                         model=replace(m.model, use_thumbnail=False))  # fmt: skip
    img = Image.new("RGB", (100, 100), (1, 2, 3))  # square: one tile alone, unless min_tiles says more
    board.session().chat("What?", [img])
    assert sum(shape[0] for shape, _, _ in runtime.calls) == 4  # a 2x2 grid (min 2 tiles), no thumbnail
    assert stub.stub_num(b"n_image_tokens") == 4 * 256
    runtime.calls.clear()
    board.session(max_tiles=1).chat("What?", [img])  # a cap below min_tiles wins
    assert sum(shape[0] for shape, _, _ in runtime.calls) == 1


def test_the_board_drops_the_oldest_turns_as_the_cpu_does(model, stub, board_bundle):
    board = board_engine(board_bundle, model, FakeRknn(), context_length=256)  # 8 prompt + 8 answer tokens a turn
    session = board.session("s")
    for i in range(30):
        session.chat(f"question number {i}", max_tokens=16)
    assert session.dropped_turns >= 1 and session.turns[0].question != "question number 0"
    assert session.last_stats.prompt_tokens <= 256 - 16


def test_server_runs_on_the_board_backend(model, stub, board_bundle):
    import base64
    import io
    import json

    from PIL import Image
    from starlette.testclient import TestClient

    from edgevlm.server.app import create_app
    from edgevlm.server.settings import ServerSettings

    board = board_engine(board_bundle, model, FakeRknn())
    client = TestClient(create_app(ServerSettings(model=board_bundle), model=board), base_url="http://127.0.0.1")
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    first = [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                          {"type": "image_url", "image_url": {"url": url}}]}]  # fmt: skip
    r = client.post("/v1/chat/completions", json={"messages": first, "max_tokens": 64})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "Hello 你好! more more more"
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 8
    assert stub.stub_num(b"n_image") == 1 and stub.stub_str(b"prompt") == b"<image>\nWhat is it?"
    follow = [*first, {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
              {"role": "user", "content": "More?"}]  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json={"messages": follow, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Hello 你好! more more more"
    sent = stub.stub_str(b"prompt").decode()  # the whole conversation, each turn (keep_history=0)
    assert sent.startswith("<image>\nWhat is it?") and sent.endswith(f"{INTERNVL_USER}More?")


def test_smolvlm2_on_the_board_sends_one_tile_per_image_with_its_tags(model, stub, smol_bundle):
    """RKLLM takes an image as one start/content/end block: SmolVLM2's split layout (row/column tags)
    cannot be one, so each image is sent whole, as its processor does without splitting."""
    runtime = FakeRknn(rows=9, width=64)
    session = board_engine(smol_bundle, model, runtime).session()
    session.chat("Describe <image> this.", [picture(300, 200)])
    assert runtime.calls == [((1, 96, 96, 3), np.uint8, "nhwc")]
    assert stub.stub_str(b"prompt").decode() == "<image>Describe <\u200bimage> this."
    assert stub.stub_str(b"system").decode() == "<|im_start|>" and stub.stub_str(b"prefix").decode() == "User:"
    assert stub.stub_str(b"postfix").decode() == "<end_of_utterance>\nAssistant:"
    assert stub.stub_str(b"image_start").decode() == "<fake_token_around_image><global-img>"
    assert stub.stub_str(b"image_end").decode() == "<fake_token_around_image>"
    assert stub.stub_str(b"image_content").decode() == "<image>" and stub.stub_num(b"n_image_tokens") == 9


@pytest.fixture(scope="module")
def qwen_bundle(tmp_path_factory):
    from edgevlm.convert import ConvertOptions, convert
    from edgevlm.models import preset
    from edgevlm.testing import qwen2vl as q

    cfg, root = preset("qwen2-vl-tiny"), tmp_path_factory.mktemp("qwen2vl")
    q.save_checkpoint(q.reference_model(cfg), cfg, root / "ckpt")
    convert(root / "ckpt", root / "bundle", ConvertOptions(), log=lambda m: None)
    return root / "bundle"


def test_qwen2_vl_on_the_board_sends_its_fixed_392_image_with_its_tags(model, stub, qwen_bundle):
    """As Rockchip's multimodal demo runs Qwen2-VL: a 392 x 392 image (196 tokens; RKLLM lays out the
    M-RoPE positions from that width and height), tags <|vision_start|> <|image_pad|> <|vision_end|>.
    The .rknn takes the family's float inputs (patches and rotary tables), made on the host."""
    from edgevlm.bundle import open_bundle

    hidden = open_bundle(qwen_bundle).model.text.hidden_size
    runtime = FakeRknn(rows=196, width=hidden)
    session = board_engine(qwen_bundle, model, runtime).session()
    session.chat("Describe <|image_pad|> this.", [picture(500, 300)])
    assert runtime.calls == [((784, 1176), np.float32, "nhwc")]  # the patches of 392 x 392 (and the rotary tables)
    assert stub.stub_num(b"n_image") == 1 and stub.stub_num(b"n_image_tokens") == 196
    assert stub.stub_num(b"image_width") == 392 and stub.stub_num(b"image_height") == 392
    assert stub.stub_str(b"image_start") == b"<|vision_start|>" and stub.stub_str(b"image_end") == b"<|vision_end|>"
    assert stub.stub_str(b"image_content") == b"<|image_pad|>"
    assert stub.stub_str(b"prompt").decode() == "<image>Describe <\u200b|image_pad|> this."
    assert stub.stub_str(b"prefix") == b"<|im_start|>user\n"
    assert stub.stub_str(b"postfix") == b"<|im_end|>\n<|im_start|>assistant\n"


def test_board_check_runs_every_path_on_the_stand_in(model, stub, board_bundle):
    from edgevlm.rk3588.board_check import CHECKS, report, run_checks

    checks = run_checks(board_engine(board_bundle, model, FakeRknn()), picture(320, 240))
    assert [c.name for c in checks] == list(CHECKS) and all(c.ok for c in checks), checks
    text = report(["CPU: test"], checks)
    assert "| Chinese answer | ok |" in text and "你好" in text and "CPU: test" in text


def test_board_check_reports_a_board_that_cannot_load(tiny_bundle, tmp_path, capsys):
    from edgevlm.rk3588.board_check import main

    out = tmp_path / "report.md"
    assert main([str(tiny_bundle), "--out", str(out)]) == 1
    text = out.read_text(encoding="utf-8")
    assert "| load | FAILED |" in text and "has no vision_rk3588 artifact" in text
    assert "--backend auto: cpu (not an RK3588 board)" in text


@pytest.mark.parametrize("keep_history", [False, True])
def test_a_conversation_with_fewer_images_than_slots_is_refused(model, stub, board_bundle, keep_history):
    from edgevlm.engine import Conversation, TurnStats
    from edgevlm.prompt import ImageLayout, Turn
    from edgevlm.runtime.sampling import SamplingParams

    board = board_engine(board_bundle, model, FakeRknn(), keep_history=keep_history)
    runs = stub.stub_num(b"runs")
    two = Conversation([Turn("A?", (ImageLayout(1),), answer="a"), Turn("B?", (ImageLayout(1),))], [])
    with pytest.raises(ValueError, match="2 image slots but 0 images"):
        board.stream(two, SamplingParams(), TurnStats())
    assert stub.stub_num(b"runs") == runs  # nothing reached RKLLM


def test_json_answers_are_refused_on_the_npu_with_the_reason(model, stub, board_bundle):
    """RKLLM samples inside its library, so no logits reach the JSON mask: the API and the server say so."""
    pytest.importorskip("llguidance", reason="the [json] extra (llguidance) is not installed")
    from starlette.testclient import TestClient

    from edgevlm.rk3588.board import BoardError
    from edgevlm.server.app import create_app
    from edgevlm.server.settings import ServerSettings

    board = board_engine(board_bundle, model, FakeRknn())
    runs = stub.stub_num(b"runs")
    with pytest.raises(BoardError, match="CPU backend"):
        board.chat("Is it open?", json=True)
    client = TestClient(create_app(ServerSettings(model=board_bundle), model=board), base_url="http://127.0.0.1")
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Is it open?"}],
                                                  "response_format": {"type": "json_object"}})  # fmt: skip
    assert r.status_code == 400 and "--backend cpu" in r.json()["error"]["message"]
    assert stub.stub_num(b"runs") == runs  # nothing reached the runtime


def test_videos_are_refused_on_the_npu_with_the_reason(model, stub, board_bundle, tmp_path):
    """RKLLM takes a turn's images as same-size blocks with nothing between: no family's frames fit that yet."""
    pytest.importorskip("av", reason="the [video] extra (PyAV) is not installed")
    import base64

    from starlette.testclient import TestClient

    from edgevlm.rk3588.board import BoardError
    from edgevlm.server.app import create_app
    from edgevlm.server.settings import ServerSettings
    from edgevlm.testing.clips import write_clip

    clip = write_clip(tmp_path / "c.mp4")
    board = board_engine(board_bundle, model, FakeRknn())
    runs = stub.stub_num(b"runs")
    with pytest.raises(BoardError, match="--backend cpu"):
        board.chat("What happens?", videos=[clip])
    client = TestClient(create_app(ServerSettings(model=board_bundle), model=board), base_url="http://127.0.0.1")
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400 and "--backend cpu" in r.json()["error"]["message"]
    assert stub.stub_num(b"runs") == runs  # nothing reached the runtime
