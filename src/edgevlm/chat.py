"""`edgevlm chat`: one answer (-p) or an interactive `User:` / `Answer:` conversation."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .image import ImageError
from .runtime.decoder import ContextOverflow
from .runtime.sampling import SamplingParams
from .session import ChatSession

HELP = "commands: /image PATH (attach to the next question), /clear, /stats, /exit"


@dataclass(frozen=True)
class ChatOptions:
    bundle: Path
    images: tuple[Path, ...] = ()
    prompt: str | None = None
    system: str | None = None
    max_tiles: int | None = None
    stats: bool = False
    threads: int | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)


def _stream_plain(session: ChatSession, question: str, images: list[Path], params: SamplingParams,
                  out: TextIO) -> None:  # fmt: skip
    for chunk in session.ask(question, images, params):
        out.write(chunk.text)
        out.flush()
    out.write("\n")


def _stream_markdown(session: ChatSession, question: str, images: list[Path], params: SamplingParams) -> None:
    """Re-render the answer as Markdown while it streams (terminal only)."""
    from rich.console import Console
    from rich.live import Live
    from rich.markdown import Markdown

    text = ""
    with Live(Markdown(""), console=Console(), refresh_per_second=12, vertical_overflow="visible") as live:
        for chunk in session.ask(question, images, params):
            text += chunk.text
            live.update(Markdown(text))


def _answer(session: ChatSession, question: str, images: list[Path], opts: ChatOptions, markdown: bool) -> None:
    if markdown:
        _stream_markdown(session, question, images, opts.sampling)
    else:
        _stream_plain(session, question, images, opts.sampling, sys.stdout)
    if session.dropped_turns:
        print(f"(context full: dropped the {session.dropped_turns} oldest turn(s))", file=sys.stderr)
    if opts.stats and session.last_stats:
        print(session.last_stats.summary(), file=sys.stderr)


def run_chat(opts: ChatOptions) -> int:
    from .model import load

    model = load(opts.bundle, threads=opts.threads)
    session = model.session(opts.system, max_tiles=opts.max_tiles)
    if opts.prompt is not None:
        _answer(session, opts.prompt, list(opts.images), opts, markdown=False)
        return 0
    return _interactive(session, list(opts.images), opts)


def _interactive(session: ChatSession, pending: list[Path], opts: ChatOptions) -> int:
    markdown = sys.stdout.isatty()
    print(f"edgevlm chat: {opts.bundle} ({session.model.context_length}-token context). {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("User: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
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
        except (ImageError, ContextOverflow, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
        pending.clear()


def _command(session: ChatSession, line: str, pending: list[Path]) -> str | None:
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return "exit"
    if name == "/clear":
        session.clear()
        pending.clear()
        print("(conversation cleared)", file=sys.stderr)
    elif name == "/image":
        path = Path(arg.strip()).expanduser()
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
        else:
            pending.append(path)
            print(f"(image {path.name} will go with your next question)", file=sys.stderr)
    elif name == "/stats":
        print(session.last_stats.summary() if session.last_stats else "(no answer yet)", file=sys.stderr)
    else:
        print(f"unknown command {name}; {HELP}", file=sys.stderr)
    return None
