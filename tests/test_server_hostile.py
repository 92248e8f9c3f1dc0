"""The server under hostile input: every bad request a 4xx in OpenAI's error JSON, no stall, the queue
bound holding for streams, no cross-client leaks through the cache, and no browser pages."""

import json
import threading
import time

import httpx
import pytest

from helpers import KEY, Server

pytest.importorskip("uvicorn", reason="the [server] extra is not installed")

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_bundle):
    s = Server(tiny_bundle, "--max-queue", "2", "--max-body-mb", "24", "--max-message-chars", "20000",
               "--max-request-chars", "30000", "--allow-local-images", str(tiny_bundle))  # fmt: skip
    yield s
    s.stop()


@pytest.fixture(scope="module")
def open_server(tiny_bundle):
    """Without an API key: the browser checks apply."""
    s = Server(tiny_bundle, key=None)
    yield s
    s.stop()


def assert_openai_error(r, status, words=""):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    assert words.lower() in err["message"].lower(), err["message"]
    return err


DEEP = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_BODIES = {
    "negative max_tokens": {"messages": MSG, "max_tokens": -5},
    "zero max_tokens": {"messages": MSG, "max_tokens": 0},
    "huge max_tokens": {"messages": MSG, "max_tokens": 10**30},
    "fractional max_tokens": {"messages": MSG, "max_tokens": 2.5},
    "negative temperature": {"messages": MSG, "temperature": -1},
    "huge temperature": {"messages": MSG, "temperature": 1e300},
    "top_p zero": {"messages": MSG, "top_p": 0},
    "top_p above one": {"messages": MSG, "top_p": 1.5},
    "negative seed": {"messages": MSG, "seed": -1},
    "huge seed": {"messages": MSG, "seed": 2**70},
    "seed as string": {"messages": MSG, "seed": "7"},
    "penalty out of bounds": {"messages": MSG, "frequency_penalty": 3},
    "n two": {"messages": MSG, "n": 2},
    "n negative": {"messages": MSG, "n": -1},
    "stream not bool": {"messages": MSG, "stream": "yes"},
    "stream_options a string": {"messages": MSG, "stream": True, "stream_options": "usage"},
    "include_usage not bool": {"messages": MSG, "stream": True, "stream_options": {"include_usage": "yes"}},
    "stream_options without stream": {"messages": MSG, "stream_options": {"include_usage": True}},
    "stop a number": {"messages": MSG, "stop": 5},
    "too many stops": {"messages": MSG, "stop": ["a", "b", "c", "d", "e"]},
    "no user message": {"messages": [{"role": "system", "content": "You are terse."}]},
    "only an assistant": {"messages": [{"role": "assistant", "content": "hello"}]},
    "lone surrogate": {"messages": [{"role": "user", "content": "bad \ud800 text"}]},
    "lone surrogate in system": {"messages": [{"role": "system", "content": "\udfff"}, *MSG]},
    "lone surrogate in a part": {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]},
    "content a number": {"messages": [{"role": "user", "content": 5}]},
    "role missing": {"messages": [{"content": "hi"}]},
    "message not an object": {"messages": ["hi"]},
    "messages an object": {"messages": {"role": "user"}},
    "part unknown": {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
    "image_url without url": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    "body an array": [MSG],
    "body a string": "hello",
}


def image(url):
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


BAD_URLS = {
    "malformed http": "http://[::1",
    "malformed port": "http://example.com:99999999/a.png",
    "NUL in a file path": "file:///tmp/a\x00b.png",
    "escaped NUL in a file path": "file:///tmp/a%00b.png",
    "file with a host": "file://otherhost/etc/passwd",
    "unknown scheme": "gopher://x/1",
    "no scheme": "just text",
    "javascript": "javascript:alert(1)",
    "data not base64": "data:image/png,abc",
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_requests_are_4xx_openai_json(server, case):
    assert_openai_error(server.post(BAD_BODIES[case]), 400)


@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_bad_image_urls_are_4xx_openai_json(server, case):
    assert_openai_error(server.post(image(BAD_URLS[case])), 400)


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN"),
     (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "Infinity"),
     (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -Infinity}', "Infinity"),
     (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "out of range"),
     (DEEP, "nested too deeply"), (b"", "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),
     (b'{"messages": [{"role": "user", "content": "hi"}]', "not valid JSON")],
)  # fmt: skip
def test_non_standard_json_is_400(server, raw, words):
    assert_openai_error(server.post(raw=raw), 400, words)


