"""An image seen before costs no vision time: across sessions of the Python API and requests of the
server, within a bounded memory."""

import base64
import io

import numpy as np
import pytest

import edgevlm
from edgevlm.feature_cache import FeatureCache
from helpers import picture


def test_least_recently_used_features_go_first_within_the_bound():
    cache = FeatureCache(limit_mb=3 / 1024)  # 3 KiB: three arrays of 1 KiB
    arrays = {k: np.full(256, i, dtype=np.float32) for i, k in enumerate("abcd")}
    for k in "abc":
        cache.put(k, arrays[k])
    assert cache.get("a") is arrays["a"]  # a is now the most recent
    cache.put("d", arrays["d"])
    assert cache.get("b") is None and [cache.get(k) is not None for k in "acd"] == [True] * 3
    assert cache.bytes == 3 * 1024 and not arrays["a"].flags.writeable
    cache.put("big", np.zeros(1024, dtype=np.float32))  # larger than the whole bound: not kept
    assert cache.get("big") is None and len(cache) == 3
    cache.resize(1 / 1024)
    assert len(cache) == 1 and cache.get("d") is not None


@pytest.fixture()
def counted(small_bundle):
    """A fresh CPU engine whose vision runs are counted."""
    model = edgevlm.load(small_bundle)
    runs = []
    real = model.vision.run
    model.vision.run = lambda feeds: runs.append(1) or real(feeds)
    return model, runs


def test_the_api_encodes_an_image_once_across_sessions(counted):
    model, runs = counted
    img = picture(300, 200, 5)
    first = model.session(max_tiles=1)
    first.chat("What is it?", [img], max_tokens=4)
    tiles = len(runs)
    assert tiles >= 1 and first.last_stats.vision_ms > 0
    second = model.session(max_tiles=1)  # another conversation, the same picture
    second.chat("Describe it.", [picture(300, 200, 5)], max_tokens=4)
    assert len(runs) == tiles and second.last_stats.vision_ms == 0
    model.session(max_tiles=1).chat("And this?", [picture(300, 200, 6)], max_tokens=4)  # another picture: encoded
    assert len(runs) == 2 * tiles
    model.image_cache.resize(0)
    model.session(max_tiles=1).chat("Again?", [img], max_tokens=4)
    assert len(runs) == 3 * tiles  # nothing kept: encoded again


def test_the_server_encodes_an_image_once_across_requests(counted, small_bundle):
    from starlette.testclient import TestClient

    from edgevlm.server.app import create_app
    from edgevlm.server.settings import ServerSettings

    model, runs = counted
    client = TestClient(create_app(ServerSettings(model=small_bundle, max_tiles=1), model=model), base_url="http://127.0.0.1")
    buf = io.BytesIO()
    picture(320, 240, 9).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    for question in ("What is it?", "What colour is it?"):  # two separate requests
        content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                      "max_tokens": 4})  # fmt: skip
        assert r.status_code == 200, r.text
        if question == "What is it?":
            tiles = len(runs)
    assert tiles >= 1 and len(runs) == tiles
