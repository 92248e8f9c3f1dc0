"""Qwen2-VL (a ViT with 2-D rotary positions + PatchMerger + Qwen2 with 3-D rotary positions): config,
weight table, image processing (smart_resize and patches), prompt format.

Two namings of one checkpoint: the hub's original (`visual.*`, `model.*`, text keys at the top of
config.json, `rope_scaling` of type mrope) and the one transformers 5 saves (`model.visual.*`,
`model.language_model.*`, `text_config` with `rope_parameters`). Both read to one ModelConfig and one
canonical naming.

On the CPU the whole path runs (convert, chat, serve); the NPU export is still to come, and
`export-rk3588` says so in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..config import ConfigError, TextConfig, check_image_fields, scalar, section, text_config, validate
from ..image import DEFAULT_MAX_PIXELS, ImageError, ImageSource, Norm, Tiles, load_image, normalize
from ..prompt import ImageLayout, PromptFormat, Template, VideoLayout
from ..video import FrameSampling, VideoInfo, even_indices
from .npu import NpuVision
from .weights import fold_prefixes, per_layer, table_sources, text_rows, text_shapes

NAME = "qwen2_vl"
CLIP: Norm = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # OpenAI CLIP's
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # the processor's defaults: 4 to 1280 merged tokens
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 28 * 28 * 128, 28 * 28 * 768  # its video processor's: per frame
VIDEO_FPS, VIDEO_MIN_FRAMES, VIDEO_MAX_FRAMES = 2.0, 4, 768  # qwen-vl-utils' sampling, as transformers takes it
MAX_ASPECT = 200  # smart_resize refuses images more elongated than this
BICUBIC = int(Image.Resampling.BICUBIC)
MROPE = (16, 24, 24)  # rotary pairs for time, height and width (Qwen2-VL-2B's mrope_section)


@dataclass(frozen=True)
class VisionConfig:
    """The ViT's dimensions (transformers' Qwen2VLVisionConfig; its defaults where a key is absent)."""

    hidden_size: int = 1280  # embed_dim
    num_layers: int = 32  # depth
    num_heads: int = 16
    mlp_ratio: int = 4
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2  # spatial_merge_size
    out_hidden_size: int = 3584  # the PatchMerger's output: the language model's width

    def __post_init__(self) -> None:
        validate(self, "vision_config.")
        for name in ("mlp_ratio", "patch_size", "temporal_patch_size", "merge_size", "out_hidden_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"vision_config.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ConfigError(f"vision_config.embed_dim {self.hidden_size} over {self.num_heads} heads must give a "
                              "head size that is a multiple of 4 (2-D rotary)")  # fmt: skip

    @property
    def intermediate_size(self) -> int:
        return self.hidden_size * self.mlp_ratio

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: channels x frames x patch x patch."""
        return 3 * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class ModelConfig:
    """One Qwen2-VL model, whichever naming its checkpoint uses."""

    family: ClassVar[str] = NAME

    vision: VisionConfig
    text: TextConfig
    naming: str = "hf"  # "original" or "hf"
    image_token_id: int | None = None
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    resample: int = BICUBIC
    image_mean: tuple[float, float, float] = CLIP[0]
    image_std: tuple[float, float, float] = CLIP[1]
    template: str = "qwen2_vl"
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS
    video_fps: float = VIDEO_FPS

    def __post_init__(self) -> None:
        validate(self, "")
        check_image_fields(self)
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ConfigError(f"vision_config.hidden_size {self.vision.out_hidden_size} is not the language model's "
                              f"{self.text.hidden_size}")  # fmt: skip
        if len(self.text.mrope_section) != 3:
            raise ConfigError(f"mrope_section {list(self.text.mrope_section)} must be three counts (time, height, "
                              "width)")  # fmt: skip
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise ConfigError(f"min_pixels {self.min_pixels} and max_pixels {self.max_pixels} are not a range")

    @property
    def factor(self) -> int:
        """Image sides are multiples of this: a patch times the merge (28 px)."""
        return self.vision.patch_size * self.vision.merge_size

    @property
    def tile_size(self) -> int:
        return self.factor

    @property
    def tokens_per_tile(self) -> int:
        return 1  # one token per merged 28 px cell: an image's count follows its size

    @property
    def min_tiles(self) -> int:
        return 1

    @property
    def max_tiles(self) -> int:
        return 1  # one "tile" per image: the whole image, patched

    @property
    def use_thumbnail(self) -> bool:
        return False

    @property
    def label(self) -> str:
        return f"{NAME}, {self.naming} naming"