def test_unknown_routes_and_methods_are_json(server):
    assert_openai_error(httpx.get(server.url + "/v2/nothing"), 404)
    assert_openai_error(httpx.get(server.url + "/v1/chat/completions"), 405)
    assert_openai_error(httpx.delete(server.url + "/v1/models"), 405)
    assert_openai_error(server.post(MSG, path="/health"), 405)


def test_huge_text_is_refused_at_once_and_nothing_stalls(server):
    """18 MB of text (under the body limit) is refused before tokenising: /health answers throughout."""
    before = server.rss_mb()
    body = json.dumps({"messages": [{"role": "user", "content": "lorem ipsum " * 1_500_000}]}).encode()
    health: list[float] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            start = time.perf_counter()
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200
            health.append(time.perf_counter() - start)
            time.sleep(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        start = time.perf_counter()
        r = server.post(raw=body)
        took = time.perf_counter() - start
    finally:
        done.set()
        watcher.join()
    assert_openai_error(r, 400, "at most 20000")
    assert took < 5 and max(health) < 2, (took, max(health))
    many = {"messages": [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "ok"}] * 4
            + MSG}  # fmt: skip
    assert_openai_error(server.post(many), 400, "at most 30000")
    assert server.rss_mb() < before + 150, (before, server.rss_mb())


def test_default_max_tokens_fits_the_room_left(small_bundle):
    import edgevlm
    from edgevlm.prompt import Turn

    encode = edgevlm.load(small_bundle).prompt.encode
    n = 100
    while len(encode([Turn(" ".join(["word"] * n))])) < 1024 - 300:  # 512 default answer tokens cannot fit
        n += 50
    text = " ".join(["word"] * n)
    s = Server(small_bundle, key=None)  # a context of 1024 tokens
    try:
        r = s.post({"messages": [{"role": "user", "content": text}], "temperature": 0}, key=None)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] > 1024 - 512
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= 1024
    finally:
        s.stop()


def test_streaming_requests_respect_the_queue_bound(server):
    """16 concurrent streams with --max-queue 2: one generates, two wait, thirteen get 429 at once."""
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 3000, "temperature": 1.0,
            "stream": True}  # fmt: skip
    statuses, took = [], []

    def stream():
        start = time.perf_counter()
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
            statuses.append(r.status_code)
            took.append((r.status_code, time.perf_counter() - start))
            if r.status_code == 200:
                assert r.read().decode().rstrip().endswith("data: [DONE]")

    threads = [threading.Thread(target=stream) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert sorted(statuses) == [200] * 3 + [429] * 13, statuses
    assert max(t for code, t in took if code == 429) < 5


def test_a_queued_client_that_leaves_frees_its_place(server):
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 3000, "temperature": 1.0}
    headers = {"Authorization": f"Bearer {KEY}"}

    def hold(results):
        try:
            results.append(httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers,
                                      timeout=120).status_code)  # fmt: skip
        except httpx.HTTPError as e:
            results.append(type(e).__name__)

    kept: list = []
    runner = threading.Thread(target=hold, args=(kept,))
    runner.start()
    time.sleep(0.5)
    waiting = [httpx.Client(timeout=0.8) for _ in range(2)]  # they give up after 0.8 s in the queue
    for c in waiting:
        with pytest.raises(httpx.ReadTimeout):
            c.post(server.url + "/v1/chat/completions", json=body, headers=headers)
        c.close()
    deadline = time.time() + 3
    while httpx.get(server.url + "/health").json()["waiting"] and time.time() < deadline:
        time.sleep(0.05)
    health = httpx.get(server.url + "/health").json()
    expected = {"status": "ok", "model": "tiny", "busy": True, "waiting": 0}
    assert health == expected, (health, kept)  # kept: how the held request ended, if it did
    small = {"messages": MSG, "max_tokens": 2}
    results = []
    extra = [threading.Thread(target=lambda: results.append(server.post(small).status_code)) for _ in range(2)]
    for t in extra:
        t.start()
    for t in [*extra, runner]:
        t.join(timeout=120)
    assert results == [200, 200] and kept == [200]


