"""Qwen2-VL-2B at its real shape (random weights): slow, run with `scripts/test -m slow` (about 9 GB:
the float32 bundle answers first, then transformers' float32 model)."""

import pytest
import torch

import edgevlm
from edgevlm.checkpoint import open_checkpoint
from edgevlm.convert import ConvertOptions, convert
from edgevlm.models import preset
from edgevlm.runtime.sampling import SamplingParams
from edgevlm.testing import qwen2vl as q
from edgevlm.testing.random_checkpoint import round_parameters
from edgevlm.testing.vocab import fixture_tokenizer
from helpers import picture

pytestmark = pytest.mark.slow
NEW, IM_END = 12, 151645


def test_greedy_answer_equals_transformers_at_the_2b_shape(tmp_path):
    ckpt = q.cached_checkpoint("qwen2-vl-2b")
    assert open_checkpoint(ckpt).config == preset("qwen2-vl-2b")
    convert(ckpt, tmp_path / "fp32", ConvertOptions(llm="fp32", vision="fp32"), log=lambda m: None)
    model = edgevlm.load(tmp_path / "fp32")
    img = picture(392, 392, 1)
    session = model.session()
    got = [c.token for c in session.ask("Describe the image.", [img], SamplingParams(max_tokens=NEW))]
    assert session.last_stats.prompt_tokens > 196
    del model, session
    ref = q.reference_model(preset("qwen2-vl-2b"))
    round_parameters(ref, "bf16")
    proc = q.processor(fixture_tokenizer()[0])
    inputs = proc(text=[q.chat_prompt(proc, [("Describe the image.", 1, None)])], images=[img], return_tensors="pt")
    with torch.no_grad():
        out = ref.generate(**inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=IM_END, pad_token_id=0)
    assert got == out[0, inputs["input_ids"].shape[1] :].tolist()
