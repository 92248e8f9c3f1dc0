"""Random-weight InternVL3 checkpoints made with transformers' own classes (the reference).

    python -m edgevlm.testing.random_checkpoint --preset {tiny,internvl3-1b,internvl3-2b} \
        --naming {original,hf} OUT

The `-hf` naming is what transformers' `save_pretrained` writes. The original (OpenGVLab) naming is
derived from it here with renames written from the original model's source, independent of
edgevlm's own mapping table, so a test comparing the two catches a wrong table row.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_dir
from ..models import preset
from ..models.internvl3 import ModelConfig, expected_shapes
from . import cache_dir
from .reference import image_processor
from .vocab import fixture_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DTYPES = ("bf16", "fp16", "fp32")


def _ids(tokenizer: Tokenizer | None) -> dict[str, int]:
    """The special-token ids a config.json names, from the checkpoint's tokenizer (the fixture's by default)."""
    tok = tokenizer or fixture_tokenizer()[0]
    names = {"bos": "<|endoftext|>", "eos": "<|im_end|>", "image": "<IMG_CONTEXT>"}
    return {k: tok.token_to_id(v) for k, v in names.items()}


def hf_config(cfg: ModelConfig, tokenizer: Tokenizer | None = None) -> Any:
    """transformers' InternVLConfig for our ModelConfig."""
    from transformers import InternVLConfig

    ids = _ids(tokenizer)
    v, t = cfg.vision, cfg.text
    return InternVLConfig(
        vision_config=dict(
            hidden_size=v.hidden_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
            intermediate_size=v.intermediate_size, image_size=v.image_size, patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps, attention_bias=v.qkv_bias,
        ),
        text_config=dict(
            model_type="qwen2", hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
            intermediate_size=t.intermediate_size, vocab_size=t.vocab_size, rope_theta=t.rope_theta,
            rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
            tie_word_embeddings=t.tie_word_embeddings, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        ),
        image_token_id=cfg.image_token_id or ids["image"],
        downsample_ratio=cfg.downsample_ratio,
        vision_feature_layer=cfg.vision.select_layer,
        tie_word_embeddings=t.tie_word_embeddings,
    )  # fmt: skip


def _randomize(model: Any, seed: int) -> None:
    """Give every parameter a distinct, well-scaled random value.

    Default inits leave norms at 1, biases at 0 and weights tiny, which would let a wrong norm or a
    dropped bias pass a parity test; here each carries signal and activations keep their scale.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.05 * noise
            elif "lambda_" in name:
                value = 0.1 + 0.05 * noise
            elif p.ndim <= 1 or "embed" in name or "cls_token" in name:
                value = 0.5 * noise
            else:
                value = noise / math.sqrt(math.prod(p.shape[1:]))
            p.copy_(value)


def random_model(model_class: Any, config: Any, seed: int) -> Any:
    """A float32 transformers `model_class(config)` in eval mode, every parameter random (seeded)."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config).float().eval()
    _randomize(model, seed)
    return model


def reference_model(cfg: ModelConfig, seed: int = 0, tokenizer: Tokenizer | None = None) -> Any:
    """A float32 transformers InternVLForConditionalGeneration with random weights, in eval mode."""
    from transformers import InternVLForConditionalGeneration

    return random_model(InternVLForConditionalGeneration, hf_config(cfg, tokenizer), seed)


# --------------------------------------------------------------------------------------------
# The original naming, written from OpenGVLab's modeling_internvl_chat.py / modeling_intern_vit.py.

_TO_ORIGINAL = (
    (r"^vision_tower\.embeddings\.patch_embeddings\.projection\.", "vision_model.embeddings.patch_embedding."),
    (r"^vision_tower\.embeddings\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^vision_tower\.embeddings\.position_embeddings$", "vision_model.embeddings.position_embedding"),
    (r"^vision_tower\.encoder\.layer\.(\d+)\.", r"vision_model.encoder.layers.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.lambda_1$", ".ls1"),
    (r"\.lambda_2$", ".ls2"),
    (r"\.attention\.projection_layer\.", ".attn.proj."),
    (r"^multi_modal_projector\.layer_norm\.", "mlp1.0."),
    (r"^multi_modal_projector\.linear_1\.", "mlp1.1."),
    (r"^multi_modal_projector\.linear_2\.", "mlp1.3."),
)


