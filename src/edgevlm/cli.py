"""The `edgevlm` command: one subcommand per module, dispatched from a table."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from . import BACKENDS, __version__
from .feature_cache import DEFAULT_IMAGE_CACHE_MB
from .models import FAMILIES
from .runtime.sampling import SamplingParams
from .structured import ResponseFormat, SchemaError, check
from .video import MAX_SAMPLED_FRAMES, FrameSampling


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


def _info(args: argparse.Namespace) -> int:
    from .checkpoint import open_checkpoint

    ck = open_checkpoint(args.checkpoint)
    c = ck.config
    t = c.text
    n = sum(math.prod(ck.shape(name)) for name in ck.names())
    dtypes = sorted({ck.stored_dtype(name) for name in ck.names()})
    print(f"checkpoint   {ck.path} ({c.label}, {', '.join(dtypes)})")
    print(f"parameters   {n / 1e6:.1f} M in {len(ck.names())} tensors")
    for key, text in ck.family.describe(c):
        print(f"{key:<12} {text}")
    print(f"language     {t.num_layers} layers, hidden {t.hidden_size}, {t.num_heads}/{t.num_kv_heads} heads, "
          f"vocab {t.vocab_size}, rope theta {t.rope_theta:g}")  # fmt: skip
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="check a checkpoint strictly and describe it")
    p.add_argument("checkpoint", type=Path)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .convert_options import ConvertOptions
    from .precision import LLM_PRECISIONS, VISION_PRECISIONS

    p = sub.add_parser("convert", help=f"make an edge bundle from a checkpoint of {_families()} (folder or hub id)")
    p.add_argument("src", help="checkpoint folder or a hub id such as OpenGVLab/InternVL3-1B, "
                               "HuggingFaceTB/SmolVLM2-256M-Video-Instruct or Qwen/Qwen2-VL-2B-Instruct")  # fmt: skip
    p.add_argument("out", type=Path, help="bundle folder to write")
    d = ConvertOptions()
    p.add_argument("--llm", default=d.llm, choices=list(LLM_PRECISIONS),
                   help="language model weights (default %(default)s)")
    p.add_argument("--vision", default=d.vision, choices=list(VISION_PRECISIONS),
                   help="vision encoder weights (default %(default)s)")
    p.add_argument("--max-context", type=int, default=d.max_context,
                   help="context window in tokens (default %(default)s)")
    p.add_argument("--max-tiles", type=_number(int, "--max-tiles", 1), default=None,
                   help="most tiles per image, the whole-image tile included (default and upper limit: the model's; "
                        "InternVL3: its dynamic tiles; SmolVLM2: 1 turns image splitting off, more picks the "
                        "largest resize that fits; Qwen2-VL has no tiles: chat's --max-pixels bounds its "
                        "tokens)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                   help="skip measuring the quantised parts against fp32 (about half the conversion at the 1B shape)")


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .convert_options import ConvertOptions

    opts = ConvertOptions(llm=args.llm, vision=args.vision, max_context=args.max_context,
                          max_tiles=args.max_tiles, force=args.force, accuracy=args.accuracy)  # fmt: skip
    convert(args.src, args.out, opts)
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every file of a bundle against its manifest (sizes and sha256)")
    p.add_argument("bundle", type=Path)


def _verify(args: argparse.Namespace) -> int:
    from .accuracy import report
    from .bundle import open_bundle

    manifest = open_bundle(args.bundle, hashes=True)
    print(f"{args.bundle}: ok ({len(manifest.files)} files, format {manifest.format_version})")
    print("accuracy against fp32, measured at conversion:")
    for line in report(manifest.parts):
        print(f"  {line}")
    return 0


def _number(kind: type, name: str, low: float | None = None, high: float | None = None, *,
            above: bool = False) -> Callable[[str], object]:
    """An argparse type: a finite number of `kind` in [low, high] (or (low, high] with `above`)."""

    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text}")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if above else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{name} must be <= {high:g}, got {text}")
        return value

    return parse


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="ask about images: once with -p, or an interactive chat")
    p.add_argument("-m", "--model", type=Path, required=True, help="bundle folder")
    p.add_argument("-i", "--image", type=Path, action="append", default=[], help="image file (repeatable)")
    p.add_argument("-v", "--video", type=Path, action="append", default=[],
                   help="video clip (repeatable; needs the [video] extra)")
    p.add_argument("-p", "--prompt", help="answer this once and exit (only the answer goes to stdout)")
    p.add_argument("--system", help="system message (default: the model's own, if it has one)")
    d = SamplingParams()
    p.add_argument("--max-tokens", type=_number(int, "--max-tokens", 1), default=d.max_tokens)
    p.add_argument("--temperature", type=_number(float, "--temperature", 0, 2), default=d.temperature,
                   help="0 is greedy")
    p.add_argument("--top-p", type=_number(float, "--top-p", 0, 1, above=True), default=d.top_p, help="in (0, 1]")
    p.add_argument("--top-k", type=_number(int, "--top-k", 0), default=d.top_k, help="0: no limit")
    p.add_argument("--repetition-penalty", type=_number(float, "--repetition-penalty", 0, above=True),
                   default=d.repetition_penalty)
    p.add_argument("--seed", type=_number(int, "--seed", 0, 2**63 - 1), default=d.seed)
    p.add_argument("--max-tiles", type=_number(int, "--max-tiles", 1), default=None,
                   help="most tiles per image, the whole-image tile included (lowers the bundle's limit, never "
                        "raises it; for SmolVLM2, 1 turns image splitting off)")  # fmt: skip
    p.add_argument("--max-pixels", type=_number(int, "--max-pixels", 1), default=None,
                   help="resize each image to at most this area in pixels, which bounds its tokens (Qwen2-VL: one "
                        "token per 28x28 px, e.g. 401408 for 512 tokens; tile models: that many tiles' area)")
    p.add_argument("--frames", type=_number(int, "--frames", 1, MAX_SAMPLED_FRAMES), default=None,
                   help="most frames taken from each video (default: the model's own sampling, as many as the "
                        "context holds)")  # fmt: skip
    p.add_argument("--fps", type=_number(float, "--fps", 0, 1000, above=True), default=None,
                   help="frames per second taken from each video (default: the model's own: InternVL3 takes 8 "
                        "frames evenly, SmolVLM2 1 per second, Qwen2-VL 2 per second)")  # fmt: skip
    p.add_argument("--threads", type=_number(int, "--threads", 1), default=None)
    p.add_argument("--image-cache-mb", type=_number(float, "--image-cache-mb", 0, 65536),
                   default=DEFAULT_IMAGE_CACHE_MB, help="memory for the features of images seen before (0: none)")
    p.add_argument("--stats", action="store_true", help="print timings to stderr")
    p.add_argument("--json-schema", type=Path, help="answer with JSON that follows this JSON schema file "
                   "(needs the [json] extra)")  # fmt: skip
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="cpu (ONNX Runtime) or rk3588 (NPU: RKNN-Lite + RKLLM); auto picks rk3588 on a board")


def _schema_file(path: Path | None) -> ResponseFormat | None:
    """The --json-schema file as a checked ResponseFormat; a UserError naming what is wrong."""
    if path is None:
        return None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(schema, dict):
        raise UserError(f"{path}: a JSON schema is an object, not {type(schema).__name__}")
    fmt = ResponseFormat(schema)
    try:
        check(fmt)
    except SchemaError as e:
        raise UserError(f"{path}: {e}") from None
    return fmt


def _chat(args: argparse.Namespace) -> int:
    from .chat import ChatOptions, run_chat
    from .prompt import is_text

    for file in (*args.image, *args.video):
        if not file.is_file():
            raise UserError(f"{file}: no such file")
    for flag, text in (("-p", args.prompt), ("--system", args.system)):
        if text is not None and not is_text(text):
            raise UserError(f"{flag} is not valid UTF-8 text")
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              repetition_penalty=args.repetition_penalty, seed=args.seed,
                              max_tokens=args.max_tokens, response_format=_schema_file(args.json_schema))  # fmt: skip
    opts = ChatOptions(bundle=args.model, images=tuple(args.image), videos=tuple(args.video), prompt=args.prompt,
                       system=args.system, max_tiles=args.max_tiles, max_pixels=args.max_pixels,
                       frames=FrameSampling(args.frames, args.fps), stats=args.stats, threads=args.threads,
                       backend=args.backend, image_cache_mb=args.image_cache_mb, sampling=sampling)  # fmt: skip
    return run_chat(opts)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure load, vision, prefill, first token, decode and memory of a bundle")
    p.add_argument("-m", "--model", type=Path, required=True, help="bundle folder")
    p.add_argument("--image", type=Path, help="image to encode (default: a synthetic one of --tiles tiles)")
    p.add_argument("--tiles", type=_number(int, "--tiles", 1), default=1, help="tiles (default 1)")
    p.add_argument("--video", type=Path, help="also ask about this clip: frames, vision per frame, first token")
    p.add_argument("--video-frames", type=_number(int, "--video-frames", 1, MAX_SAMPLED_FRAMES), default=None,
                   help="most frames taken from the clip (default: the model's own sampling)")
    p.add_argument("--prompt-tokens", type=_number(int, "--prompt-tokens", 1), default=20, help="question tokens")
    p.add_argument("--gen-tokens", type=_number(int, "--gen-tokens", 2), default=64)
    p.add_argument("--runs", type=_number(int, "--runs", 1), default=3)
    p.add_argument("--threads", type=_number(int, "--threads", 1), default=None)
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="as for chat")


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, run_bench

    for file in (args.image, args.video):
        if file and not file.is_file():
            raise UserError(f"{file}: no such file")
    opts = BenchOptions(bundle=args.model, image=args.image, tiles=args.tiles, prompt_tokens=args.prompt_tokens,
                        gen_tokens=args.gen_tokens, runs=args.runs, threads=args.threads, backend=args.backend,
                        video=args.video, video_frames=args.video_frames)  # fmt: skip
    return run_bench(opts, args.json)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the [server] extra)")
    from .server.settings import add_arguments

    add_arguments(p)


def _serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("the server needs its extra: pip install 'edgevlm[server]'") from None
    from .server.app import serve
    from .server.settings import from_namespace

    try:
        settings = from_namespace(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    serve(settings)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-rk3588", help="make and check the NPU artifacts (.rknn vision, .rkllm recipe)")
    p.add_argument("src", help="checkpoint folder or hub id (or a bundle whose source checkpoint is here)")
    p.add_argument("out", type=Path, help="bundle to add the artifacts to (converted from SRC if missing)")
    p.add_argument("--target", default="rk3588", choices=["rk3588", "rk3576", "rk3562"])


def _export(args: argparse.Namespace) -> int:
    from .rk3588.export import export_rk3588

    export_rk3588(args.src, args.out, target=args.target)
    return 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report the CPU, memory, board, NPU driver and libraries, and the backend "
                                      "--backend auto would pick (and why)")  # fmt: skip
    p.add_argument("-m", "--model", type=Path, default=None, help="bundle to decide the backend for")
    p.add_argument("--json", action="store_true", help="the report as JSON")


def _doctor(args: argparse.Namespace) -> int:
    import json

    from .doctor import examine

    report = examine(args.model)
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0


# name -> (add the subparser, run it)
COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "convert": (_add_convert, _convert),
    "verify": (_add_verify, _verify),
    "chat": (_add_chat, _chat),
    "bench": (_add_bench, _bench),
    "serve": (_add_serve, _serve),
    "export-rk3588": (_add_export, _export),
    "info": (_add_info, _info),
    "doctor": (_add_doctor, _doctor),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other user error, pointing at the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def _families() -> str:
    names = list(FAMILIES.values())
    return f"{', '.join(names[:-1])} or {names[-1]}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgevlm", description=f"Run small vision-language models ({_families()}) on a CPU or the "
                                                 "RK3588 NPU.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"edgevlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .runtime.memory import pin_mmap_threshold

    pin_mmap_threshold()
    try:
        return COMMANDS[args.command][1](args)
    except _user_errors() as e:
        print(f"edgevlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from .bundle import BundleError
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .convert import ConvertError
    from .image import ImageError
    from .rk3588.board import BoardError
    from .rk3588.export import ExportError
    from .runtime.decoder import ContextOverflow
    from .tokenizer import TokenizerError
    from .video import VideoError

    return (UserError, ExportError, BoardError, CheckpointError, ConfigError, BundleError, ConvertError, ImageError,
            VideoError, ContextOverflow, TokenizerError, FileNotFoundError, FileExistsError)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
