"""InternVL3 (InternViT + MLP projector + Qwen2): everything specific to this family: config, weight
table, image processing (dynamic tiling), prompt format, vision graph.

Two namings exist for the same model: OpenGVLab's original (`InternVLChatModel`, keys `llm_config`,
`max_dynamic_patch`, ...) and transformers' `-hf` (`InternVLForConditionalGeneration`, keys
`text_config`, `image_token_id`, ...). Both parse to one `ModelConfig`, and both tensor namings map
to one canonical naming through TABLE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..config import (
    ConfigError,
    TextConfig,
    check_image_fields,
    divides,
    get_key,
    scalar,
    section,
    text_config,
    validate,
)
from ..image import DEFAULT_MAX_PIXELS, IMAGENET, ImageSource, Norm, Tiles, load_image, normalize, tile_cap
from ..prompt import ImageLayout, PromptFormat, Template, VideoLayout
from ..video import FrameSampling, VideoInfo, even_indices
from .npu import one_tile_per_run, run_per_tile
from .weights import fold_prefixes, per_layer, text_rows, text_shapes

NAME = "internvl3"
TILE, MAX_TILES = 448, 12  # InternVL3's tile size and tile limit (a checkpoint may say otherwise)
VIDEO_FRAMES = 8  # frames of a clip by default: InternVL's model card samples 8 segments, one tile each


@dataclass(frozen=True)
class VisionConfig:
    """InternViT encoder dimensions."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    image_size: int = TILE
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    select_layer: int = -1

    def __post_init__(self) -> None:
        where = "vision_config."
        validate(self, where)
        divides(where, "hidden_size", self.hidden_size, "num_attention_heads", self.num_heads)
        divides(where, "image_size", self.image_size, "patch_size", self.patch_size)
        if not 1 <= self.used_layers <= self.num_layers:
            raise ConfigError(f"select_layer {self.select_layer} is outside the encoder's {self.num_layers} layers")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side of one tile."""
        return self.image_size // self.patch_size

    @property
    def used_layers(self) -> int:
        """Layers whose output reaches the projector (select_layer -1 means all)."""
        return self.num_layers + 1 + self.select_layer if self.select_layer < 0 else self.select_layer


@dataclass(frozen=True)
class ModelConfig:
    """One InternVL3 model, whichever naming its checkpoint uses."""

    family: ClassVar[str] = NAME

    vision: VisionConfig
    text: TextConfig
    naming: str = "hf"  # "original" or "hf": the checkpoint's tensor naming
    downsample_ratio: float = 0.5
    image_token_id: int | None = None  # -hf configs say it; else the tokenizer's <IMG_CONTEXT> is used
    template: str = "internvl2_5"
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = MAX_TILES
    use_thumbnail: bool = True
    ps_version: str = "v2"
    image_mean: tuple[float, float, float] = IMAGENET[0]
    image_std: tuple[float, float, float] = IMAGENET[1]
    video_frames: int = VIDEO_FRAMES  # a clip's frames (segments) unless the user says otherwise

    def __post_init__(self) -> None:
        validate(self, "")
        inverse = 1 / self.downsample_ratio
        if self.downsample_ratio > 1 or abs(inverse - round(inverse)) > 1e-6 or self.vision.grid % round(inverse):
            raise ConfigError(f"downsample_ratio {self.downsample_ratio} does not divide the {self.vision.grid} "
                              "patches per side of a tile into whole groups")  # fmt: skip
        if self.min_dynamic_patch > self.max_dynamic_patch:
            raise ConfigError(f"min_dynamic_patch {self.min_dynamic_patch} > max_dynamic_patch "
                              f"{self.max_dynamic_patch}")  # fmt: skip
        check_image_fields(self)

    @property
    def shuffle(self) -> int:
        """Patches merged per side by the pixel shuffle (2 for InternVL3's downsample ratio 0.5)."""
        return round(1 / self.downsample_ratio)

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile becomes after pixel shuffle (256 for InternVL3's 448 px tiles)."""
        side = self.vision.grid // self.shuffle
        return side * side

    @property
    def projector_in(self) -> int:
        """Channels after pixel shuffle: hidden * (1/ratio)^2."""
        return self.vision.hidden_size * self.shuffle**2

    @property
    def label(self) -> str:
        return f"{NAME}, {self.naming} naming"

    # What every family's config says of its tiling (the bundle's manifest records these).
    @property
    def tile_size(self) -> int:
        return self.vision.image_size

    @property
    def min_tiles(self) -> int:
        return self.min_dynamic_patch

    @property
    def max_tiles(self) -> int:
        return self.max_dynamic_patch

    def with_naming(self, naming: str) -> ModelConfig:
        return replace(self, naming=naming)


# --------------------------------------------------------------------------------------------
# Reading config.json


def _vision_config(v: Mapping[str, Any], where: str, select_layer: int, *, bias_key: str) -> VisionConfig:
    if v.get("qk_normalization") or v.get("use_qk_norm"):
        raise ConfigError("config.json: vision qk normalisation (InternViT-6B) is not supported")
    if v.get("norm_type", "layer_norm") != "layer_norm":
        raise ConfigError(f"config.json: vision norm_type '{v['norm_type']}' is not supported")
    return VisionConfig(
        hidden_size=get_key(v, "hidden_size", where),
        num_layers=get_key(v, "num_hidden_layers", where),
        num_heads=get_key(v, "num_attention_heads", where),
        intermediate_size=get_key(v, "intermediate_size", where),
        image_size=scalar(v.get("image_size", 448)),
        patch_size=scalar(v.get("patch_size", 14)),
        layer_norm_eps=v.get("layer_norm_eps", 1e-6),
        qkv_bias=v.get(bias_key, True),
        select_layer=select_layer,
    )



def _processing(pre: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """What preprocessor_config.json (GotOcr2's keys) says of tiling and normalisation."""
    out: dict[str, Any] = {}
    for key, name in (("image_mean", "image_mean"), ("image_std", "image_std")):
        if key in pre:
            value = pre[key]
            out[name] = tuple(value) if isinstance(value, list) else value
    for key, name in (("min_patches", "min_dynamic_patch"), ("max_patches", "max_dynamic_patch")):
        if key in pre:
            out[name] = pre[key]
    size = pre.get("size") or {}
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, Mapping) else size
    if side is not None and side != image_size:
        raise ConfigError(f"preprocessor_config.json: size {side} differs from the encoder's image_size {image_size}")
    return out


def _parse_original(raw: Mapping[str, Any], pre: Mapping[str, Any]) -> ModelConfig:
    vision = _vision_config(
        section(raw, "vision_config", ""), "vision_config.", raw.get("select_layer", -1), bias_key="qkv_bias"
    )
    force = raw.get("force_image_size")
    if force is not None and force != vision.image_size:
        raise ConfigError(f"config.json: force_image_size {force} differs from the encoder's {vision.image_size}")
    ps = raw.get("ps_version", "v2")
    if ps != "v2":
        raise ConfigError(f"config.json: ps_version '{ps}' is not supported (InternVL3 uses v2)")
    return ModelConfig(
        vision=vision,
        text=text_config(section(raw, "llm_config", ""), "llm_config.", qkv_bias=True),
        naming="original",
        downsample_ratio=raw.get("downsample_ratio", 0.5),
        template=raw.get("template", "internvl2_5"),
        min_dynamic_patch=raw.get("min_dynamic_patch", 1),
        max_dynamic_patch=raw.get("max_dynamic_patch", 12),
        use_thumbnail=raw.get("use_thumbnail", True),
        ps_version=ps,
        **{k: v for k, v in _processing(pre, vision.image_size).items() if k.startswith("image_")},
    )


def _parse_hf(raw: Mapping[str, Any], pre: Mapping[str, Any]) -> ModelConfig:
    layer = raw.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ConfigError(f"config.json: vision_feature_layer {layer!r} (several layers) is not supported")
    text = text_config(section(raw, "text_config", ""), "text_config.", qkv_bias=True)
    if "tie_word_embeddings" in raw and "tie_word_embeddings" not in raw["text_config"]:
        text = replace(text, tie_word_embeddings=raw["tie_word_embeddings"])
    vision = _vision_config(section(raw, "vision_config", ""), "vision_config.", layer, bias_key="attention_bias")
    return ModelConfig(
        vision=vision,
        text=text,
        naming="hf",
        downsample_ratio=raw.get("downsample_ratio", 0.5),
        image_token_id=raw.get("image_token_id"),
        **_processing(pre, vision.image_size),
    )


# Which reader handles which checkpoint, keyed by its declared architecture (and model_type).
PARSERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], ModelConfig]] = {
    "InternVLChatModel": _parse_original,
    "InternVLForConditionalGeneration": _parse_hf,
}
NOT_YET: dict[str, str] = {}  # command -> why it cannot take this family yet
MODEL_TYPES = {"internvl_chat": "InternVLChatModel", "internvl": "InternVLForConditionalGeneration"}




