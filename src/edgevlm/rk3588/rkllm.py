"""A ctypes binding of Rockchip's RKLLM runtime 1.3.0 (`librkllmrt.so`, aarch64).

The layouts below follow rkllm.h of release 1.3.0, whose ABI broke with 1.2.x (RKLLMParam lost
img_start/img_end/img_content, RKLLMInferParam gained sampling parameters, rkllm_init takes a
struct of callbacks, and multimodal input carries image count and size). The binding therefore
reads the version of the library it loaded, before calling into it, and refuses one older than 1.3.

The runtime works per turn: a prompt (with `<image>` where image embeddings go) and the image
features go in; text comes back through a callback, token by token. As in Rockchip's own demos only
NORMAL text is passed on: WAITING reports the bytes of a character not yet complete, and the NORMAL
callback after it carries the whole character. A run is stopped with `abort()` from another thread,
never from inside the callback.
"""

from __future__ import annotations

import codecs
import ctypes
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUPPORTED = (1, 3)  # the oldest runtime whose C interface this binding speaks
NORMAL, WAITING, FINISH, ERROR = 0, 1, 2, 3
INPUT_PROMPT, INPUT_TOKEN, INPUT_EMBED, INPUT_MULTIMODAL = 0, 1, 2, 3
INFER_GENERATE = 0
c_size = ctypes.c_size_t


class RkllmError(RuntimeError):
    """The RKLLM runtime failed or is not the version this binding speaks."""


class ExtendParam(ctypes.Structure):
    _fields_ = [("base_domain_id", ctypes.c_int32), ("embed_flash", ctypes.c_int8),
                ("enabled_cpus_num", ctypes.c_int8), ("enabled_cpus_mask", ctypes.c_uint32),
                ("n_batch", ctypes.c_uint8), ("use_cross_attn", ctypes.c_int8),
                ("reserved", ctypes.c_uint8 * 104)]  # fmt: skip


class Param(ctypes.Structure):
    _fields_ = [("model_path", ctypes.c_char_p), ("max_context_len", ctypes.c_int32),
                ("max_new_tokens", ctypes.c_int32), ("top_k", ctypes.c_int32), ("n_keep", ctypes.c_int32),
                ("top_p", ctypes.c_float), ("temperature", ctypes.c_float), ("repeat_penalty", ctypes.c_float),
                ("frequency_penalty", ctypes.c_float), ("presence_penalty", ctypes.c_float),
                ("mirostat", ctypes.c_int32), ("mirostat_tau", ctypes.c_float), ("mirostat_eta", ctypes.c_float),
                ("skip_special_token", ctypes.c_bool), ("ignore_eos_token", ctypes.c_bool),
                ("is_async", ctypes.c_bool), ("extend_param", ExtendParam)]  # fmt: skip


class PerfStat(ctypes.Structure):
    _fields_ = [("prefill_time_ms", ctypes.c_float), ("prefill_tokens", ctypes.c_int),
                ("generate_time_ms", ctypes.c_float), ("generate_tokens", ctypes.c_int),
                ("memory_usage_mb", ctypes.c_float)]  # fmt: skip


class _Floats(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_float)), ("size", ctypes.c_int), ("num_tokens", ctypes.c_int)]


class Result(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char_p), ("token_id", ctypes.c_int32), ("last_hidden_layer", _Floats),
                ("logits", _Floats), ("perf", PerfStat)]  # fmt: skip


class ImageInput(ctypes.Structure):
    _fields_ = [("image_embed", ctypes.POINTER(ctypes.c_float)), ("n_image_tokens", c_size), ("n_image", c_size),
                ("image_start", ctypes.c_char_p), ("image_end", ctypes.c_char_p), ("image_content", ctypes.c_char_p),
                ("image_width", c_size), ("image_height", c_size)]  # fmt: skip


