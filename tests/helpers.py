"""Helpers shared by the tests (imported as `helpers`; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

KEY = "sekret"


def family_encoder(tokenizer, family="internvl3", preset="tiny"):
    """A family's prompt encoder over a tokenizer, with the ids the tokenizer gives its control tokens."""
    from edgevlm import models
    from edgevlm.prompt import PromptEncoder
    from edgevlm.tokenizer import control_ids

    module = models.family(family)
    fmt = module.prompt_format(module.PRESETS[preset])
    return PromptEncoder(tokenizer, fmt, control_ids(tokenizer, fmt.all_controls))


def run_edgevlm(*args: str, stdin: str | bytes | None = None, env: dict | None = None):
    """`python -m edgevlm ARGS` in a child process; the CompletedProcess (text mode unless stdin is bytes)."""
    text = not isinstance(stdin, bytes)
    return subprocess.run([sys.executable, "-m", "edgevlm", *map(str, args)], input=stdin, capture_output=True,
                          text=text, env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip


def assert_one_line_error(r, *words: str, code: int = 2) -> None:
    """A user mistake: exit `code`, nothing on stdout, one line on stderr naming the problem."""
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
    assert r.returncode == code, (r.returncode, err)
    assert not r.stdout and "Traceback" not in err and err.strip().count("\n") == 0, err
    for w in words:
        assert w in err, (w, err)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture(w, h, seed=0):
    """A w x h RGB image of uniform noise (the same for the same seed)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def data_url(w, h, seed=0, noise=True):
    buf = io.BytesIO()
    (picture(w, h, seed) if noise else Image.new("RGB", (w, h))).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Server:
    def __init__(self, bundle, *args, key=KEY):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "edgevlm", "serve", "-m", str(bundle), "--port", str(self.port), *args]
        env = {**os.environ, "EDGEVLM_API_KEY": key} if key else dict(os.environ)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    def client(self, key=KEY):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def post(self, body=None, *, raw=None, key=KEY, headers=None, path="/v1/chat/completions", timeout=60):
        """A raw POST: `body` as JSON, or `raw` bytes as they are (with a JSON content type unless told)."""
        h = {"Content-Type": "application/json"}
        if key:
            h["Authorization"] = f"Bearer {key}"
        h.update(headers or {})
        data = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(self.url + path, content=data, headers=h, timeout=timeout)


def cosine(a, b):
    """Cosine similarity along the last axis (a scalar for vectors)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def build_stub(folder: Path, version: str = "1.3.0") -> Path:
    """The stand-in compiled as `folder/librkllmrt.so`, calling itself runtime `version`."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the RKLLM stand-in library")
    out = folder / "librkllmrt.so"
    source = Path(__file__).parent / "native" / "rkllm_stub.c"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", f'-DSTUB_VERSION="{version}"', "-o", str(out), str(source)],
                   check=True)  # fmt: skip
    return out
