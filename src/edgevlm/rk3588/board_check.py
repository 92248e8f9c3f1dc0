"""`scripts/board-check`: run once on a board, paste the report into an issue.

It exercises each path of the NPU backend (load, one image, two turns, an answer cut short, a Chinese
answer, the server's streaming) and writes what happened, with `edgevlm doctor`'s report, as
Markdown. Each check records its outcome; one failing does not stop the others.

    python -m edgevlm.rk3588.board_check BUNDLE [--image PICTURE] [--out board-report.md]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

QUESTION, FOLLOW_UP = "Describe the image.", "What colours are in it?"
CHINESE = "请用中文描述这张图片。"
LONG = "Count from one to one hundred, in words."


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def _one_image(engine: Any, image: Image.Image) -> str:
    session = engine.session()
    answer = session.chat(QUESTION, [image], max_tokens=64)
    s = session.last_stats
    assert answer.strip(), "empty answer"
    return f"{len(answer)} chars, vision {s.vision_ms:.0f} ms, first token {s.ttft_ms:.0f} ms: {answer[:80]!r}"


def _two_turns(engine: Any, image: Image.Image) -> str:
    session = engine.session()
    session.chat(QUESTION, [image], max_tokens=32)
    second = session.chat(FOLLOW_UP, max_tokens=32)
    s = session.last_stats
    assert second.strip(), "empty second answer"
    return f"second turn: vision {s.vision_ms:.0f} ms (the image is not encoded again), {second[:80]!r}"


def _abort(engine: Any, image: Image.Image) -> str:
    session = engine.session()
    pieces = session.ask(LONG, [image])
    kept = "".join(next(pieces).text for _ in range(3))
    pieces.close()  # as Ctrl-C or a client that leaves
    assert session.turns[-1].answer == kept, (session.turns[-1].answer, kept)
    after = session.chat(FOLLOW_UP, max_tokens=16)
    assert after.strip(), "no answer after the cut one"
    return f"kept {kept!r}; the next turn answered {after[:60]!r}"


def _chinese(engine: Any, image: Image.Image) -> str:
    answer = engine.session().chat(CHINESE, [image], max_tokens=48)
    assert "\ufffd" not in answer, f"broken UTF-8 in {answer!r}"
    assert _has_cjk(answer), f"no Chinese characters in {answer!r}"
    return answer[:60]


def _server_stream(engine: Any, image: Image.Image) -> str:
    import base64
    import io
    import json

    from starlette.testclient import TestClient

    from ..server.app import create_app
    from ..server.settings import ServerSettings

    buf = io.BytesIO()
    image.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"messages": [{"role": "user", "content": content}], "stream": True, "max_tokens": 32}
    client = TestClient(create_app(ServerSettings(model=Path(".")), model=engine), base_url="http://127.0.0.1")
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert len(events) > 2 and text.strip(), f"{len(events)} events, text {text!r}"
    return f"{len(events)} events: {text[:60]!r}"


CHECKS: dict[str, Callable[[Any, Image.Image], str]] = {
    "one image": _one_image, "two turns": _two_turns, "answer cut short": _abort, "Chinese answer": _chinese,
    "server streaming": _server_stream,
}  # fmt: skip


def run_checks(engine: Any, image: Image.Image) -> list[Check]:
    """Every check on a loaded engine; a failure is recorded with its reason, and the next runs."""
    out = []
    for name, check in CHECKS.items():
        start = time.perf_counter()
        try:
            out.append(Check(name, True, check(engine, image), time.perf_counter() - start))
        except Exception as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            detail = f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"
            out.append(Check(name, False, detail, time.perf_counter() - start))
    return out


def report(doctor_lines: list[str], checks: list[Check]) -> str:
    rows = [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.seconds:.1f} s | {c.detail.replace('|', '/')} |"
            for c in checks]  # fmt: skip
    return "\n".join(["# edgevlm board check", "", "```", *doctor_lines, "```", "",
                      "| check | result | time | detail |", "|---|---|---|---|", *rows, ""])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from ..bundle import BundleError
    from ..doctor import examine
    from .board import BoardError, load_board

    p = argparse.ArgumentParser(prog="board-check", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="a bundle with its export-rk3588 artifacts")
    p.add_argument("--image", type=Path, help="a picture (default: a synthetic one)")
    p.add_argument("--out", type=Path, default=Path("board-report.md"))
    args = p.parse_args(argv)
    image = Image.open(args.image).convert("RGB") if args.image else _picture()
    start = time.perf_counter()
    try:
        engine = load_board(args.bundle)
        times = engine.load_times
        loaded = f"LLM {times['llm']:.1f} s, vision {times['vision']:.1f} s"
        checks = [Check("load", True, loaded, time.perf_counter() - start)]
        checks += run_checks(engine, image)
        engine.close()
    except (BoardError, BundleError) as e:
        checks = [Check("load", False, str(e), time.perf_counter() - start)]
    text = report(examine(args.bundle).lines(), checks)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out}: paste it into your issue", file=sys.stderr)
    return 0 if all(c.ok for c in checks) else 1


def _picture() -> Image.Image:
    import tempfile

    from ..testing.demo_image import draw  # a drawn scene with shapes and colours

    with tempfile.TemporaryDirectory() as tmp:
        return Image.open(draw(Path(tmp) / "picture.png")).convert("RGB")


if __name__ == "__main__":
    raise SystemExit(main())