class VideoInput(ctypes.Structure):
    _fields_ = [("video_embed", ctypes.POINTER(ctypes.c_float)), ("n_frame_tokens", c_size),
                ("n_frame_per_video", c_size), ("n_video", c_size), ("video_start", ctypes.c_char_p),
                ("video_end", ctypes.c_char_p), ("video_content", ctypes.c_char_p), ("frame_width", c_size),
                ("frame_height", c_size)]  # fmt: skip


class MultimodalInput(ctypes.Structure):
    _fields_ = [("prompt", ctypes.c_char_p), ("image", ImageInput), ("video", VideoInput)]


class _EmbedInput(ctypes.Structure):
    _fields_ = [("embed", ctypes.POINTER(ctypes.c_float)), ("n_tokens", c_size)]


class _TokenInput(ctypes.Structure):
    _fields_ = [("input_ids", ctypes.POINTER(ctypes.c_int32)), ("n_tokens", c_size)]


class _InputData(ctypes.Union):
    _fields_ = [("prompt_input", ctypes.c_char_p), ("embed_input", _EmbedInput), ("token_input", _TokenInput),
                ("multimodal_input", MultimodalInput)]  # fmt: skip


class Input(ctypes.Structure):
    _fields_ = [("role", ctypes.c_char_p), ("enable_thinking", ctypes.c_bool), ("input_type", ctypes.c_int),
                ("input_data", _InputData)]  # fmt: skip


class SamplingParam(ctypes.Structure):
    _fields_ = [("top_k", ctypes.c_int32), ("top_p", ctypes.c_float), ("temperature", ctypes.c_float),
                ("repeat_penalty", ctypes.c_float), ("frequency_penalty", ctypes.c_float),
                ("presence_penalty", ctypes.c_float), ("mirostat", ctypes.c_int32), ("mirostat_tau", ctypes.c_float),
                ("mirostat_eta", ctypes.c_float)]  # fmt: skip


class InferParam(ctypes.Structure):
    _fields_ = [("mode", ctypes.c_int), ("lora_params", ctypes.c_void_p), ("prompt_cache_params", ctypes.c_void_p),
                ("sampling_params", ctypes.POINTER(SamplingParam)), ("keep_history", ctypes.c_int),
                ("max_new_tokens", ctypes.c_int32)]  # fmt: skip


ResultCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Result), ctypes.c_void_p, ctypes.c_int)


class Callbacks(ctypes.Structure):
    _fields_ = [("result_callback", ResultCallback), ("result_userdata", ctypes.c_void_p),
                ("tokenizer_callback", ctypes.c_void_p), ("tokenizer_userdata", ctypes.c_void_p),
                ("embed_callback", ctypes.c_void_p), ("embed_userdata", ctypes.c_void_p)]  # fmt: skip


_BANNER = re.compile(rb"rkllm-runtime version: (\d+)\.(\d+)\.(\d+)")
# The runtime prints "rkllm-runtime version: %s, ..." at init; the version itself is a separate string.
_FORMAT = b"rkllm-runtime version: %s"
_LITERAL = re.compile(rb"\x00(1)\.(\d+)\.(\d+)(?:b\d+)?\x00")  # RKLLM runtimes are 1.x (drivers 0.x)