# --------------------------------------------------------------------------------------------
# Reading config.json (and preprocessor_config.json)

_VISION_KEYS = (("hidden_size", "embed_dim"), ("num_layers", "depth"), ("num_heads", "num_heads"),
                ("mlp_ratio", "mlp_ratio"), ("merge_size", "spatial_merge_size"),
                ("out_hidden_size", "hidden_size"))  # fmt: skip


def _vision_config(v: Mapping[str, Any]) -> VisionConfig:
    act = v.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise ConfigError(f"config.json: vision_config.hidden_act '{act}' is not supported (quick_gelu)")
    known = {ours: v[key] for ours, key in _VISION_KEYS if v.get(key) is not None}
    for key in ("patch_size", "temporal_patch_size"):
        if v.get(key) is not None:
            known[key] = scalar(v[key])
    return VisionConfig(**known)


def _rope(t: Mapping[str, Any]) -> tuple[float, tuple[int, ...]]:
    """rope theta and mrope_section, from transformers 5's rope_parameters or the hub's rope_scaling."""
    params = section(t, "rope_parameters", "", required=False) or section(t, "rope_scaling", "", required=False)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "mrope"):
        raise ConfigError(f"config.json: rope type '{kind}' is not supported")
    mrope = params.get("mrope_section")
    if not isinstance(mrope, list):
        raise ConfigError("config.json: the language model's rope settings name no mrope_section")
    return params.get("rope_theta", t.get("rope_theta", 1_000_000.0)), tuple(mrope)


def _processing(pre: Mapping[str, Any]) -> dict[str, Any]:
    """Pixel bounds, normalisation and filter from preprocessor_config.json (either spelling)."""
    out: dict[str, Any] = {}
    size = pre.get("size") if isinstance(pre.get("size"), Mapping) else {}
    for name, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        value = next((v for v in (pre.get(name), size.get(edge)) if v is not None), None)
        if value is not None:
            out[name] = value
    for key in ("image_mean", "image_std"):
        if key in pre:
            out[key] = tuple(pre[key]) if isinstance(pre[key], list) else pre[key]
    if "resample" in pre:
        out["resample"] = pre["resample"]
    for key, want in (("patch_size", 14), ("merge_size", 2), ("temporal_patch_size", 2)):
        if pre.get(key, want) != want:
            raise ConfigError(f"preprocessor_config.json: {key} {pre[key]} differs from the model's {want}")
    return out


def _parse(raw: Mapping[str, Any], pre: Mapping[str, Any], naming: str) -> ModelConfig:
    t = section(raw, "text_config", "") if naming == "hf" else raw
    theta, mrope = _rope(t)
    plain = {k: v for k, v in t.items() if k not in ("rope_parameters", "rope_scaling")} | {"rope_theta": theta}
    text = replace(text_config(plain, "text_config." if naming == "hf" else "", qkv_bias=True),
                   mrope_section=tuple(mrope))
    if "tie_word_embeddings" in raw and "tie_word_embeddings" not in t:
        text = replace(text, tie_word_embeddings=raw["tie_word_embeddings"])
    vision = _vision_config(section(raw, "vision_config", ""))
    return ModelConfig(vision=vision, text=text, naming=naming, image_token_id=raw.get("image_token_id"),
                       **_processing(pre))  # fmt: skip


def _parse_any(raw: Mapping[str, Any], pre: Mapping[str, Any]) -> ModelConfig:
    """transformers 5 nests the language model under text_config; the hub's original keeps it on top."""
    return _parse(raw, pre, "hf" if "text_config" in raw else "original")


PARSERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], ModelConfig]] = {
    "Qwen2VLForConditionalGeneration": _parse_any,
}
MODEL_TYPES = {"qwen2_vl": "Qwen2VLForConditionalGeneration"}
NOT_YET: dict[str, str] = {}  # command -> why it cannot take this family yet


# --------------------------------------------------------------------------------------------
# Presets: real dims (Qwen2-VL-2B-Instruct), and a tiny one for tests.

