"""Keep web pages out of a server that has no API key.

A page in a browser may send requests to any address, localhost included, and a "simple" request
(`text/plain` body, no custom header) needs no CORS preflight. So without `--api-key`:
- a request from another origin (its `Origin` or `Sec-Fetch-Site` says so) is refused;
- a body must be declared `application/json`, which a page can send cross-origin only after a
  preflight that this server never approves;
- on a loopback listener the Host header must name a loopback host, which defeats DNS rebinding (a
  page whose own name was re-pointed at 127.0.0.1 still sends its own name as Host).
With a key, a page cannot send the Authorization header cross-origin, so the key is the guard.
"""

from __future__ import annotations

import urllib.parse

from starlette.requests import Request

from .settings import ServerSettings

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _host_name(host_header: str) -> str:
    try:
        return (urllib.parse.urlsplit(f"//{host_header}").hostname or "").lower()
    except ValueError:
        return ""


def check_browser_origin(request: Request, settings: ServerSettings) -> tuple[int, str] | None:
    """(status, message) when the request must be refused, else None."""
    if settings.api_key is not None:
        return None
    host = request.headers.get("host", "")
    if settings.host in LOOPBACK_NAMES and _host_name(host) not in LOOPBACK_NAMES:
        return 403, f"Host {host[:100]!r} is not this loopback server (browser requests from web pages are refused)"
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
        return 403, (f"cross-origin requests (Origin {origin[:100]!r}) are refused by a server without --api-key; "
                     "start it with --api-key to use it from a web page")  # fmt: skip
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return 403, "cross-site browser requests are refused by a server without --api-key"
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and kind != "application/json":
        return 415, f"the request body must be sent as Content-Type: application/json (got {kind[:60] or 'none'!r})"
    return None