def library_version(path: str | Path) -> tuple[int, int, int] | None:
    """The runtime version written in the library file, if it can be told."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if m := _BANNER.search(data):
        return tuple(int(x) for x in m.groups())  # type: ignore[return-value]
    if _FORMAT in data:
        found = {tuple(int(x) for x in m) for m in _LITERAL.findall(data)}
        if len(found) == 1:
            return found.pop()  # type: ignore[return-value]
    return None


def loaded_path(lib: ctypes.CDLL, symbol: str = "rkllm_init") -> Path | None:
    """The file a loaded library was mapped from (it may have been loaded by bare name)."""
    address = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value or 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= address < high and len(fields) == 6 and fields[5].startswith("/"):
                    return Path(fields[5].strip())
    except OSError:  # not Linux
        pass
    return None


def check_version(path: str | Path) -> tuple[int, int, int] | None:
    """Refuse a runtime older than 1.3 (its structures differ); the version read, if any."""
    version = library_version(path)
    needed = ".".join(map(str, SUPPORTED))
    if version is None:
        warnings.warn(f"{path}: cannot tell the RKLLM runtime version; assuming {needed}.x", stacklevel=3)
    elif version[:2] < SUPPORTED:
        raise RkllmError(f"{path} is RKLLM runtime {'.'.join(map(str, version))}; edgevlm needs {needed} or newer "
                         f"(install librkllmrt.so {needed}.0)")  # fmt: skip
    elif version[:2] > SUPPORTED:
        warnings.warn(f"{path} is RKLLM runtime {'.'.join(map(str, version))}; edgevlm is tested with {needed}.x",
                      stacklevel=3)  # fmt: skip
    return version


@dataclass
class Perf:
    prefill_ms: float = 0.0
    prefill_tokens: int = 0
    generate_ms: float = 0.0
    generate_tokens: int = 0
    memory_mb: float = 0.0


def _bind(lib: ctypes.CDLL) -> None:
    handle_p = ctypes.POINTER(ctypes.c_void_p)
    signatures = {
        "rkllm_createDefaultParam": ([], Param),
        "rkllm_init": ([handle_p, ctypes.POINTER(Param), ctypes.POINTER(Callbacks)], ctypes.c_int),
        "rkllm_run": ([ctypes.c_void_p, ctypes.POINTER(Input), ctypes.POINTER(InferParam), ctypes.c_void_p],
                      ctypes.c_int),
        "rkllm_abort": ([ctypes.c_void_p], ctypes.c_int),
        "rkllm_is_running": ([ctypes.c_void_p], ctypes.c_int),
        "rkllm_destroy": ([ctypes.c_void_p], ctypes.c_int),
        "rkllm_clear_kv_cache": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
        "rkllm_set_chat_template": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p],
                                    ctypes.c_int),
    }  # fmt: skip
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


class RkllmModel:
    """One .rkllm model loaded in the runtime; `run` is one turn, streamed through `on_text`."""

    def __init__(self, model_path: str | Path, *, library: str | Path = "librkllmrt.so", max_context: int = 4096,
                 max_new_tokens: int = 512, temperature: float = 0.0, top_k: int = 1, top_p: float = 1.0,
                 repeat_penalty: float = 1.0, verify_version: bool = True) -> None:  # fmt: skip
        try:
            self.lib = ctypes.CDLL(str(library))
        except OSError as e:
            raise RkllmError(f"cannot load the RKLLM runtime {library}: {e}") from None
        _bind(self.lib)
        self.path = loaded_path(self.lib) or Path(library)
        # Before any call into it: a 1.2 runtime reads these structures at other offsets.
        self.version = check_version(self.path) if verify_version else None
        p = self.lib.rkllm_createDefaultParam()
        self._path = str(model_path).encode()  # the runtime keeps the pointer
        p.model_path, p.max_context_len, p.max_new_tokens = self._path, max_context, max_new_tokens
        p.temperature, p.top_k, p.top_p, p.repeat_penalty = temperature, top_k, top_p, repeat_penalty
        p.skip_special_token, p.is_async = True, False
        p.extend_param.base_domain_id = 1  # the vision encoder (RKNN) uses domain 0
        self._on_text: Callable[[str, int], bool | None] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._perf, self._error, self._muted = Perf(), None, False
        self._template: tuple[str, str, str] | None = None
        self._callback = ResultCallback(self._result)  # kept alive: the runtime holds the pointer
        self._callbacks = Callbacks(result_callback=self._callback)
        self.handle = ctypes.c_void_p()
        if self.lib.rkllm_init(ctypes.byref(self.handle), ctypes.byref(p), ctypes.byref(self._callbacks)) != 0:
            raise RkllmError(f"rkllm_init failed for {model_path}")

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        """The text RKLLM puts before the conversation (system), and before and after each user input."""
        if self._template == (system, prefix, postfix):
            return
        if self.lib.rkllm_set_chat_template(self.handle, system.encode(), prefix.encode(), postfix.encode()) != 0:
            raise RkllmError("rkllm_set_chat_template failed")
        self._template = (system, prefix, postfix)

    def _result(self, result: ctypes.POINTER(Result), userdata: int, state: int) -> int:  # type: ignore[valid-type]
        r = result.contents if result else None
        if state == NORMAL and r is not None and r.text and not self._muted:
            text = self._decoder.decode(r.text)
            if text and self._on_text and self._on_text(text, int(r.token_id)) is False:
                self._muted = True  # the caller aborts from its own thread; nothing more is passed on
        elif state == FINISH and r is not None:
            f = r.perf
            self._perf = Perf(f.prefill_time_ms, f.prefill_tokens, f.generate_time_ms, f.generate_tokens,
                              f.memory_usage_mb)  # fmt: skip
        elif state == ERROR:
            self._error = "the RKLLM runtime reported an error during the run"
        return 0  # 0: go on (1 would pause the run, not end it)

    def run(self, prompt: str, on_text: Callable[[str, int], bool | None], *, images: np.ndarray | None = None,
            image_size: tuple[int, int] | None = None, image_tokens: tuple[str, str, str] | None = None,
            keep_history: bool = False, max_new_tokens: int = 512) -> Perf:  # fmt: skip
        """One turn. `prompt` holds one `<image>` per image; `images` is float32 [n_image, n_tokens, dim];
        `image_tokens` the (start, end, content) strings RKLLM puts around and in each image's rows, and
        `image_size` the (width, height) of a tile.
        `on_text(text, token)` may return False to receive no more text; `abort()` from another thread
        ends the run."""
        self._on_text, self._error, self._perf, self._muted = on_text, None, Perf(), False
        self._decoder.reset()
        inp = Input(role=b"user", enable_thinking=False)
        encoded = prompt.encode()
        if images is None:
            inp.input_type = INPUT_PROMPT
            inp.input_data.prompt_input = encoded
        else:
            if image_tokens is None or image_size is None:
                raise ValueError("a multimodal run needs the image size and image tokens of the model")
            embeds = np.ascontiguousarray(images, dtype=np.float32)
            inp.input_type = INPUT_MULTIMODAL
            mm = inp.input_data.multimodal_input
            mm.prompt = encoded
            mm.image = ImageInput(embeds.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), embeds.shape[1],
                                  embeds.shape[0], *(t.encode() for t in image_tokens), image_size[0],
                                  image_size[1])  # fmt: skip
        infer = InferParam(mode=INFER_GENERATE, keep_history=int(keep_history), max_new_tokens=max_new_tokens)
        rc = self.lib.rkllm_run(self.handle, ctypes.byref(inp), ctypes.byref(infer), None)
        self._on_text = None
        if rc != 0 or self._error:
            raise RkllmError(self._error or f"rkllm_run returned {rc}")
        return self._perf

    def abort(self) -> None:
        self.lib.rkllm_abort(self.handle)

    def is_running(self) -> bool:
        return self.lib.rkllm_is_running(self.handle) == 1  # 1.3.0's header: 1 while a task runs

    def clear_kv_cache(self, keep_system_prompt: bool = False) -> None:
        if self.lib.rkllm_clear_kv_cache(self.handle, int(keep_system_prompt), None, None) != 0:
            raise RkllmError("rkllm_clear_kv_cache failed")

    def close(self) -> None:
        if self.handle:
            self.lib.rkllm_destroy(self.handle)
            self.handle = ctypes.c_void_p()