# --------------------------------------------------------------------------------------------
# Presets: real model dims, for tests and benchmarks (no weights needed).

_INTERNVIT_300M = VisionConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096)

PRESETS: dict[str, ModelConfig] = {
    "internvl3-1b": ModelConfig(
        vision=_INTERNVIT_300M,
        text=TextConfig(
            hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864, vocab_size=151674
        ),
    ),
    "internvl3-2b": ModelConfig(
        vision=_INTERNVIT_300M,
        text=TextConfig(
            hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960, vocab_size=151674
        ),
    ),
    # Seconds to build and run; keeps the real vocabulary so the real special-token ids work.
    "tiny": ModelConfig(
        vision=VisionConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        text=TextConfig(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=128,
            vocab_size=151674,
            max_position_embeddings=8192,
        ),
    ),
}


# --------------------------------------------------------------------------------------------
# The naming TABLE: canonical name -> stored name(s) in each naming. `{i}` is a layer index;
# several stored names are concatenated along axis 0 (transformers splits the fused qkv).

_VL = "vision.layers.{i}."
_OV = "vision_model.encoder.layers.{i}."
_HV = "vision_tower.encoder.layer.{i}."

Row = tuple[str, tuple[str, ...], tuple[str, ...]]


def _same(canonical: str, stored: str) -> Row:
    """A row whose original and -hf names agree (the language model)."""
    return (canonical, (stored,), (stored,))