PRESETS: dict[str, ModelConfig] = {
    "qwen2-vl-2b": ModelConfig(
        vision=VisionConfig(out_hidden_size=1536),
        text=TextConfig(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
                        vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True, mrope_section=MROPE),
        image_token_id=151655,
    ),
    # Seconds to build and run; keeps the real vocabulary so the real special-token ids work.
    "qwen2-vl-tiny": ModelConfig(
        vision=VisionConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_ratio=2, out_hidden_size=64),
        text=TextConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                        vocab_size=151936, rope_theta=1_000_000.0, max_position_embeddings=8192,
                        mrope_section=(2, 3, 3)),
        image_token_id=151655,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Weights: canonical name -> stored name(s) in the hub's original naming; transformers 5's names are
# folded onto it first (stored_name).

_VL = "visual.blocks.{i}."
TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vision.embed.patch.weight", ("visual.patch_embed.proj.weight",)),
    *((f"vision.layers.{{i}}.{ours}.{k}", (_VL + f"{theirs}.{k}",)) for ours, theirs in (
        ("norm1", "norm1"), ("norm2", "norm2"), ("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"),
        ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")) for k in ("weight", "bias")),
    *((f"projector.{ours}.{k}", (f"visual.merger.{theirs}.{k}",)) for ours, theirs in (
        ("norm", "ln_q"), ("fc1", "mlp.0"), ("fc2", "mlp.2")) for k in ("weight", "bias")),
    *text_rows("model.", "lm_head.weight"),
)  # fmt: skip
HF_PREFIX_ALIASES = (("model.visual.", "visual."), ("model.language_model.", "model."))


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, for every tensor the config implies."""
    v, d = cfg.vision, cfg.vision.hidden_size
    merged = d * v.merge_size**2
    vision_layer = {
        "norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
        "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
        "mlp.fc1.weight": (v.intermediate_size, d), "mlp.fc1.bias": (v.intermediate_size,),
        "mlp.fc2.weight": (d, v.intermediate_size), "mlp.fc2.bias": (d,),
    }  # fmt: skip
    vision = {
        "vision.embed.patch.weight": (d, 3, v.temporal_patch_size, v.patch_size, v.patch_size),
        "projector.norm.weight": (d,), "projector.norm.bias": (d,), "projector.fc1.weight": (merged, merged),
        "projector.fc1.bias": (merged,), "projector.fc2.weight": (cfg.text.hidden_size, merged),
        "projector.fc2.bias": (cfg.text.hidden_size,),
    }  # fmt: skip
    return vision | per_layer("vision.layers", v.num_layers, vision_layer) | text_shapes(cfg.text)


def source_names(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Canonical name -> stored name(s), for every expected tensor."""
    return table_sources(TABLE, expected_shapes(cfg), {"vision": cfg.vision.num_layers, "llm": cfg.text.num_layers})


def stored_name(name: str, cfg: ModelConfig) -> str:
    """A tensor name as stored, folded onto the original naming (transformers 5 adds prefixes)."""
    return fold_prefixes(name, HF_PREFIX_ALIASES)


def tolerated_names(cfg: ModelConfig) -> set[str]:
    """Stored tensors that may be present without being used (a tied head some savers write anyway)."""
    return {"lm_head.weight"} if cfg.text.tie_word_embeddings else set()


def describe(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Lines of `edgevlm info` about what is specific to this family."""
    v = cfg.vision
    return [("vision", f"ViT with 2-D rotary, {v.num_layers} layers, hidden {v.hidden_size}, {v.num_heads} heads, "
                       f"{v.patch_size}px patches merged {v.merge_size}x{v.merge_size}"),
            ("images", f"{cfg.min_pixels:,}..{cfg.max_pixels:,} pixels, one token per {cfg.factor}x{cfg.factor} px; "
                       f"M-RoPE sections {list(cfg.text.mrope_section)}")]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Prompt format: Qwen2-VL-Instruct's chat template (ChatML, a default system message, each image as
# <|vision_start|> + one <|image_pad|> per merged cell + <|vision_end|>).

TEMPLATES: dict[str, Template] = {
    "qwen2_vl": Template(
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
        default_system="You are a helpful assistant.",
        single_image="{image}",
        multi_image="{image}",
        stop=("<|im_end|>",),
    ),
}
IMAGE_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
VIDEO_PAD = "<|video_pad|>"
ADDED_TOKENS: tuple[tuple[str, bool], ...] = ()  # Qwen2-VL checkpoints ship tokenizer.json


def prompt_format(cfg: ModelConfig) -> PromptFormat:
    if cfg.template not in TEMPLATES:
        raise ConfigError(f"template '{cfg.template}' is not supported (known: {', '.join(TEMPLATES)})")
    start, pad, end = IMAGE_TOKENS

    def image_text(layout: ImageLayout) -> str:  # one pad per merged cell: the grid counts them
        cols, rows = layout.grid
        return start + pad * (cols * rows) + end

    def video_text(video: VideoLayout) -> str:  # one video pad per merged cell of each pair of frames
        cols, rows = video.grid
        return start + VIDEO_PAD * (video.groups * cols * rows) + end

    return PromptFormat(TEMPLATES[cfg.template], start, pad, end, ("<|im_start|>", "<|im_end|>", *IMAGE_TOKENS),
                        image_text, video_text, VIDEO_PAD)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Image processing, as transformers' Qwen2VLImageProcessor (PIL backend): resized (bicubic) to sides
# that are multiples of 28 with a pixel count within [min_pixels, max_pixels], normalised, then cut
# into 14 px patches ordered by 2 x 2 merge groups, each repeated over the 2 frames of a still image.


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): multiples of `factor` near the image's, with the pixel count within bounds."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageError(f"{width}x{height} is more elongated than {MAX_ASPECT}:1, which the model cannot take")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(pixels: np.ndarray, patch: int, merge: int, frames: int) -> np.ndarray:
    """[3,H,W] (a still image, repeated over `frames`) or [frames,3,H,W] -> [H/patch * W/patch,
    3*frames*patch*patch], patches in merge-group order, each patch's values by channel, frame, row, column."""
    x = np.broadcast_to(pixels, (frames, *pixels.shape)) if pixels.ndim == 3 else pixels
    _, c, height, width = x.shape
    gh, gw = height // patch, width // patch
    x = x.reshape(frames, c, gh // merge, merge, patch, gw // merge, merge, patch).transpose(2, 5, 3, 6, 1, 0, 4, 7)
    return np.ascontiguousarray(x.reshape(gh * gw, c * frames * patch * patch))


@dataclass(frozen=True)
class Patching:
    """How a Qwen2-VL model wants its images: pixel bounds, patch and merge sizes, normalisation."""

    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    patch: int = 14
    merge: int = 2
    frame_group: int = 2  # temporal_patch_size: video frames per vision run; a still image is repeated over it
    resample: int = BICUBIC
    norm: Norm = CLIP
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS
    video_fps: float = VIDEO_FPS

    @property
    def tile(self) -> int:
        return self.patch * self.merge

    def capped(self, max_tiles: int | None, max_pixels: int | None = None) -> Patching:
        """Images resized to at most `max_pixels` (one token per 28 x 28 px, at least one): the model's own
        bound, lowered, never raised. (Every image is one tile, so `max_tiles` does not apply.)"""
        if max_pixels is None or max_pixels >= self.max_pixels:
            return self
        budget = max(max_pixels, self.tile**2)
        return replace(self, max_pixels=budget, min_pixels=min(self.min_pixels, budget),
                       video_max_pixels=min(self.video_max_pixels, budget),
                       video_min_pixels=min(self.video_min_pixels, budget))  # fmt: skip

    def patch_image(self, img: Image.Image) -> Tiles:
        """An RGB image as patches [N, 3*frames*patch*patch] and its grid (columns, rows) of merged cells:
        one image token each."""
        height, width = smart_resize(img.height, img.width, self.tile, self.min_pixels, self.max_pixels)
        pixels = normalize(img.resize((width, height), self.resample), self.norm)
        patches = patchify(pixels, self.patch, self.merge, self.frame_group)
        return Tiles(patches, (width // self.tile, height // self.tile), img.size, whole=True)

    def load(self, source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles:
        return self.patch_image(load_image(source, max_pixels=max_pixels))

    def sample(self, info: VideoInfo, sampling: FrameSampling) -> list[int]:
        """The frames of a clip, as transformers' Qwen2VLVideoProcessor samples them at `fps` (at least 4,
        at most `frames`), in whole pairs of frames (a clip of one frame: that frame)."""
        fps, pair = sampling.fps or self.video_fps, self.frame_group
        most = math.floor(min(sampling.frames or VIDEO_MAX_FRAMES, info.frames) / pair) * pair
        count = info.frames / info.fps * fps if info.fps else info.frames
        count = math.floor(min(max(count, VIDEO_MIN_FRAMES), most, info.frames) / pair) * pair
        if count < 1:
            return list(range(info.frames))
        return even_indices(0, info.frames, info.frames / count)

    def frames(self, images: list[Image.Image]) -> list[Tiles]:
        """A clip's frames as the vision encoder takes them: each resized as the video processor does, then
        paired (the last repeated to make a whole pair), each pair one run of patches."""
        width, height = images[0].size
        h, w = smart_resize(height, width, self.tile, self.video_min_pixels, self.video_max_pixels)
        pixels = [normalize(img.resize((w, h), self.resample), self.norm) for img in images]
        group = self.frame_group
        pixels += pixels[-1:] * (-len(pixels) % group)
        grid = (w // self.tile, h // self.tile)
        return [Tiles(patchify(np.stack(pixels[k : k + group]), self.patch, self.merge, group), grid, (width, height),
                      whole=True) for k in range(0, len(pixels), group)]  # fmt: skip


def tiling(cfg: ModelConfig, min_tiles: int, max_tiles: int) -> Patching:
    v = cfg.vision
    return Patching(cfg.min_pixels, cfg.max_pixels, v.patch_size, v.merge_size, v.temporal_patch_size, cfg.resample,
                    (cfg.image_mean, cfg.image_std), cfg.video_min_pixels, cfg.video_max_pixels,
                    cfg.video_fps)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Vision graph (graphs/qwen2vit.py) and its rotary tables

VISION_THETA = 10_000.0  # the vision rotary's base


def vision_rope(cols: int, rows: int, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [cols*rows, head_dim] of a grid of patches (not merged cells), patches in merge-group
    order: each head's first
    quarter of angles follows the row, the second the column, and both repeat for the second half
    (transformers' axial rotary, in its float32 arithmetic)."""
    v = cfg.vision
    m, half = v.merge_size, v.hidden_size // v.num_heads // 2
    def grouped(a: np.ndarray) -> np.ndarray:
        return a.reshape(rows // m, m, cols // m, m).transpose(0, 2, 1, 3).reshape(-1)

    rows_at, cols_at = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    inv = np.float32(1.0) / np.float32(VISION_THETA) ** (np.arange(0, half, 2, dtype=np.float32) / np.float32(half))
    freqs = np.concatenate([grouped(rows_at).astype(np.float32)[:, None] * inv,
                            grouped(cols_at).astype(np.float32)[:, None] * inv], axis=1)  # fmt: skip
    angles = np.concatenate([freqs, freqs], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def vision_inputs(cfg: ModelConfig, tiles: Tiles) -> list[dict[str, np.ndarray]]:
    """The vision graph's inputs for one image: all its patches in one run, with their rotary tables."""
    cols, rows = (n * cfg.vision.merge_size for n in tiles.grid)
    cos, sin = vision_rope(cols, rows, cfg)
    return [{"pixel_values": tiles.pixels, "rope_cos": cos, "rope_sin": sin}]


NPU_SIDE = 392  # the board demo's fixed resolution: 28 x 28 patches, 196 image tokens


def npu_tiles(cfg: ModelConfig, image: Image.Image) -> Tiles:
    """An image as the static NPU form takes it: resized to the fixed 392 x 392 (its patch count is the
    graph's); its feeds are `vision_inputs` of these, with the rotary tables of that grid."""
    side = NPU_SIDE
    fixed = replace(tiling(cfg, 1, 1), min_pixels=side * side, max_pixels=side * side)
    return fixed.patch_image(image.convert("RGB").resize((side, side), fixed.resample))


def npu_patches(cfg: ModelConfig) -> int:
    """The static NPU form's patch count (its `VisionGraphSpec.batch`)."""
    return (NPU_SIDE // cfg.vision.patch_size) ** 2


def npu_vision(cfg: ModelConfig) -> NpuVision:
    """On the NPU: one 392 x 392 image per run, as float patches and rotary tables made on the host."""
    return NpuVision(batch=npu_patches(cfg), side=NPU_SIDE, tiles=lambda image: npu_tiles(cfg, image))


def build_vision_graph(get: Callable[[str], Any], cfg: ModelConfig, path: Any, spec: Any) -> Any:
    """The ViT + PatchMerger as one ONNX graph, one image per run (graphs/qwen2vit.py)."""
    from ..graphs.qwen2vit import build_vision_graph as build

    return build(get, cfg, path, spec)
