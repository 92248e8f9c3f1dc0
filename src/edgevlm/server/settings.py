"""Server settings, each declared once: usable as a flag (--max-queue) and an environment
variable (EDGEVLM_MAX_QUEUE); the flag wins."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from .. import BACKENDS
from ..feature_cache import DEFAULT_IMAGE_CACHE_MB
from ..video import MAX_SAMPLED_FRAMES


@dataclass(frozen=True)
class ServerSettings:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str | None = None  # the id clients use; default: the bundle folder's name
    max_queue: int = 8  # requests that may wait while one generates; more get 429
    max_body_mb: float = 20.0
    max_images: int = 4  # per request
    max_image_pixels: int = 32_000_000
    max_tiles: int | None = None
    max_pixels: int | None = None  # images and video frames resized to at most this area (bounds their tokens)
    max_videos: int = 1  # per request
    max_video_seconds: float = 600.0  # longest clip accepted
    max_video_frames: int | None = None  # frames taken from each clip (None: the model's own sampling)
    video_fps: float | None = None  # frames per second taken (None: the model's own)
    allow_remote_images: bool = False
    allow_local_images: Path | None = None  # file:// URLs only from inside this folder
    allow_private_image_hosts: bool = False  # remote images from loopback, private or link-local addresses
    remote_image_max_mb: float = 20.0
    remote_image_timeout: float = 10.0  # for the whole fetch, redirects included
    max_message_chars: int = 100_000  # text of one message; refused before it is tokenised
    max_request_chars: int = 200_000  # text of all messages of one request
    threads: int | None = None
    backend: str = "auto"  # auto, cpu or rk3588
    image_cache_mb: float = DEFAULT_IMAGE_CACHE_MB  # features of images seen before, kept across requests

    def __post_init__(self) -> None:
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:  # NaN fails too
                raise ValueError(f"--{name.replace('_', '-')} must be between {low:g} and {high:g}, got {value}")


BOUNDS = {
    "port": (1, 65535), "max_queue": (0, 10_000), "max_body_mb": (0.001, 4096), "max_images": (0, 64),
    "max_image_pixels": (1, 2**31), "max_tiles": (1, 64), "max_pixels": (1, 2**31), "max_videos": (0, 16),
    "max_video_seconds": (0.001, 86_400), "max_video_frames": (1, MAX_SAMPLED_FRAMES), "video_fps": (0.001, 1000),
    "remote_image_max_mb": (0.001, 4096),
    "remote_image_timeout": (0.1, 3600), "max_message_chars": (1, 10**8), "max_request_chars": (1, 10**8),
    "threads": (1, 1024), "image_cache_mb": (0, 65536),
}  # fmt: skip


HELP = {
    "model": "bundle folder", "host": "address to listen on (loopback by default)", "port": "TCP port",
    "api_key": "require 'Authorization: Bearer KEY'", "model_name": "model id reported to clients",
    "max_queue": "requests allowed to wait for the model", "max_body_mb": "largest request body",
    "max_images": "images per request", "max_image_pixels": "largest image accepted, in pixels",
    "max_tiles": "tiles per image",
    "max_pixels": "resize each image and video frame to at most this area, in pixels (bounds its tokens; Qwen2-VL's "
                  "max_pixels)",
    "max_videos": "videos per request (video_url parts; needs the [video] extra)",
    "max_video_seconds": "longest video accepted, in seconds",
    "max_video_frames": "most frames taken from each video (default: the model's own sampling, as many as the "
                        "context holds)",
    "video_fps": "frames per second taken from each video (default: the model's own)",
    "allow_remote_images": "fetch http(s) image and video URLs",
    "allow_local_images": "serve file:// images and videos from this folder",
    "remote_image_max_mb": "largest remote image", "remote_image_timeout": "seconds to fetch a remote image",
    "allow_private_image_hosts": "let remote image URLs reach loopback, private and link-local addresses",
    "max_message_chars": "characters of text in one message", "max_request_chars": "characters of text per request",
    "threads": "ONNX Runtime threads", "backend": "auto, cpu (ONNX Runtime) or rk3588 (NPU)",
    "image_cache_mb": "memory for the features of images seen before (0: none); a repeated image costs no vision time",
}  # fmt: skip


CHOICES = {"backend": list(BACKENDS)}


def _kind(f: object) -> type:
    text = str(f.type)  # type: ignore[attr-defined]
    return bool if "bool" in text else Path if "Path" in text else float if "float" in text else \
        int if "int" in text else str  # fmt: skip


def _env(name: str, kind: type) -> object:
    raw = os.environ.get("EDGEVLM_" + name.upper())
    if raw is None:
        return None
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw  # a string default: argparse converts and checks it like the flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    for f in fields(ServerSettings):
        kind, flag = _kind(f), "--" + f.name.replace("_", "-")
        names = ["-m", flag] if f.name == "model" else [flag]
        env = _env(f.name, kind)
        default = env if env is not None else (None if f.name == "model" else f.default)
        helptext = f"{HELP[f.name]} (env EDGEVLM_{f.name.upper()})"
        if kind is bool:
            p.add_argument(*names, dest=f.name, action="store_true", default=default, help=helptext)
        else:
            choices = CHOICES.get(f.name)
            p.add_argument(*names, dest=f.name, type=kind, default=default, help=helptext, choices=choices)


def from_namespace(args: argparse.Namespace) -> ServerSettings:
    values = {f.name: getattr(args, f.name) for f in fields(ServerSettings)}
    if values["model"] is None:
        raise ValueError("a bundle is required: -m BUNDLE or EDGEVLM_MODEL")
    return ServerSettings(**values)