def to_original_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """Rename hub `-hf` tensors to the original naming, fusing q/k/v into attn.qkv."""
    import torch

    out = {}
    for name, value in tensors.items():
        m = re.match(r"(.*)\.attention\.([qkv])_proj\.(weight|bias)$", name)
        if m and m.group(2) != "q":
            continue
        if m:
            parts = [tensors[f"{m.group(1)}.attention.{p}_proj.{m.group(3)}"] for p in "qkv"]
            name, value = f"{m.group(1)}.attn.qkv.{m.group(3)}", torch.cat(parts, dim=0)
        for pattern, repl in _TO_ORIGINAL:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def original_config(cfg: ModelConfig, dtype: str, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """config.json as OpenGVLab writes it for InternVL3."""
    v, t, ids = cfg.vision, cfg.text, _ids(tokenizer)
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": cfg.template,
        "downsample_ratio": cfg.downsample_ratio, "dynamic_image_size": True, "force_image_size": v.image_size,
        "max_dynamic_patch": cfg.max_dynamic_patch, "min_dynamic_patch": cfg.min_dynamic_patch,
        "use_thumbnail": cfg.use_thumbnail, "ps_version": cfg.ps_version, "select_layer": v.select_layer,
        "torch_dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype],
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
            "hidden_size": v.hidden_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "intermediate_size": v.intermediate_size,
            "image_size": v.image_size, "patch_size": v.patch_size, "layer_norm_eps": v.layer_norm_eps,
            "qkv_bias": v.qkv_bias, "qk_normalization": False, "norm_type": "layer_norm",
            "hidden_act": "gelu", "num_channels": 3, "use_flash_attn": False, "drop_path_rate": 0.0,
        },
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": t.hidden_size,
            "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads, "intermediate_size": t.intermediate_size,
            "vocab_size": t.vocab_size, "rope_theta": t.rope_theta, "rms_norm_eps": t.rms_norm_eps,
            "max_position_embeddings": t.max_position_embeddings, "rope_scaling": None,
            "tie_word_embeddings": t.tie_word_embeddings, "hidden_act": "silu", "use_sliding_window": False,
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
        },
    }  # fmt: skip


def _write_shards(tensors: dict[str, Any], out: Path, shard_mb: float | None) -> None:
    from safetensors.torch import save_file

    if not shard_mb:
        save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors")
        return
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > shard_mb * 2**20:
            shards.append({})
            size = 0
        shards[-1][name] = value.contiguous()
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / file)
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def round_parameters(model: Any, dtype: str) -> Any:
    """Round the model's parameters to the storage dtype in place (kept as float32), so the
    in-memory reference holds exactly what the checkpoint stores. Buffers such as rotary
    frequencies are left alone: the reference recomputes them on load too."""
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch_dtype).float())
    return torch_dtype


def save_checkpoint(
    model: Any, cfg: ModelConfig, out: Path, *, naming: str, dtype: str = "bf16", shard_mb: float | None = None,
    tokenizer: Tokenizer | None = None,
) -> None:
    """Write `model` as a checkpoint folder in the given naming and storage dtype (atomically), with
    `tokenizer` (the fixture's by default) as its tokenizer.json."""
    from safetensors.torch import load_file

    torch_dtype = round_parameters(model, dtype)
    with atomic_dir(out, replace=True) as tmp:
        hub = tmp / "hf"
        model.save_pretrained(hub)  # float32, in the hub naming
        tensors = {}
        for file in sorted(hub.glob("*.safetensors")):
            tensors.update({k: v.to(torch_dtype) for k, v in load_file(file).items()})
        if naming == "hf":
            (hub / "config.json").rename(tmp / "config.json")
            # The -hf checkpoints keep their tiling in the image processor's config, written by transformers.
            image_processor(cfg.min_dynamic_patch, cfg.max_dynamic_patch, cfg.vision.image_size).save_pretrained(tmp)
        else:
            tensors = to_original_names(tensors)
            (tmp / "config.json").write_text(json.dumps(original_config(cfg, dtype, tokenizer), indent=2))
        _write_shards(tensors, tmp, shard_mb)
        shutil.rmtree(hub)
        (tokenizer or fixture_tokenizer()[0]).save(str(tmp / "tokenizer.json"))


def build(preset_name: str, naming: str, out: Path, *, seed: int = 0, dtype: str = "bf16",
          shard_mb: float | None = None) -> Path:  # fmt: skip
    """Make a random checkpoint of a preset's shape at `out`."""
    cfg = preset(preset_name)
    save_checkpoint(reference_model(cfg, seed), cfg, out, naming=naming, dtype=dtype, shard_mb=shard_mb)
    return out


def cached_checkpoint(preset_name: str, naming: str, *, seed: int = 0, dtype: str = "bf16") -> Path:
    """A random checkpoint kept in the cache: built on first use, then re-used."""
    out = cache_dir() / "checkpoints" / f"{preset_name}-{naming}-{dtype}-seed{seed}"
    if not (out / "config.json").exists():
        build(preset_name, naming, out, seed=seed, dtype=dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgevlm.testing.random_checkpoint", description=__doc__)
    p.add_argument("out", type=Path, help="checkpoint folder to write")
    p.add_argument("--preset", default="tiny", choices=["tiny", "internvl3-1b", "internvl3-2b"])
    p.add_argument("--naming", default="hf", choices=["original", "hf"])
    p.add_argument("--dtype", default="bf16", choices=DTYPES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-mb", type=float, default=None, help="split into shards of about this size")
    args = p.parse_args(argv)
    build(args.preset, args.naming, args.out, seed=args.seed, dtype=args.dtype, shard_mb=args.shard_mb)
    n = sum(math.prod(s) for s in expected_shapes(preset(args.preset)).values())
    print(f"wrote {args.out}: {args.preset}, {args.naming} naming, {args.dtype}, {n / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