TABLE: tuple[Row, ...] = (
    # canonical                       original                                   -hf
    (
        "vision.embed.patch.weight",
        ("vision_model.embeddings.patch_embedding.weight",),
        ("vision_tower.embeddings.patch_embeddings.projection.weight",),
    ),
    (
        "vision.embed.patch.bias",
        ("vision_model.embeddings.patch_embedding.bias",),
        ("vision_tower.embeddings.patch_embeddings.projection.bias",),
    ),
    ("vision.embed.cls", ("vision_model.embeddings.class_embedding",), ("vision_tower.embeddings.cls_token",)),
    (
        "vision.embed.pos",
        ("vision_model.embeddings.position_embedding",),
        ("vision_tower.embeddings.position_embeddings",),
    ),
    (_VL + "norm1.weight", (_OV + "norm1.weight",), (_HV + "layernorm_before.weight",)),
    (_VL + "norm1.bias", (_OV + "norm1.bias",), (_HV + "layernorm_before.bias",)),
    (_VL + "attn.qkv.weight", (_OV + "attn.qkv.weight",), tuple(_HV + f"attention.{p}_proj.weight" for p in "qkv")),
    (_VL + "attn.qkv.bias", (_OV + "attn.qkv.bias",), tuple(_HV + f"attention.{p}_proj.bias" for p in "qkv")),
    (_VL + "attn.proj.weight", (_OV + "attn.proj.weight",), (_HV + "attention.projection_layer.weight",)),
    (_VL + "attn.proj.bias", (_OV + "attn.proj.bias",), (_HV + "attention.projection_layer.bias",)),
    (_VL + "ls1", (_OV + "ls1",), (_HV + "lambda_1",)),
    (_VL + "ls2", (_OV + "ls2",), (_HV + "lambda_2",)),
    (_VL + "norm2.weight", (_OV + "norm2.weight",), (_HV + "layernorm_after.weight",)),
    (_VL + "norm2.bias", (_OV + "norm2.bias",), (_HV + "layernorm_after.bias",)),
    (_VL + "mlp.fc1.weight", (_OV + "mlp.fc1.weight",), (_HV + "mlp.fc1.weight",)),
    (_VL + "mlp.fc1.bias", (_OV + "mlp.fc1.bias",), (_HV + "mlp.fc1.bias",)),
    (_VL + "mlp.fc2.weight", (_OV + "mlp.fc2.weight",), (_HV + "mlp.fc2.weight",)),
    (_VL + "mlp.fc2.bias", (_OV + "mlp.fc2.bias",), (_HV + "mlp.fc2.bias",)),
    ("projector.norm.weight", ("mlp1.0.weight",), ("multi_modal_projector.layer_norm.weight",)),
    ("projector.norm.bias", ("mlp1.0.bias",), ("multi_modal_projector.layer_norm.bias",)),
    ("projector.fc1.weight", ("mlp1.1.weight",), ("multi_modal_projector.linear_1.weight",)),
    ("projector.fc1.bias", ("mlp1.1.bias",), ("multi_modal_projector.linear_1.bias",)),
    ("projector.fc2.weight", ("mlp1.3.weight",), ("multi_modal_projector.linear_2.weight",)),
    ("projector.fc2.bias", ("mlp1.3.bias",), ("multi_modal_projector.linear_2.bias",)),
    *(_same(name, stored) for name, (stored,) in text_rows("language_model.model.", "language_model.lm_head.weight")),
)

