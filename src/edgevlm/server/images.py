"""Images named in requests: data: URLs always; http(s) and file:// only when the operator allows."""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import urllib.request
from pathlib import Path

from .settings import ServerSettings


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def fetch_image(url: str, s: ServerSettings) -> bytes:
    """The bytes an image_url names, within the server's limits."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "data":
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError("image data: URLs must be base64 (data:image/...;base64,...)", param="image_url")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("image data: URL is not valid base64", param="image_url") from None
    if scheme in ("http", "https"):
        if not s.allow_remote_images:
            raise RequestError("remote image URLs are disabled on this server (send a data: URL, or start it "
                               "with --allow-remote-images)", param="image_url")  # fmt: skip
        return _download(url, s)
    if scheme == "file":
        if s.allow_local_images is None:
            raise RequestError("file:// image URLs are disabled on this server (--allow-local-images DIR)",
                               param="image_url")  # fmt: skip
        root = s.allow_local_images.resolve()
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise RequestError(f"file:// images must be files inside {root}", param="image_url")
        return path.read_bytes()
    raise RequestError(f"unsupported image URL scheme '{scheme}'", param="image_url")


def _download(url: str, s: ServerSettings) -> bytes:
    limit = int(s.remote_image_max_mb * 2**20)
    try:
        with urllib.request.urlopen(url, timeout=s.remote_image_timeout) as r:
            data = r.read(limit + 1)
    except OSError as e:
        raise RequestError(f"cannot fetch image {url}: {e}", param="image_url") from None
    if len(data) > limit:
        raise RequestError(f"image at {url} is larger than {s.remote_image_max_mb:g} MB", param="image_url")
    return data
