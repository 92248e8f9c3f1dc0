import numpy as np
import pytest

from edgevlm.runtime.generate import GenerationStats, StreamDecoder, generate_step, stream_generate
from edgevlm.runtime.sampling import Sampler, SamplingParams
from edgevlm.testing.vocab import fixture_tokenizer


class ScriptedLM:
    """A language model whose next-token logits are fixed by a script: tests the loop, not a model."""

    def __init__(self, script, vocab=50, max_context=100):
        self.script, self.vocab, self.max_context, self.position = list(script), vocab, max_context, 0
        self.fed = []

    def _logits(self):
        out = np.zeros(self.vocab, dtype=np.float32)
        out[self.script[min(len(self.fed), len(self.script) - 1)]] = 10
        return out

    def prefill(self, embeds, position=None, rope=None):
        self.position = (self.position if position is None else position) + len(embeds)
        return self._logits()

    def decode(self, token):
        self.fed.append(token)
        self.position += 1
        return self._logits()


def test_stops_on_stop_id_and_does_not_feed_it():
    lm = ScriptedLM([3, 4, 9, 5])
    stats = GenerationStats()
    out = list(generate_step(lm, np.zeros((6, 2)), SamplingParams(stop_ids=(9,)), stats=stats))
    assert out == [3, 4, 9] and lm.fed == [3, 4] and lm.position == 8
    assert stats.finish_reason == "stop" and stats.prompt_tokens == 6 and stats.generated_tokens == 3


def test_max_tokens_and_context_limits():
    stats = GenerationStats()
    assert list(generate_step(ScriptedLM([1]), np.zeros((2, 2)), SamplingParams(max_tokens=4), stats=stats)) == [1] * 4
    assert stats.finish_reason == "length"
    stats = GenerationStats()
    lm = ScriptedLM([1], max_context=5)
    assert len(list(generate_step(lm, np.zeros((3, 2)), SamplingParams(), stats=stats))) == 3
    assert stats.finish_reason == "context" and lm.position == 5


def test_sampler_greedy_topk_seed_and_distribution():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    assert Sampler(SamplingParams())(logits) == 3
    assert {Sampler(SamplingParams(temperature=1.0, top_k=1, seed=s))(logits) for s in range(20)} == {3}
    a = [Sampler(SamplingParams(temperature=0.8, seed=7))(logits) for _ in range(5)]
    s = Sampler(SamplingParams(temperature=1.0, seed=1))
    counts = np.bincount([s(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.3, 0.4], atol=0.015)
    assert len(set(a)) == 1  # same seed, same first draw
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=2))
    assert {s(logits) for _ in range(200)} == {2, 3}  # 0.4 + 0.3 is the smallest set reaching 0.5


def test_repetition_penalty_follows_hf_rule():
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams(repetition_penalty=1.2))(logits, seen=[0]) == 1  # 2.0/1.2 < 1.9
    assert Sampler(SamplingParams(repetition_penalty=1.0))(logits, seen=[0]) == 0


@pytest.mark.parametrize(("field", "value"), [("temperature", -1), ("top_p", 0), ("top_k", -1), ("max_tokens", 0)])
def test_bad_sampling_params(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_stream_decoder_never_splits_a_character():
    tok = fixture_tokenizer()[0]
    text = "Mix 🦙 and 你好, then 🍰!"
    ids = tok.encode(text).ids
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert any(p == "" for p in pieces)  # the emoji's bytes did arrive over several tokens


def test_stream_generate_text_and_stats():
    tok = fixture_tokenizer()[0]
    ids = tok.encode("Hello world").ids
    lm = ScriptedLM([*ids, 151645], vocab=151674)
    chunks = list(stream_generate(lm, tok, np.zeros((4, 2)), SamplingParams(stop_ids=(151645,))))
    assert "".join(c.text for c in chunks) == "Hello world"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stats.generated_tokens == len(ids) + 1
