"""The OpenAI-compatible server, driven with the official openai client on a loopback port."""

import base64
import json
import threading
import time

import httpx
import pytest
from PIL import Image

openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")
pytest.importorskip("uvicorn", reason="the [server] extra is not installed")

import edgevlm  # noqa: E402
from helpers import KEY, Server, data_url  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    files = tmp_path_factory.mktemp("files")
    s = Server(bundle, "--max-queue", "1", "--max-images", "2", "--max-image-pixels", "1000000",
               "--max-body-mb", "1", "--allow-local-images", str(files))  # fmt: skip
    s.files = files
    yield s
    s.stop()


def image_msg(url):
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


def ask(client, content, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_text_answer_and_stream_join(server):
    c = server.client()
    whole = ask(c, "Describe a cake.", max_tokens=12, temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens > 20
    pieces = [ch.choices[0].delta.content or "" for ch in
              ask(c, "Describe a cake.", max_tokens=12, temperature=0, stream=True) if ch.choices]  # fmt: skip
    assert "".join(pieces) == whole.choices[0].message.content


def test_image_answer_equals_the_python_api(server, bundle):
    url = data_url(300, 200, 3)
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    got = ask(server.client(), parts, max_completion_tokens=10, temperature=0).choices[0].message.content
    raw = base64.b64decode(url.split(",", 1)[1])
    assert got == edgevlm.load(bundle).chat("What is this?", [raw], max_tokens=10)


def test_local_images_confined_to_their_folder(server, bundle, tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(server.files / "ok.png")
    inside = {"type": "image_url", "image_url": {"url": f"file://{server.files / 'ok.png'}"}}
    got = ask(server.client(), [inside], max_tokens=4, temperature=0).choices[0].message.content
    assert got == edgevlm.load(bundle).chat("", [server.files / "ok.png"], max_tokens=4)
    Image.new("RGB", (64, 64)).save(tmp_path / "outside.png")
    for url in (f"file://{tmp_path / 'outside.png'}", f"file://{server.files}/../{tmp_path.name}/outside.png"):
        with pytest.raises(openai.BadRequestError, match="inside"):
            ask(server.client(), [{"type": "image_url", "image_url": {"url": url}}], max_tokens=2)


def test_multi_turn_reuses_the_cache(server):
    c = server.client()
    first = [{"role": "user", "content": "Tell me about bread."}]
    a = c.chat.completions.create(model="tiny", messages=first, max_tokens=8, temperature=0)
    history = [*first, {"role": "assistant", "content": a.choices[0].message.content},
               {"role": "user", "content": "And butter?"}]  # fmt: skip
    b = c.chat.completions.create(model="tiny", messages=history, max_tokens=8, temperature=0)
    assert b.usage.prompt_tokens_details.cached_tokens >= a.usage.prompt_tokens - 1


def post(server, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(server.url + "/v1/chat/completions", content=data, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [({"messages": []}, 400, "non-empty"),
     ({"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
     ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "beyond"),
     ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4090}, 400, "beyond the context"),
     ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
     (image_msg("https://e.com/a.png"), 400, "remote image URLs are disabled"),
     ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(8, 8)}}] * 3}]},
      400, "at most 2"),
     (image_msg(data_url(1200, 1000, noise=False)), 400, "more than the limit"),
     (image_msg("data:image/png;base64,AAAA"), 400, "bad image")],
)  # fmt: skip
def test_bad_requests(server, body, status, message):
    r = post(server, body)
    assert r.status_code == status and message in r.json()["error"]["message"]


def test_body_json_key_limits(server):
    r = post(server, None, raw=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = post(server, {"messages": [{"role": "user", "content": "x" * (2 * 2**20)}]})
    assert r.status_code == 413
    assert post(server, {"messages": [{"role": "user", "content": "x"}]}, key=None).status_code == 401
    assert post(server, {"messages": [{"role": "user", "content": "x"}]}, key="wrong").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        ask(server.client(key="wrong"), "hi")


def test_queue_full_is_429(server):
    long = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 3500, "temperature": 0, "stream": True}
    statuses = []

    def hold():
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=long,
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:  # fmt: skip
            statuses.append(r.status_code)
            for _ in r.iter_lines():
                pass

    threads = [threading.Thread(target=hold) for _ in range(2)]  # one generating, one waiting
    for t in threads:
        t.start()
        time.sleep(0.5)
    r = post(server, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 429 and "busy" in r.json()["error"]["message"]
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200, 200]


def test_load_with_disconnects(bundle):
    server = Server(bundle, "--max-queue", "16", key=None)
    try:
        c = server.client(key="none")
        img = data_url(500, 400, 7)
        ask(c, [{"type": "text", "text": "first"}, {"type": "image_url", "image_url": {"url": img}}], max_tokens=16)
        baseline = server.rss_mb()
        errors, done = [], []

        def client(k):
            cl = server.client(key="none")
            for i in range(5):
                content = [{"type": "text", "text": f"q{k}{i}"}] + ([{"type": "image_url", "image_url": {"url": img}}]
                                                                  if (k + i) % 3 == 0 else [])  # fmt: skip
                try:
                    if (k + i) % 2:
                        stream = ask(cl, content, max_tokens=24, stream=True)
                        for n, _ in enumerate(stream):
                            if (k + i) % 4 == 1 and n == 2:
                                stream.close()  # disconnect early
                                break
                        done.append("stream")
                    else:
                        r = ask(cl, content, max_tokens=16)
                        assert isinstance(r.choices[0].message.content, str) and r.usage.total_tokens > 0
                        done.append("plain")
                except Exception as e:  # collected, asserted below
                    errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors and len(done) == 40
        assert httpx.get(server.url + "/health", timeout=5).json() == {"status": "ok", "model": "tiny", "busy": False,
                                                                        "waiting": 0}  # fmt: skip
        after = server.rss_mb()
        print(f"server RSS after the first request {baseline:.0f} MB, after 40 more {after:.0f} MB")
        assert after <= baseline * 1.10
    finally:
        server.stop()