# Recent transformers save with a `model.` prefix and a bare `lm_head`; fold them onto the hub naming.
HF_PREFIX_ALIASES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, for every tensor the config implies."""
    v, t = cfg.vision, cfg.text
    d, h, c = v.hidden_size, t.hidden_size, cfg.projector_in
    vision_layer = {
        "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "ls1": (d,), "ls2": (d,),
        "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (v.intermediate_size, d),
        "mlp.fc1.bias": (v.intermediate_size,), "mlp.fc2.weight": (d, v.intermediate_size), "mlp.fc2.bias": (d,),
    }  # fmt: skip
    if not v.qkv_bias:
        del vision_layer["attn.qkv.bias"]
    shapes = {
        "vision.embed.patch.weight": (d, 3, v.patch_size, v.patch_size),
        "vision.embed.patch.bias": (d,),
        "vision.embed.cls": (1, 1, d),
        "vision.embed.pos": (1, v.grid * v.grid + 1, d),
        "projector.norm.weight": (c,), "projector.norm.bias": (c,),
        "projector.fc1.weight": (h, c), "projector.fc1.bias": (h,),
        "projector.fc2.weight": (h, h), "projector.fc2.bias": (h,),
    }  # fmt: skip
    return shapes | per_layer("vision.layers", v.num_layers, vision_layer) | text_shapes(t)


def source_names(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Canonical name -> stored name(s) in the config's naming, for every expected tensor."""
    column = {"original": 1, "hf": 2}[cfg.naming]
    layers = {"vision": cfg.vision.num_layers, "llm": cfg.text.num_layers}
    wanted = expected_shapes(cfg)
    out = {}
    for row in TABLE:
        canonical, sources = row[0], row[column]
        count = layers[canonical.split(".")[0]] if "{i}" in canonical else 1
        for i in range(count):
            name = canonical.format(i=i)
            if name in wanted:
                out[name] = tuple(s.format(i=i) for s in sources)
    return out


def stored_name(name: str, cfg: ModelConfig) -> str:
    """A tensor name as stored, folded onto TABLE's naming (recent transformers add a `model.` prefix)."""
    return fold_prefixes(name, HF_PREFIX_ALIASES) if cfg.naming == "hf" else name


