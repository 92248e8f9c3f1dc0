"""Remote images: refused for private hosts before any connection, one deadline for the whole fetch,
redirects checked, and the same answer for a closed port as for an HTTP error.

Nothing here leaves this machine: private and link-local hosts are given by a stub resolver and must be
refused before any socket connects (an audit hook fails the test otherwise); the servers that do answer
listen on 127.0.0.1, reached with private hosts allowed or through a stub that calls them public."""

import http.server
import socket
import sys
import threading
import time

import pytest

from edgevlm.server import fetch as fetch_module
from edgevlm.server.fetch import FetchError, FetchPolicy, fetch

CONNECTS: list = []


def _audit(event, args):
    if event == "socket.connect":
        CONNECTS.append(args[1])


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records


@pytest.fixture()
def connects():
    CONNECTS.clear()
    yield CONNECTS
    CONNECTS.clear()


POLICY = FetchPolicy(max_bytes=1 << 20, timeout=3.0)
LOCAL = FetchPolicy(max_bytes=1 << 20, timeout=3.0, allow_private=True)


@pytest.mark.parametrize("address", ["169.254.169.254", "10.1.2.3", "172.16.0.9", "192.168.1.1", "127.0.0.1",
                                     "0.0.0.0", "100.64.0.1", "224.0.0.1", "::1", "fe80::1", "fc00::1",
                                     "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::"])  # fmt: skip
def test_private_addresses_are_refused_before_connecting(monkeypatch, connects, address):
    monkeypatch.setattr(fetch_module, "resolve", lambda host, port: [address])
    with pytest.raises(FetchError, match="private, loopback or link-local"):
        fetch("http://images.example/cat.png", POLICY)
    assert connects == []


def test_one_private_address_among_public_ones_is_enough_to_refuse(monkeypatch, connects):
    monkeypatch.setattr(fetch_module, "resolve", lambda host, port: ["93.184.216.34", "169.254.169.254"])
    with pytest.raises(FetchError, match="private"):
        fetch("http://images.example/cat.png", POLICY)
    assert connects == []


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://2130706433/", "http://0x7f000001/", "http://0x7f.1/",
                                 "http://017700000001/", "http://127.1/", "http://0/", "http://[::1]/",
                                 "http://[::ffff:127.0.0.1]/", "http://[0:0:0:0:0:ffff:7f00:1]/",
                                 "http://localhost/", "http://LOCALHOST./", "https://169.254.169.254/latest/meta-data",
                                 "http://user:pw@127.0.0.1:8000/"])  # fmt: skip
def test_numeric_spellings_of_local_addresses_are_refused(connects, url):
    with pytest.raises(FetchError, match="private|resolved"):  # numeric hosts resolve without any query
        fetch(url, POLICY)
    assert connects == []


class Handler(http.server.BaseHTTPRequestHandler):
    """/img: a small body; /drip-head, /drip-body: a byte every 0.3 s; /to/N: redirect to N; else 404."""

    def do_GET(self):
        if self.path == "/img":
            self._send(200, b"\x89PNG fake")
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[4:].replace("_", "/"))
            self.end_headers()
        elif self.path == "/drip-head":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Slow: " + b"a" * 100:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.3)
        elif self.path == "/drip-body":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)
        elif self.path == "/big":
            self._send(200, b"x" * (2 << 20))
        else:
            self._send(404, b"not here")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def local():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_allowed_private_host_is_fetched(local):
    assert fetch(local + "/img", LOCAL) == b"\x89PNG fake"


@pytest.mark.parametrize("path", ["/drip-head", "/drip-body"])
def test_the_timeout_covers_the_whole_fetch(local, path):
    start = time.monotonic()
    with pytest.raises(FetchError):
        fetch(local + path, LOCAL)
    assert time.monotonic() - start < LOCAL.timeout + 1.0


def test_size_limit(local):
    with pytest.raises(FetchError, match="larger than 1 MB"):
        fetch(local + "/big", LOCAL)


def test_a_closed_port_reads_the_same_as_an_http_error(local):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(FetchError) as refused:
            fetch(f"http://127.0.0.1:{closed}/img", LOCAL)
    with pytest.raises(FetchError) as missing:
        fetch(local + "/nothing", LOCAL)
    assert str(refused.value) == str(missing.value)


def test_redirects_are_checked_like_the_first_url(local, monkeypatch, connects):
    """The first hop is let through as public; its redirect to a link-local address is refused unconnected."""
    port = int(local.rsplit(":", 1)[1])
    monkeypatch.setattr(fetch_module, "resolve",
                        lambda host, p: ["127.0.0.1"] if host == "images.example" else [host])  # fmt: skip
    monkeypatch.setattr(fetch_module, "_public", lambda address: address == "127.0.0.1")
    first = f"http://images.example:{port}"
    assert fetch(first + "/to/_img", POLICY) == b"\x89PNG fake"  # a redirect to a public place is followed
    connects.clear()
    for target in ("http:__169.254.169.254_latest", "http:__10.0.0.1_x.png", "file:___etc_passwd"):
        with pytest.raises(FetchError):
            fetch(f"{first}/to/{target}", POLICY)
        assert [a[0] for a in connects] == ["127.0.0.1"], connects  # only the first hop connected
        connects.clear()
    with pytest.raises(FetchError, match="redirects"):
        fetch(first + "/to/" + "_to" * 5 + "_img", POLICY)
