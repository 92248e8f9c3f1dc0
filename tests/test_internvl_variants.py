"""InternVL checkpoints whose image size, patch size, downsample ratio and token ids differ from
InternVL3-1B's: everything is read from the checkpoint, and `edgevlm convert` then `edgevlm chat` (and
`edgevlm serve`) give exactly transformers' greedy answers."""

import base64
import dataclasses
import io

import pytest
import torch

from edgevlm.models import preset
from edgevlm.testing.random_checkpoint import reference_model, round_parameters, save_checkpoint
from edgevlm.testing.reference import original_prompt, processor
from edgevlm.testing.vocab import small_tokenizer
from helpers import Server, picture

NEW = 8
# name: (image size, patch size, downsample ratio) -> tokens per tile
VARIANTS = {"image112": (112, 14, 0.5), "image224-patch16": (224, 16, 0.5), "image224-ratio0.25": (224, 14, 0.25)}


def variant_config(name):
    size, patch, ratio = VARIANTS[name]
    tok = small_tokenizer()
    tiny = preset("tiny")
    vision = dataclasses.replace(tiny.vision, image_size=size, patch_size=patch)
    text = dataclasses.replace(tiny.text, vocab_size=tok.get_vocab_size())
    return dataclasses.replace(tiny, vision=vision, text=text, downsample_ratio=ratio, max_dynamic_patch=6)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
    """A variant's reference model, its checkpoints in both namings, and their bundles."""
    from edgevlm.convert import ConvertOptions, convert

    cfg, tok = variant_config(request.param), small_tokenizer()
    model = reference_model(cfg, seed=3, tokenizer=tok)
    round_parameters(model, "bf16")
    root = tmp_path_factory.mktemp(request.param)
    bundles = {}
    for naming in ("original", "hf"):
        save_checkpoint(model, cfg, root / naming, naming=naming, dtype="bf16", tokenizer=tok)
        bundles[naming] = root / f"{naming}-bundle"
        convert(root / naming, bundles[naming], ConvertOptions(llm="fp32", vision="fp32"), log=lambda m: None)
    tokens = (cfg.vision.image_size // cfg.vision.patch_size * cfg.downsample_ratio) ** 2
    proc = processor(tok, 1, cfg.max_dynamic_patch, tile=cfg.vision.image_size, tokens_per_tile=int(tokens))
    return {"cfg": cfg, "model": model, "tok": tok, "proc": proc, "bundles": bundles, "root": root}


CASES = {  # question, image sizes
    "multi-tile image": ("Describe the image.", [(300, 140)]),
    "two images": ("What differs between them?", [(90, 200), (250, 250)]),
    "text only": ("Write a haiku about snow.", []),
    "odd sizes": ("What is this?", [(37, 251)]),
}


def reference_text(variant, question, images):
    tok, im_end = variant["tok"], variant["tok"].token_to_id("<|im_end|>")
    inputs = variant["proc"](text=[original_prompt([(question, len(images), None)])], images=images or None,
                             return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = variant["model"].generate(**inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=im_end,
                                        pad_token_id=0)  # fmt: skip
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    return tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chat_equals_transformers(variant, case, tmp_path):
    from helpers import run_edgevlm

    question, sizes = CASES[case]
    images = [picture(w, h, i) for i, (w, h) in enumerate(sizes)]
    want = reference_text(variant, question, images)
    args = []
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
        args += ["-i", tmp_path / f"{i}.png"]
    for naming, bundle in variant["bundles"].items():
        r = run_edgevlm("chat", "-m", bundle, *args, "-p", question, "--max-tokens", str(NEW))
        assert r.returncode == 0, r.stderr
        assert r.stdout[:-1] == want, (naming, case)


def test_serve_equals_transformers(variant):
    question, sizes = CASES["two images"]
    images = [picture(w, h, i) for i, (w, h) in enumerate(sizes)]
    want = reference_text(variant, question, images)
    parts = [{"type": "text", "text": question}]
    for img in images:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                + base64.b64encode(buf.getvalue()).decode()}})
    s = Server(variant["bundles"]["hf"], key=None)
    try:
        r = s.post({"messages": [{"role": "user", "content": parts}], "max_tokens": NEW, "temperature": 0}, key=None)
    finally:
        s.stop()
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want


def test_the_manifest_records_what_the_checkpoint_says(variant):
    from edgevlm.bundle import open_bundle

    tok = variant["tok"]
    m = open_bundle(variant["bundles"]["original"])
    assert m.tokens["<IMG_CONTEXT>"] == tok.token_to_id("<IMG_CONTEXT>") != 151667
    assert m.tokens["<|im_end|>"] == tok.token_to_id("<|im_end|>") != 151645
    assert m.model.tokens_per_tile == variant["proc"].image_seq_length
    assert m.model.vision.image_size == variant["cfg"].vision.image_size