def tolerated_names(cfg: ModelConfig) -> set[str]:
    """Stored tensors that may be present without being used (a tied head some savers write anyway)."""
    return {"language_model.lm_head.weight"} if cfg.text.tie_word_embeddings else set()


def describe(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Lines of `edgevlm info` about what is specific to this family."""
    v = cfg.vision
    return [("vision", f"InternViT, {v.num_layers} layers, hidden {v.hidden_size}, {v.num_heads} heads, "
                       f"{v.image_size}px tiles of {cfg.tokens_per_tile} tokens"),
            ("tiling", f"{cfg.min_dynamic_patch}..{cfg.max_dynamic_patch} tiles, thumbnail {cfg.use_thumbnail}")]


# --------------------------------------------------------------------------------------------
# Prompt format

DEFAULT_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
TEMPLATES: dict[str, Template] = {
    # InternVL's conversation.py "internvl2_5" (MPT separator style), as chat() renders it.
    "internvl2_5": Template(
        system=("<|im_start|>system\n", "<|im_end|>"),
        user=("\n<|im_start|>user\n", "<|im_end|>"),
        assistant=("\n<|im_start|>assistant\n", "<|im_end|>"),
        default_system=DEFAULT_SYSTEM,
        single_image="{image}\n",
        multi_image="Image-{k}: {image}\n",
        stop=("<|im_end|>",),
        video="{video}\n",
    ),
}
IMAGE_TOKENS = ("<img>", "<IMG_CONTEXT>", "</img>")  # start, one per feature row, end
# Qwen2.5's added tokens and InternVL's after them, in id order: used only for a tokenizer given as
# vocab.json + merges.txt without a tokenizer_config.json that lists them.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = tuple((t, t not in ("<tool_call>", "</tool_call>")) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
))  # fmt: skip


def prompt_format(cfg: ModelConfig) -> PromptFormat:
    if cfg.template not in TEMPLATES:
        raise ConfigError(f"config.json: template '{cfg.template}' is not supported (known: {', '.join(TEMPLATES)})")
    start, token, end = IMAGE_TOKENS

    def image_text(layout: ImageLayout) -> str:  # every tile's rows in one block
        return start + token * (cfg.tokens_per_tile * layout.tiles) + end

    def video_text(video: VideoLayout) -> str:  # a line per frame, one tile each (transformers' processor)
        frame = image_text(ImageLayout(1))
        return "\n".join(f"Frame{i}: {frame}" for i in range(1, video.frames + 1))

    controls = ("<|im_start|>", "<|im_end|>", *IMAGE_TOKENS)
    return PromptFormat(TEMPLATES[cfg.template], start, token, end, controls, image_text, video_text)


# --------------------------------------------------------------------------------------------
# Image processing: dynamic tiling
#
# An image becomes min..max tiles of the tile size chosen by aspect ratio, plus a thumbnail of the
# whole image when there is more than one tile: exactly transformers' GotOcr2 processor with
# crop_to_patches (InternVL's own load_image).


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """(columns, rows) with min <= columns*rows <= max, by tile count (stable, columns first)."""
    grids = [
        (c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(
    width: int, height: int, *, min_tiles: int = 1, max_tiles: int = MAX_TILES, tile: int = TILE
) -> tuple[int, int]:
    """The grid whose aspect ratio is closest to the image's; on a tie the larger grid wins only
    while the image has more than half the pixels of that grid's canvas."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def _check_counts(min_tiles: int, max_tiles: int) -> None:
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"min_tiles must be between 1 and max_tiles ({max_tiles}), got {min_tiles}")


