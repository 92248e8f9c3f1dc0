import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from edgevlm.checkpoint import CheckpointError, open_checkpoint
from edgevlm.testing.random_checkpoint import save_checkpoint


def test_both_namings_load_identical_canonical_tensors(tiny_ckpt):
    a, b = open_checkpoint(tiny_ckpt["original"]), open_checkpoint(tiny_ckpt["hf"])
    assert a.names() == b.names()
    for name in a.names():
        x, y = a.get(name), b.get(name)
        assert x.dtype == np.float32 and x.shape == a.shape(name)
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_canonical_tensors_equal_the_reference_model(tiny_ckpt, tiny_ref, tiny_cfg):
    ref = {k: v.numpy() for k, v in tiny_ref.state_dict().items()}
    ck = open_checkpoint(tiny_ckpt["original"])
    qkv = ck.get("vision.layers.1.attn.qkv.weight")
    d = tiny_cfg.vision.hidden_size
    for j, p in enumerate("qkv"):  # fused rows are q, then k, then v
        hf = ref[f"model.vision_tower.encoder.layer.1.attention.{p}_proj.weight"]
        np.testing.assert_array_equal(qkv[j * d : (j + 1) * d], hf)
    pairs = {
        "vision.embed.pos": "model.vision_tower.embeddings.position_embeddings",
        "vision.layers.0.ls2": "model.vision_tower.encoder.layer.0.lambda_2",
        "vision.layers.0.norm1.bias": "model.vision_tower.encoder.layer.0.layernorm_before.bias",
        "projector.fc2.weight": "model.multi_modal_projector.linear_2.weight",
        "llm.layers.1.attn.k.bias": "model.language_model.layers.1.self_attn.k_proj.bias",
        "llm.layers.0.mlp_norm.weight": "model.language_model.layers.0.post_attention_layernorm.weight",
        "llm.lm_head.weight": "lm_head.weight",
    }
    for canonical, hf in pairs.items():
        np.testing.assert_array_equal(ck.get(canonical), ref[hf], err_msg=canonical)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_fp16_fp32_and_sharded(tiny_ref, tiny_cfg, tiny_ckpt, tmp_path, dtype):
    save_checkpoint(tiny_ref, tiny_cfg, tmp_path / "c", naming="hf", dtype=dtype, shard_mb=4)
    assert (tmp_path / "c" / "model.safetensors.index.json").exists()
    ck, bf = open_checkpoint(tmp_path / "c"), open_checkpoint(tiny_ckpt["hf"])
    assert ck.stored_dtype("llm.embed.weight") == {"fp16": "F16", "fp32": "F32"}[dtype]
    for name in ("llm.embed.weight", "vision.layers.0.attn.qkv.bias", "projector.norm.weight"):
        # bf16 values are exact in fp32 and, at these magnitudes, nearly so in fp16
        np.testing.assert_allclose(ck.get(name), bf.get(name), rtol=1e-3 if dtype == "fp16" else 0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_rows_of_a_table_equal_the_whole_tensor_s(tiny_ref, tiny_cfg, tmp_path, dtype):
    save_checkpoint(tiny_ref, tiny_cfg, tmp_path / "c", naming="hf", dtype=dtype)
    ck = open_checkpoint(tmp_path / "c")
    ids = [5, 0, 5, ck.shape("llm.embed.weight")[0] - 1]
    rows = ck.rows("llm.embed.weight", ids)
    assert rows.dtype == np.float32 and rows.shape == (4, ck.shape("llm.embed.weight")[1])
    np.testing.assert_array_equal(rows, ck.get("llm.embed.weight")[ids])


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_blocks_of_rows_make_up_the_whole_tensor(tiny_ref, tiny_cfg, tmp_path, dtype):
    save_checkpoint(tiny_ref, tiny_cfg, tmp_path / "c", naming="hf", dtype=dtype)
    ck = open_checkpoint(tmp_path / "c")
    for name in ("llm.embed.weight", "llm.lm_head.weight"):  # the head: tied or its own, as the config says
        blocks = list(ck.row_blocks(name, rows=7))
        assert all(len(b) == 7 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 7
        np.testing.assert_array_equal(np.concatenate(blocks), ck.get(name))


def test_tensors_are_memory_mapped(tiny_ref, tiny_cfg, tmp_path):
    save_checkpoint(tiny_ref, tiny_cfg, tmp_path / "c", naming="original", dtype="fp32")
    ck = open_checkpoint(tmp_path / "c")
    embed = ck.get("llm.embed.weight")
    assert isinstance(embed.base, np.memmap) or isinstance(embed.base.base, np.memmap)
    assert not embed.flags.writeable


def test_transformers_5_model_prefix_is_accepted(tiny_ckpt, tmp_path):
    src = tiny_ckpt["hf"]
    out = tmp_path / "prefixed"
    out.mkdir()
    shutil.copy(src / "config.json", out / "config.json")
    renamed = {}
    for k, v in load_file(src / "model.safetensors").items():
        if k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model.") :]
        elif k == "language_model.lm_head.weight":
            k = "lm_head.weight"
        else:
            k = "model." + k
        renamed[k] = v
    save_file(renamed, out / "model.safetensors")
    a, b = open_checkpoint(out), open_checkpoint(src)
    np.testing.assert_array_equal(a.get("llm.lm_head.weight"), b.get("llm.lm_head.weight"))
    np.testing.assert_array_equal(a.get("vision.embed.cls"), b.get("vision.embed.cls"))


def _mutated(src, tmp_path, change):
    out = tmp_path / "bad"
    shutil.copytree(src, out)
    tensors = load_file(out / "model.safetensors")
    change(tensors)
    save_file(tensors, out / "model.safetensors")
    return out


@pytest.mark.parametrize("naming", ["original", "hf"])
def test_missing_tensor_is_named(tiny_ckpt, tmp_path, naming):
    name = {"original": "vision_model.encoder.layers.1.attn.qkv.bias",
            "hf": "vision_tower.encoder.layer.1.attention.k_proj.bias"}[naming]  # fmt: skip
    bad = _mutated(tiny_ckpt[naming], tmp_path, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}'"):
        open_checkpoint(bad)


@pytest.mark.parametrize("naming", ["original", "hf"])
def test_unused_tensor_is_named(tiny_ckpt, tmp_path, naming):
    bad = _mutated(tiny_ckpt[naming], tmp_path, lambda t: t.update({"vision_model.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'vision_model.extra.weight'"):
        open_checkpoint(bad)


@pytest.mark.parametrize("naming", ["original", "hf"])
def test_wrong_shape_is_named(tiny_ckpt, tmp_path, naming):
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    bad = _mutated(tiny_ckpt[naming], tmp_path, lambda t: t.update({name: t[name][:-1].clone()}))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' has shape \[127, 64\], config implies \[128, 64\]"):
        open_checkpoint(bad)


def test_truncated_and_missing_files(tiny_ckpt, tmp_path):
    bad = tmp_path / "trunc"
    shutil.copytree(tiny_ckpt["hf"], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="runs past the end of the file"):
        open_checkpoint(bad)
    (bad / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_checkpoint(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        open_checkpoint(bad)


def test_index_naming_a_missing_shard(tiny_ref, tiny_cfg, tmp_path):
    save_checkpoint(tiny_ref, tiny_cfg, tmp_path / "c", naming="hf", dtype="bf16", shard_mb=4)
    index = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "c" / shard).unlink()
    with pytest.raises(CheckpointError, match=f"shard '{shard}'"):
        open_checkpoint(tmp_path / "c")


def test_random_checkpoint_cli(tmp_path, capsys):
    from edgevlm.testing.random_checkpoint import main

    assert main(["--preset", "tiny", "--naming", "original", "--dtype", "fp32", str(tmp_path / "o")]) == 0
    assert "original naming" in capsys.readouterr().out
    ck = open_checkpoint(tmp_path / "o")
    assert ck.config.naming == "original" and ck.stored_dtype("vision.embed.cls") == "F32"
