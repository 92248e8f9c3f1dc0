"""Images and videos named in requests: data: URLs always; http(s) and file:// only when the operator allows."""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from pathlib import Path

from .fetch import FetchError, FetchPolicy, fetch
from .settings import ServerSettings


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def fetch_media(url: str, s: ServerSettings, kind: str = "image") -> bytes:
    """The bytes an image_url (or, with kind "video", a video_url) names, within the server's limits: the
    same schemes, confinement and size limits for both."""
    scheme, param = (url.partition(":")[0].lower() if ":" in url else ""), f"{kind}_url"
    if scheme == "data":
        return _data_url(url, kind)
    if scheme in ("http", "https"):
        if not s.allow_remote_images:
            raise RequestError(f"remote {kind} URLs are disabled on this server (send a data: URL, or start it "
                               "with --allow-remote-images)", param=param)  # fmt: skip
        return _download(url, s, kind)
    if scheme == "file":
        if s.allow_local_images is None:
            raise RequestError(f"file:// {kind} URLs are disabled on this server (--allow-local-images DIR)",
                               param=param)  # fmt: skip
        return _local_file(url, s.allow_local_images, kind)
    raise RequestError(f"unsupported {kind} URL scheme {scheme[:20]!r} (use data:, or http(s): or file: where the "
                       "server allows them)", param=param)  # fmt: skip


def _data_url(url: str, kind: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise RequestError(f"{kind} data: URLs must be base64 (data:{kind}/...;base64,...)", param=f"{kind}_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{kind} data: URL is not valid base64", param=f"{kind}_url") from None


def _local_file(url: str, folder: Path, kind: str) -> bytes:
    root = folder.resolve()
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError("a file:// URL with a host")
        path = Path(urllib.parse.unquote(parts.path, errors="strict")).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ValueError("outside the folder")
        return path.read_bytes()
    except (ValueError, OSError):  # malformed, NUL bytes, bad escapes, unreadable: all the same answer
        raise RequestError(f"file:// {kind}s must be readable files inside {root}", param=f"{kind}_url") from None


def _download(url: str, s: ServerSettings, kind: str) -> bytes:
    policy = FetchPolicy(int(s.remote_image_max_mb * 2**20), s.remote_image_timeout, s.allow_private_image_hosts)
    try:
        return fetch(url, policy)
    except FetchError as e:
        raise RequestError(f"cannot fetch {kind} {_shown(url)}: {e}", param=f"{kind}_url") from None


def _shown(url: str) -> str:
    """The URL as quoted back in an error: bounded, and without credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password or parts.username:
            url = url.replace(parts.netloc, parts.netloc.rpartition("@")[2])
    except ValueError:
        pass
    return url if len(url) <= 200 else url[:200] + "..."