def tile_image(img: Image.Image, *, min_tiles: int = 1, max_tiles: int = MAX_TILES, use_thumbnail: bool = True,
               tile: int = TILE, norm: Norm = IMAGENET) -> Tiles:  # fmt: skip
    """Split an RGB image into InternVL's dynamic tiles (row-major), thumbnail last."""
    _check_counts(min_tiles, max_tiles)
    width, height = img.size
    if max_tiles == 1:  # the reference skips the grid search: one resized tile
        return Tiles(normalize(img.resize((tile, tile), Image.BICUBIC), norm)[None], (1, 1), img.size)
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile=tile)
    canvas = normalize(img.resize((cols * tile, rows * tile), Image.BICUBIC), norm)
    tiles = canvas.reshape(3, rows, tile, cols, tile).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    if use_thumbnail and rows * cols > 1:
        tiles = np.concatenate([tiles, normalize(img.resize((tile, tile), Image.BICUBIC), norm)[None]])
    return Tiles(np.ascontiguousarray(tiles), (cols, rows), img.size)


@dataclass(frozen=True)
class Tiling:
    """How a model wants its images tiled (a bundle's manifest says), capped per request."""

    min_tiles: int = 1
    max_tiles: int = MAX_TILES
    use_thumbnail: bool = True
    tile: int = TILE  # pixels per side of a tile
    norm: Norm = IMAGENET
    video_frames: int = VIDEO_FRAMES
    frame_group: ClassVar[int] = 1  # video frames per vision run

    def __post_init__(self) -> None:
        _check_counts(self.min_tiles, self.max_tiles)

    def capped(self, max_tiles: int | None, max_pixels: int | None = None) -> Tiling:
        """At most `max_tiles` tiles, and no more than `max_pixels` of them in area (None: the model's own
        limit); it never raises the model's limit."""
        max_tiles = tile_cap(max_tiles, max_pixels, self.tile)
        if not max_tiles or max_tiles >= self.max_tiles:
            return self
        return replace(self, min_tiles=min(self.min_tiles, max_tiles), max_tiles=max_tiles)

    def load(self, source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles:
        """Load an image and tile it: the one entry point from a file, bytes or PIL image to pixels."""
        return tile_image(load_image(source, max_pixels=max_pixels), min_tiles=self.min_tiles,
                          max_tiles=self.max_tiles, use_thumbnail=self.use_thumbnail, tile=self.tile,
                          norm=self.norm)  # fmt: skip

    def sample(self, info: VideoInfo, sampling: FrameSampling) -> list[int]:
        """The frames of a clip, as transformers' InternVLVideoProcessor samples them: `frames` segments (or
        what `fps` gives, capped by `frames`), one from the middle of each."""
        count = sampling.frames or self.video_frames
        if sampling.fps is not None:
            at_fps = int(info.frames / info.fps * sampling.fps) if info.fps else info.frames
            count = min(at_fps, sampling.frames) if sampling.frames else at_fps
        count = min(max(count, 1), info.frames)
        step = info.frames / count
        return even_indices(step / 2, info.frames, step)

    def frames(self, images: list[Image.Image]) -> list[Tiles]:
        """A clip's frames as the vision encoder takes them: each resized to one tile."""
        return [tile_image(img, max_tiles=1, tile=self.tile, norm=self.norm) for img in images]


def load_tiles(source: ImageSource, *, min_tiles: int = 1, max_tiles: int = MAX_TILES, use_thumbnail: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles:  # fmt: skip
    """InternVL3's tiling of an image (448 px tiles, ImageNet normalisation)."""
    return Tiling(min_tiles, max_tiles, use_thumbnail).load(source, max_pixels=max_pixels)


def tiling(cfg: ModelConfig, min_tiles: int, max_tiles: int) -> Tiling:
    """InternVL's dynamic tiling with this model's tile size, normalisation and thumbnail."""
    return Tiling(min_tiles, max_tiles, cfg.use_thumbnail, cfg.vision.image_size, (cfg.image_mean, cfg.image_std),
                  cfg.video_frames)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Vision graph


npu_vision = one_tile_per_run  # on the NPU: one tile per run, fed as a uint8 image
vision_inputs = run_per_tile  # on the CPU: a run per tile


def build_vision_graph(get: Callable[[str], Any], cfg: ModelConfig, path: Any, spec: Any) -> Any:
    """InternViT + pixel shuffle + projector as one ONNX graph (graphs/internvit.py)."""
    from ..graphs.internvit import build_vision_graph as build

    return build(get, cfg, path, spec)
