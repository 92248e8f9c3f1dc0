"""Fetch a remote image safely: one deadline for the whole fetch, and only public addresses.

The host name is resolved once, every address it gives is checked, and the connection goes to the
checked address (so a second, different DNS answer cannot slip in). Redirects are followed by hand,
each checked the same way. Loopback, private, link-local, unspecified, multicast and reserved
addresses are refused before any connection, however they are spelled (`2130706433`, `0x7f.1`,
`[::ffff:127.0.0.1]` all resolve to 127.0.0.1), unless the operator allows private hosts.
Errors say only that the image could not be fetched, so a client cannot map which ports are open.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

MAX_REDIRECTS = 3
CHUNK = 65536


class FetchError(ValueError):
    """The image could not be fetched (the message is safe to show to the client)."""


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout: float  # seconds for the whole fetch, redirects included
    allow_private: bool = False


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (replaced in tests by a stub resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _address(host: str, port: int, policy: FetchPolicy) -> str:
    """The one address to connect to; refused before any connection unless it is public."""
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        raise FetchError("its host cannot be resolved") from None
    if not addresses:
        raise FetchError("its host cannot be resolved")
    if not policy.allow_private and not all(_public(a) for a in addresses):
        raise FetchError("its host is a private, loopback or link-local address (refused; the operator can allow "
                         "such hosts with --allow-private-image-hosts)")  # fmt: skip
    return addresses[0]


class _Connection(http.client.HTTPConnection):
    """HTTP(S) to a fixed address, with the URL's host name for the Host header and TLS."""

    def __init__(self, host: str, port: int, address: str, tls: bool, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address, self._tls = address, tls
        self.raw: socket.socket | None = None  # kept: http.client drops `sock` once a response owns it

    def connect(self) -> None:
        self.raw = sock = socket.create_connection((self._address, self.port), self.timeout)
        if self._tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock

    def shut(self) -> None:
        """Cut the connection from another thread: a read blocked on it returns at once."""
        if self.raw is not None:
            with contextlib.suppress(OSError):
                self.raw.shutdown(socket.SHUT_RDWR)


def _split(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError("it is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("only http and https URLs with a host can be fetched")
    if any(c in url for c in "\r\n\0 "):
        raise FetchError("it is not a valid URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("it took too long")
    return left


def _get(url: str, policy: FetchPolicy, deadline: float) -> tuple[int, str | None, bytes]:
    """One GET: status, Location header, body (read within the deadline and the size limit)."""
    scheme, host, port, path = _split(url)
    address = _address(host, port, policy)
    conn = _Connection(host, port, address, scheme == "https", timeout=_remaining(deadline))
    # Socket timeouts bound each read, not the whole: a server that drips its headers or body a byte at a
    # time would hold the worker for ever. At the deadline the socket is shut, whatever is under way.
    watchdog = threading.Timer(_remaining(deadline), conn.shut)
    watchdog.start()
    try:
        conn.request("GET", path, headers={"User-Agent": "edgevlm", "Accept": "image/*"})
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            return response.status, response.getheader("Location"), b""
        data = bytearray()
        while chunk := response.read1(CHUNK):
            data += chunk
            if len(data) > policy.max_bytes:
                raise FetchError(f"it is larger than {policy.max_bytes / 2**20:g} MB")
        _remaining(deadline)  # the watchdog may have cut the body short
        return response.status, None, bytes(data)
    finally:
        watchdog.cancel()
        conn.close()



def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body at `url`, following up to MAX_REDIRECTS redirects, all within `policy.timeout` seconds."""
    deadline = time.monotonic() + policy.timeout
    for _ in range(MAX_REDIRECTS + 1):
        try:
            status, location, body = _get(url, policy, deadline)
        except FetchError:
            raise
        except (OSError, http.client.HTTPException, ValueError):
            # Connection refused, reset, timed out, TLS or protocol errors: one message for all of them,
            # so the answers cannot be used to scan which hosts and ports exist.
            raise FetchError("the server did not answer with an image") from None
        if location is None:
            if status != 200:
                raise FetchError("the server did not answer with an image")
            return body
        url = urllib.parse.urljoin(url, location)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")
