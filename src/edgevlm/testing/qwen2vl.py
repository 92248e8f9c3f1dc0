"""Random-weight Qwen2-VL checkpoints made with transformers' own classes (the reference), in both
namings, with the Qwen2 test tokenizer; and transformers' Qwen2-VL processor set up as
Qwen2-VL-2B-Instruct ships it (written here from the published files, not taken from edgevlm).

    python -m edgevlm.testing.qwen2vl --preset {qwen2-vl-tiny,qwen2-vl-2b} --naming {original,hf} OUT
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_dir
from ..models import preset
from . import cache_dir, render_chat
from .random_checkpoint import _write_shards, random_model, round_parameters
from .vocab import fixture_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from ..models.qwen2_vl import ModelConfig

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
CHAT_TEMPLATE = (  # Qwen2-VL-2B-Instruct's chat_template.json
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages "
    "%}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def image_processor(min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> Any:
    """transformers' Qwen2VLImageProcessorPil (no torchvision needed) as Qwen2-VL-2B-Instruct ships it."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                    image_mean=CLIP_MEAN, image_std=CLIP_STD, patch_size=14, temporal_patch_size=2,
                                    merge_size=2, resample=3)  # fmt: skip


def processor(tok: Tokenizer | None = None, video_processor: Any = None, **image_kwargs: Any) -> Any:
    """transformers' Qwen2VLProcessor over the tokenizer: it expands each `<|image_pad|>` per image."""
    from transformers import PreTrainedTokenizerFast, Qwen2VLProcessor

    class _Processor(Qwen2VLProcessor):
        # Images never touch the video processor: it is left out unless given (testing.clips makes one).
        def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok or fixture_tokenizer()[0], eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>",
                                     extra_special_tokens={"image_token": "<|image_pad|>",
                                                           "video_token": "<|video_pad|>"})  # fmt: skip
    return _Processor(image_processor=image_processor(**image_kwargs), tokenizer=hf_tok,
                      video_processor=video_processor,
                      chat_template=CHAT_TEMPLATE)  # fmt: skip


def chat_prompt(proc: Any, turns: list[tuple[Any, ...]], system: str | None = None) -> str:
    """The checkpoints' chat template over (question, images, answer[, videos]) turns."""
    return render_chat(proc, CHAT_TEMPLATE, turns, system)


def hf_config(cfg: ModelConfig) -> Any:
    """transformers' Qwen2VLConfig for our ModelConfig."""
    from transformers import Qwen2VLConfig

    v, t = cfg.vision, cfg.text
    return Qwen2VLConfig(
        vision_config=dict(depth=v.num_layers, embed_dim=v.hidden_size, num_heads=v.num_heads, mlp_ratio=v.mlp_ratio,
                           patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                           spatial_merge_size=v.merge_size, hidden_size=v.out_hidden_size),
        text_config=dict(hidden_size=t.hidden_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                         num_key_value_heads=t.num_kv_heads, intermediate_size=t.intermediate_size,
                         vocab_size=t.vocab_size, rms_norm_eps=t.rms_norm_eps,
                         max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=t.tie_word_embeddings,
                         rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                          "mrope_section": list(t.mrope_section)}),
        image_token_id=151655, tie_word_embeddings=t.tie_word_embeddings,
    )  # fmt: skip


def reference_model(cfg: ModelConfig, seed: int = 0) -> Any:
    """A float32 transformers Qwen2VLForConditionalGeneration with random weights, in eval mode."""
    from transformers import Qwen2VLForConditionalGeneration

    return random_model(Qwen2VLForConditionalGeneration, hf_config(cfg), seed)


def original_config(cfg: ModelConfig, hf: dict[str, Any]) -> dict[str, Any]:
    """config.json as the hub's Qwen2-VL checkpoints have it: the text keys on top, rope_scaling of type mrope."""
    text = dict(hf.pop("text_config"))
    params = text.pop("rope_parameters")
    vision = hf["vision_config"]
    vision["in_chans"] = vision.pop("in_channels", 3)
    return {**hf, **text, "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "rope_theta": params["rope_theta"],
            "rope_scaling": {"type": "mrope", "mrope_section": params["mrope_section"]}}  # fmt: skip


def save_checkpoint(model: Any, cfg: ModelConfig, out: Path, *, naming: str = "hf", dtype: str = "bf16",
                    tokenizer: Tokenizer | None = None) -> None:  # fmt: skip
    """Write `model` as a checkpoint folder in the given naming (atomically)."""
    from safetensors.torch import load_file

    torch_dtype = round_parameters(model, dtype)
    with atomic_dir(out, replace=True) as tmp:
        hub = tmp / "hf"
        model.save_pretrained(hub)
        tensors = {}
        for file in sorted(hub.glob("*.safetensors")):
            tensors.update({k: v.to(torch_dtype) for k, v in load_file(file).items()})
        raw = json.loads((hub / "config.json").read_text())
        if naming == "original":  # transformers 5's prefixes off, as the hub's files have them
            tensors = {re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k)): v
                       for k, v in tensors.items()}  # fmt: skip
            raw = original_config(cfg, raw)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        _write_shards(tensors, tmp, None)
        shutil.rmtree(hub)
        image_processor(cfg.min_pixels, cfg.max_pixels).save_pretrained(tmp)
        (tokenizer or fixture_tokenizer()[0]).save(str(tmp / "tokenizer.json"))
        (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))


def cached_checkpoint(preset_name: str, naming: str = "hf", *, seed: int = 0, dtype: str = "bf16") -> Path:
    """A random checkpoint kept in the cache: built on first use, then re-used."""
    out = cache_dir() / "checkpoints" / f"{preset_name}-{naming}-{dtype}-seed{seed}"
    if not (out / "config.json").exists():
        cfg = preset(preset_name)
        save_checkpoint(reference_model(cfg, seed), cfg, out, naming=naming, dtype=dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgevlm.testing.qwen2vl", description=__doc__)
    p.add_argument("out", type=Path, help="checkpoint folder to write")
    p.add_argument("--preset", default="qwen2-vl-tiny", choices=["qwen2-vl-tiny", "qwen2-vl-2b"])
    p.add_argument("--naming", default="hf", choices=["original", "hf"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = preset(args.preset)
    save_checkpoint(reference_model(cfg, args.seed), cfg, args.out, naming=args.naming, dtype=args.dtype)
    print(f"wrote {args.out}: {args.preset}, {args.naming} naming, {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
