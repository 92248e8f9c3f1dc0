"""`edgevlm chat`: one answer (-p) or an interactive `User:` / `Answer:` conversation."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .feature_cache import DEFAULT_IMAGE_CACHE_MB
from .image import ImageError
from .prompt import is_text
from .runtime.decoder import ContextOverflow
from .runtime.sampling import SamplingParams
from .session import ChatSession
from .video import NO_BOUNDS, FrameSampling, VideoError

HELP = "commands: /image PATH, /video PATH (attach to the next question), /clear, /stats, /exit"


@dataclass(frozen=True)
class ChatOptions:
    bundle: Path
    images: tuple[Path, ...] = ()
    videos: tuple[Path, ...] = ()
    prompt: str | None = None
    system: str | None = None
    max_tiles: int | None = None
    max_pixels: int | None = None
    frames: FrameSampling = NO_BOUNDS  # each video's frames: how many at most, at what rate
    stats: bool = False
    threads: int | None = None
    backend: str = "auto"  # auto, cpu or rk3588
    image_cache_mb: float = DEFAULT_IMAGE_CACHE_MB
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Attached:
    """Files that go with the next question."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)

    def clear(self) -> None:
        self.images.clear()
        self.videos.clear()


def _pieces(session: ChatSession, question: str, files: Attached, opts: ChatOptions) -> Iterator[str]:
    return (chunk.text for chunk in session.ask(question, files.images, opts.sampling, videos=files.videos))


def _stream_plain(pieces: Iterator[str], out: TextIO) -> None:
    for text in pieces:
        out.write(text)
        out.flush()
    out.write("\n")


def _stream_markdown(pieces: Iterator[str]) -> None:
    """Re-render the answer as Markdown while it streams (terminal only)."""
    from rich.console import Console
    from rich.live import Live
    from rich.markdown import Markdown

    text = ""
    with Live(Markdown(""), console=Console(), refresh_per_second=12, vertical_overflow="visible") as live:
        for piece in pieces:
            text += piece
            live.update(Markdown(text))


def _answer(session: ChatSession, question: str, files: Attached, opts: ChatOptions,
            markdown: bool) -> None:  # fmt: skip
    pieces = _pieces(session, question, files, opts)
    try:
        _stream_markdown(pieces) if markdown else _stream_plain(pieces, sys.stdout)
    finally:
        pieces.close()  # on Ctrl-C too: stops the generation and keeps the partial answer
    if session.dropped_turns:
        print(f"(context full: dropped the {session.dropped_turns} oldest turn(s))", file=sys.stderr)
    if opts.stats and session.last_stats:
        print(session.last_stats.summary(), file=sys.stderr)


def open_session(opts: ChatOptions) -> ChatSession:
    """A session on the CPU, or with backend rk3588 (or auto on a board) on the NPU."""
    from . import load

    model = load(opts.bundle, threads=opts.threads, backend=opts.backend)
    model.image_cache.resize(opts.image_cache_mb)
    return model.session(opts.system, max_tiles=opts.max_tiles, max_pixels=opts.max_pixels, frames=opts.frames)


def run_chat(opts: ChatOptions) -> int:
    session = open_session(opts)
    files = Attached(list(opts.images), list(opts.videos))
    if opts.prompt is not None:
        _answer(session, opts.prompt, files, opts, markdown=False)
        return 0
    return _interactive(session, files, opts)


def _interactive(session: ChatSession, pending: Attached, opts: ChatOptions) -> int:
    markdown = sys.stdout.isatty()
    print(f"edgevlm chat: {opts.bundle}. {HELP}", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 arrive as surrogates, checked below
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = input("User: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not is_text(line):
            print("error: that line is not valid UTF-8 text; type it again", file=sys.stderr)
            continue
        if not line:
            continue
        if line.startswith("/"):
            if _command(session, line, pending) == "exit":
                return 0
            continue
        print("Answer: ", end="" if not markdown else "\n", flush=True)
        try:
            _answer(session, line, pending, opts, markdown)
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr)  # the partial answer stays in the history
        except (ImageError, VideoError, ContextOverflow, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
        pending.clear()


def _command(session: ChatSession, line: str, pending: Attached) -> str | None:
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return "exit"
    if name == "/clear":
        session.clear()
        pending.clear()
        print("(conversation cleared)", file=sys.stderr)
    elif name in ("/image", "/video"):
        path = Path(arg.strip()).expanduser()
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
        else:
            (pending.images if name == "/image" else pending.videos).append(path)
            print(f"({name[1:]} {path.name} will go with your next question)", file=sys.stderr)
    elif name == "/stats":
        print(session.last_stats.summary() if session.last_stats else "(no answer yet)", file=sys.stderr)
    else:
        print(f"unknown command {name}; {HELP}", file=sys.stderr)
    return None