def test_cached_tokens_reveal_nothing_of_another_clients_prompt(server):
    def cached(text):
        r = server.post({"messages": [{"role": "user", "content": text}], "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    baseline = cached("Something entirely different.")
    cached("My bank PIN is 4711 and my password is swordfish. Say hi.")  # another client's secret
    for guess in ("My bank PIN is 4711 and my password is sword", "My bank PIN is 4711", "My bank PIN is 9"):
        assert cached(guess) == baseline  # the template's opening only, whatever the guess matched


def test_browser_requests_are_refused_without_a_key(open_server):
    s = open_server
    assert s.post({"messages": MSG, "max_tokens": 2}, key=None).status_code == 200
    same = {"Origin": f"http://127.0.0.1:{s.port}"}
    assert s.post({"messages": MSG, "max_tokens": 2}, key=None, headers=same).status_code == 200
    for headers, status, words in (
        ({"Origin": "http://evil.example"}, 403, "cross-origin"),
        ({"Origin": "null"}, 403, "cross-origin"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Host": f"rebound.example:{s.port}", "Origin": f"http://rebound.example:{s.port}"}, 403, "Host"),
    ):
        assert_openai_error(s.post({"messages": MSG, "max_tokens": 2}, key=None, headers=headers), status, words)
    assert_openai_error(httpx.get(s.url + "/v1/models", headers={"Host": "rebound.example"}), 403, "Host")


def test_a_stream_that_fails_after_its_200_ends_with_an_error_event_and_done(small_bundle):
    from starlette.testclient import TestClient

    import edgevlm
    from edgevlm.runtime.generate import GenerationStats, StreamChunk
    from edgevlm.server.app import create_app
    from edgevlm.server.settings import ServerSettings

    model = edgevlm.load(small_bundle)

    def failing_stream(conversation, params, stats, shared=False):
        yield StreamChunk("Hel", 1, GenerationStats())
        raise RuntimeError("the accelerator fell over")

    model.stream = failing_stream
    client = TestClient(create_app(ServerSettings(model=small_bundle), model=model), base_url="http://127.0.0.1")
    with client.stream("POST", "/v1/chat/completions", json={"messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[1]["choices"][0]["delta"]["content"] == "Hel"
    err = events[-1]["error"]
    assert set(err) == {"message", "type", "param", "code"} and "fell over" in err["message"]
    assert err["type"] == "server_error"
    r = client.post("/v1/chat/completions", json={"messages": MSG})
    assert_openai_error(r, 500, "fell over")


def test_remote_images_from_loopback_are_refused_unless_allowed(tiny_bundle):
    s = Server(tiny_bundle, "--allow-remote-images", "--remote-image-timeout", "2")
    try:  # only loopback URLs here: a test never sends a packet beyond this machine
        for url in ("http://127.0.0.1:9/cat.png", "http://2130706433:9/cat.png", "http://[::1]:9/cat.png",
                    "http://localhost:9/cat.png"):  # fmt: skip
            assert_openai_error(s.post(image(url)), 400, "private, loopback or link-local")
    finally:
        s.stop()
    s = Server(tiny_bundle, "--allow-remote-images", "--allow-private-image-hosts", "--remote-image-timeout", "2")
    try:
        err = assert_openai_error(s.post(image("http://127.0.0.1:9/cat.png")), 400, "cannot fetch image")
        assert "private" not in err["message"]  # allowed, so it was tried: port 9 does not answer
    finally:
        s.stop()
