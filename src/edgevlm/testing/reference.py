"""transformers' own InternVL preprocessing, set up as InternVL3-1B-hf ships it, for parity tests.

Its settings are written here as the published model states them, not taken from edgevlm, so a wrong
constant in edgevlm shows up as a mismatch."""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

# InternVL3-1B-hf's preprocessor_config.json (GotOcr2) and InternVL's conversation.py system message.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SYSTEM_INTERNVL = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


def image_processor(min_tiles: int = 1, max_tiles: int = 12, tile: int = 448) -> Any:
    """GotOcr2ImageProcessorPil (no torchvision needed) with InternVL3's settings."""
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(
        crop_to_patches=True, min_patches=min_tiles, max_patches=max_tiles, size={"height": tile, "width": tile},
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )  # fmt: skip


def processor(tokenizer: Tokenizer, min_tiles: int = 1, max_tiles: int = 12, tile: int = 448,
              tokens_per_tile: int = 256, video_processor: Any = None) -> Any:  # fmt: skip
    """transformers' InternVLProcessor over our tokenizer: it expands each `<IMG_CONTEXT>` in the
    text into `<img>` + tokens_per_tile x tiles `<IMG_CONTEXT>` + `</img>` and tokenises the result."""
    from transformers import InternVLProcessor, PreTrainedTokenizerFast

    class _Processor(InternVLProcessor):
        # Images never touch the video processor: it is left out unless given (testing.clips makes one).
        def check_argument_for_proper_class(self, name: str, arg: Any) -> Any:
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
    )  # fmt: skip
    return _Processor(image_processor=image_processor(min_tiles, max_tiles, tile), tokenizer=hf_tok,
                      video_processor=video_processor, image_seq_length=tokens_per_tile)  # fmt: skip


def original_prompt(turns: list[tuple[str, int, str | None]], system: str = DEFAULT_SYSTEM_INTERNVL) -> str:
    """InternVL's conversation.py internvl2_5 template (MPT style) as chat() fills it, with each
    image as `<IMG_CONTEXT>`: the placeholder transformers' processor expands."""
    msgs = []
    for question, n_images, answer in turns:
        if n_images == 1:
            question = "<IMG_CONTEXT>\n" + question
        elif n_images > 1:
            question = "".join(f"Image-{k}: <IMG_CONTEXT>\n" for k in range(1, n_images + 1)) + question
        msgs += [("<|im_start|>user\n", question), ("<|im_start|>assistant\n", answer)]
    out = "<|im_start|>system\n" + system + "<|im_end|>\n"
    for role, message in msgs:
        out += role + message + "<|im_end|>\n" if message else role
    return out
