import json
from dataclasses import replace

import pytest

from edgevlm.config import ConfigError
from edgevlm.models import load_config, parse_config, preset
from edgevlm.models.internvl3 import PRESETS
from edgevlm.testing.vocab import fixture_tokenizer


def _raw(ckpt):
    return json.loads((ckpt / "config.json").read_text())


def test_both_namings_parse_to_the_same_model(tiny_ckpt, tiny_cfg):
    original, hf = load_config(tiny_ckpt["original"]), load_config(tiny_ckpt["hf"])
    assert original.naming == "original" and hf.naming == "hf"
    assert original == tiny_cfg.with_naming("original") and original.image_token_id is None  # not in its config
    assert hf == replace(tiny_cfg.with_naming("hf"), image_token_id=hf.image_token_id)
    assert hf.image_token_id == fixture_tokenizer()[0].token_to_id("<IMG_CONTEXT>")


def test_original_keys_are_read(tiny_ckpt):
    raw = _raw(tiny_ckpt["original"])
    raw.update(max_dynamic_patch=6, min_dynamic_patch=2, use_thumbnail=False, select_layer=-2, template="x")
    cfg = parse_config(raw)
    assert (cfg.max_dynamic_patch, cfg.min_dynamic_patch, cfg.use_thumbnail) == (6, 2, False)
    assert cfg.vision.select_layer == -2 and cfg.vision.used_layers == cfg.vision.num_layers - 1
    assert cfg.template == "x"


def test_hf_keys_are_read(tiny_ckpt):
    raw = _raw(tiny_ckpt["hf"])
    raw["image_token_id"] = 7
    raw["text_config"]["rope_parameters"]["rope_theta"] = 5000.0
    cfg = parse_config(raw)
    assert cfg.image_token_id == 7 and cfg.text.rope_theta == 5000.0
    assert cfg.vision.image_size == 448 and cfg.vision.patch_size == 14  # given as pairs in -hf


def test_unknown_keys_are_ignored(tiny_ckpt):
    raw = _raw(tiny_ckpt["original"])
    raw["something_new"] = {"a": 1}
    raw["llm_config"]["another"] = 3
    assert parse_config(raw) == load_config(tiny_ckpt["original"])


@pytest.mark.parametrize(
    ("naming", "path"),
    [("original", ("llm_config", "hidden_size")), ("original", ("vision_config", "num_hidden_layers")),
     ("hf", ("text_config", "vocab_size")), ("hf", ("vision_config", "intermediate_size")),
     ("original", ("llm_config",))],
)  # fmt: skip
def test_missing_required_key_is_named(tiny_ckpt, naming, path):
    raw = _raw(tiny_ckpt[naming])
    node = raw
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(ConfigError, match=r"missing required key '" + ".".join(path) + "'"):
        parse_config(raw)


def test_not_internvl_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="not a supported model"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)


def test_presets_have_the_real_dims():
    one = preset("internvl3-1b")
    assert (one.text.hidden_size, one.text.num_layers, one.text.num_heads, one.text.num_kv_heads) == (896, 24, 14, 2)
    assert (one.text.intermediate_size, one.text.vocab_size, one.text.rope_theta) == (4864, 151674, 1e6)
    assert (one.vision.hidden_size, one.vision.num_layers, one.vision.num_heads) == (1024, 24, 16)
    assert one.tokens_per_tile == 256 and one.projector_in == 4096
    assert PRESETS["internvl3-2b"].text.hidden_size == 1536
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
