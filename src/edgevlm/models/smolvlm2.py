"""SmolVLM2 (SigLIP + pixel-shuffle connector + SmolLM2/Llama): everything specific to this family:
config, weight table, image processing (longest-edge resize, tiles plus a global image), prompt format,
vision graph. Checkpoints: transformers' `SmolVLMForConditionalGeneration` (model_type `smolvlm`),
the `-Instruct` and `-Video-Instruct` releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..config import ConfigError, TextConfig, check_image_fields, scalar, section, text_config, validate
from ..image import DEFAULT_MAX_PIXELS, ImageSource, Norm, Tiles, load_image, normalize, tile_cap
from ..prompt import ImageLayout, PromptFormat, Template, VideoLayout
from ..video import FrameSampling, VideoInfo
from .npu import one_tile_per_run, run_per_tile
from .weights import per_layer, table_sources, text_rows, text_shapes

NAME = "smolvlm2"
MAX_IMAGE_SIDE = 4096  # transformers' cap on the resized image's longest side
HALF: Norm = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SmolVLM's mean and std
LANCZOS = int(Image.Resampling.LANCZOS)  # the processor's `resample` (PIL's numbering)
GELUS = {"gelu_pytorch_tanh": True, "gelu": False}  # hidden_act -> tanh approximation?


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP encoder dimensions (transformers' SmolVLMVisionConfig; its defaults where a key is absent)."""

    hidden_size: int = 1152
    num_layers: int = 12
    num_heads: int = 16
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 32
    layer_norm_eps: float = 1e-6
    gelu_tanh: bool = True

    def __post_init__(self) -> None:
        validate(self, "vision_config.")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision_config.hidden_size {self.hidden_size} is not a multiple of "
                              f"num_attention_heads {self.num_heads}")  # fmt: skip
        if self.patch_size > self.image_size:
            raise ConfigError(f"vision_config.patch_size {self.patch_size} is larger than image_size {self.image_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:
        """Patches per side of one tile (the convolution drops a remainder, as 384 px / 14 does)."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ModelConfig:
    """One SmolVLM2 model: its encoders and how its processor cuts images."""

    family: ClassVar[str] = NAME

    vision: VisionConfig
    text: TextConfig
    scale_factor: int = 4
    image_token_id: int | None = None
    longest_edge: int = 2048  # the processor's size.longest_edge: an image is resized to this first
    splitting: bool = True  # do_image_splitting
    resample: int = LANCZOS
    image_mean: tuple[float, float, float] = HALF[0]
    image_std: tuple[float, float, float] = HALF[1]
    template: str = "smolvlm"
    # The processor's video_sampling: frames per second, at most this many, each resized to video_edge
    # (longest side; None: one tile) and then to one tile.
    video_fps: float = 1.0
    video_max_frames: int = 64
    video_edge: int | None = None

    def __post_init__(self) -> None:
        validate(self, "")
        grid = self.vision.grid
        if grid % self.scale_factor:
            raise ConfigError(f"scale_factor {self.scale_factor} does not divide the {grid} patches per side of a "
                              "tile into whole groups")  # fmt: skip
        if self.longest_edge < self.tile_size:
            raise ConfigError(f"size.longest_edge {self.longest_edge} is smaller than a tile ({self.tile_size})")
        if self.resample not in {int(r) for r in Image.Resampling}:
            raise ConfigError(f"preprocessor_config.json: resample {self.resample!r} is not a PIL filter")
        check_image_fields(self)

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile becomes (64 for the 256M/500M's 512 px tiles, 81 for 2.2B's 384 px)."""
        return (self.vision.grid // self.scale_factor) ** 2

    @property
    def projector_in(self) -> int:
        return self.vision.hidden_size * self.scale_factor**2

    @property
    def tile_size(self) -> int:
        return self.vision.image_size

    @property
    def max_side(self) -> int:
        """Tiles per side at most: the longest edge over the tile size, rounded up."""
        return math.ceil(self.longest_edge / self.tile_size)

    @property
    def min_tiles(self) -> int:
        return 1

    @property
    def max_tiles(self) -> int:
        return self.max_side**2 + 1 if self.splitting else 1

    @property
    def use_thumbnail(self) -> bool:
        return True  # the global image

    @property
    def label(self) -> str:
        return NAME



# --------------------------------------------------------------------------------------------
# Reading config.json (and preprocessor_config.json)


def _vision_config(v: Mapping[str, Any]) -> VisionConfig:
    act = v.get("hidden_act", "gelu_pytorch_tanh")
    if act not in GELUS:
        raise ConfigError(f"config.json: vision_config.hidden_act '{act}' is not supported ({', '.join(GELUS)})")
    known = {f: v[k] for f, k in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                                  ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"),
                                  ("layer_norm_eps", "layer_norm_eps")) if v.get(k) is not None}  # fmt: skip
    for key in ("image_size", "patch_size"):
        if v.get(key) is not None:
            known[key] = scalar(v[key])
    return VisionConfig(**known, gelu_tanh=GELUS[act])


def _edge(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or "longest_edge" not in value:
        raise ConfigError(f"preprocessor_config.json: {key} must be {{'longest_edge': N}}, got {value!r:.80}")
    return value["longest_edge"]


def _processing(pre: Mapping[str, Any], v: Mapping[str, Any], tile: int) -> dict[str, Any]:
    """The processor's resize and split settings (preprocessor_config.json, else the vision config's copy)."""
    side = _edge(pre, "max_image_size") or _edge(v, "max_image_size") or tile
    if side != tile:
        raise ConfigError(f"preprocessor_config.json: max_image_size {side} differs from the encoder's image_size "
                          f"{tile}")  # fmt: skip
    if pre.get("do_resize") is False:
        raise ConfigError("preprocessor_config.json: do_resize false is not supported")
    out: dict[str, Any] = {"longest_edge": _edge(pre, "size") or _edge(v, "size") or 4 * tile}
    for key, name in (("do_image_splitting", "splitting"), ("resample", "resample")):
        if key in pre:
            out[name] = pre[key]
    for key in ("image_mean", "image_std"):
        if key in pre:
            out[key] = tuple(pre[key]) if isinstance(pre[key], list) else pre[key]
    return out | _video_sampling(pre)


def _video_sampling(pre: Mapping[str, Any]) -> dict[str, Any]:
    """preprocessor_config.json's video_sampling: {fps, max_frames, video_size: {longest_edge}}."""
    v = pre.get("video_sampling")
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"preprocessor_config.json: video_sampling must be an object, got {v!r:.80}")
    out = {name: v[key] for name, key in (("video_fps", "fps"), ("video_max_frames", "max_frames")) if key in v}
    if (edge := _edge(v, "video_size")) is not None:
        out["video_edge"] = edge
    return out


def _parse(raw: Mapping[str, Any], pre: Mapping[str, Any]) -> ModelConfig:
    v = section(raw, "vision_config", "")
    vision = _vision_config(v)
    t = section(raw, "text_config", "")
    text = text_config(t, "text_config.", qkv_bias=False)
    if "tie_word_embeddings" not in t:
        text = replace(text, tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)))
    if "rms_norm_eps" not in t:  # transformers builds SmolVLM's text config with 1e-5
        text = replace(text, rms_norm_eps=1e-5)
    return ModelConfig(vision=vision, text=text, scale_factor=raw.get("scale_factor", 2),
                       image_token_id=raw.get("image_token_id"),
                       **_processing(pre, v, vision.image_size))  # fmt: skip


PARSERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], ModelConfig]] = {
    "SmolVLMForConditionalGeneration": _parse,
}
NOT_YET: dict[str, str] = {}  # command -> why it cannot take this family yet
MODEL_TYPES = {"smolvlm": "SmolVLMForConditionalGeneration"}




# --------------------------------------------------------------------------------------------
# Presets: the real models' dimensions (SmolVLM2-256M/500M share a SigLIP-base at 512 px; 2.2B uses
# SigLIP so400m at 384 px), for tests and benchmarks.

_SIGLIP_B = VisionConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, image_size=512,
                         patch_size=16)  # fmt: skip
_SIGLIP_SO400M = VisionConfig(hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304, image_size=384,
                              patch_size=14)  # fmt: skip
_VOCAB = 49280  # SmolLM2's 49152 and SmolVLM's 128 added tokens


def _smollm2(hidden: int, layers: int, heads: int, kv: int, ffn: int, theta: float = 100_000.0) -> TextConfig:
    return TextConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv, intermediate_size=ffn,
                      vocab_size=_VOCAB, rope_theta=theta, rms_norm_eps=1e-5, max_position_embeddings=8192,
                      tie_word_embeddings=False, qkv_bias=False)  # fmt: skip


PRESETS: dict[str, ModelConfig] = {
    "smolvlm2-256m": ModelConfig(vision=_SIGLIP_B, text=_smollm2(576, 30, 9, 3, 1536), image_token_id=49190),
    "smolvlm2-500m": ModelConfig(vision=_SIGLIP_B, text=_smollm2(960, 32, 15, 5, 2560), image_token_id=49190),
    "smolvlm2-2.2b": ModelConfig(vision=_SIGLIP_SO400M, text=_smollm2(2048, 24, 32, 32, 8192, 130_000.0),
                                 scale_factor=3, image_token_id=49190, longest_edge=1536),
    # Seconds to build and run; odd sizes on purpose (a 96 px tile of 16 px patches, 3 x 3 tokens).
    "smolvlm2-tiny": ModelConfig(
        vision=VisionConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, image_size=96,
                            patch_size=16),
        text=TextConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                        vocab_size=_VOCAB, rope_theta=100_000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                        qkv_bias=False),
        scale_factor=2, image_token_id=49190, longest_edge=288,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Weights: canonical name -> stored name(s); several are concatenated along axis 0 (q, k, v).

_VL = "model.vision_model.encoder.layers.{i}."
TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vision.embed.patch.weight", ("model.vision_model.embeddings.patch_embedding.weight",)),
    ("vision.embed.patch.bias", ("model.vision_model.embeddings.patch_embedding.bias",)),
    ("vision.embed.pos", ("model.vision_model.embeddings.position_embedding.weight",)),
    ("vision.layers.{i}.norm1.weight", (_VL + "layer_norm1.weight",)),
    ("vision.layers.{i}.norm1.bias", (_VL + "layer_norm1.bias",)),
    ("vision.layers.{i}.attn.qkv.weight", tuple(_VL + f"self_attn.{p}_proj.weight" for p in "qkv")),
    ("vision.layers.{i}.attn.qkv.bias", tuple(_VL + f"self_attn.{p}_proj.bias" for p in "qkv")),
    ("vision.layers.{i}.attn.proj.weight", (_VL + "self_attn.out_proj.weight",)),
    ("vision.layers.{i}.attn.proj.bias", (_VL + "self_attn.out_proj.bias",)),
    ("vision.layers.{i}.norm2.weight", (_VL + "layer_norm2.weight",)),
    ("vision.layers.{i}.norm2.bias", (_VL + "layer_norm2.bias",)),
    *((f"vision.layers.{{i}}.mlp.{fc}.{k}", (_VL + f"mlp.{fc}.{k}",))
      for fc in ("fc1", "fc2") for k in ("weight", "bias")),
    ("vision.post_norm.weight", ("model.vision_model.post_layernorm.weight",)),
    ("vision.post_norm.bias", ("model.vision_model.post_layernorm.bias",)),
    ("projector.weight", ("model.connector.modality_projection.proj.weight",)),
    *text_rows("model.text_model.", "lm_head.weight"),
)  # fmt: skip


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, for every tensor the config implies."""
    v, d = cfg.vision, cfg.vision.hidden_size
    vision_layer = {
        "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
        "mlp.fc1.weight": (v.intermediate_size, d), "mlp.fc1.bias": (v.intermediate_size,),
        "mlp.fc2.weight": (d, v.intermediate_size), "mlp.fc2.bias": (d,),
    }  # fmt: skip
    vision = {
        "vision.embed.patch.weight": (d, 3, v.patch_size, v.patch_size), "vision.embed.patch.bias": (d,),
        "vision.embed.pos": (v.grid * v.grid, d), "vision.post_norm.weight": (d,), "vision.post_norm.bias": (d,),
        "projector.weight": (cfg.text.hidden_size, cfg.projector_in),
    }  # fmt: skip
    return vision | per_layer("vision.layers", v.num_layers, vision_layer) | text_shapes(cfg.text)


def source_names(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Canonical name -> stored name(s), for every expected tensor."""
    return table_sources(TABLE, expected_shapes(cfg), {"vision": cfg.vision.num_layers, "llm": cfg.text.num_layers})


def stored_name(name: str, cfg: ModelConfig) -> str:
    return name


def tolerated_names(cfg: ModelConfig) -> set[str]:
    """Stored tensors that may be present without being used (a tied head some savers write anyway)."""
    return {"lm_head.weight"} if cfg.text.tie_word_embeddings else set()


def describe(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Lines of `edgevlm info` about what is specific to this family."""
    v = cfg.vision
    split = f"up to {cfg.max_side} x {cfg.max_side} tiles + a global image" if cfg.splitting else "one tile"
    return [("vision", f"SigLIP, {v.num_layers} layers, hidden {v.hidden_size}, {v.num_heads} heads, "
                       f"{v.image_size}px tiles of {cfg.tokens_per_tile} tokens"),
            ("images", f"longest edge {cfg.longest_edge}px, {split}")]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Prompt format: the checkpoints' chat template (`<|im_start|>` once, then `User:` / `Assistant:` turns
# ending in `<end_of_utterance>`), images as transformers' SmolVLMProcessor expands `<image>`.

TEMPLATES: dict[str, Template] = {
    "smolvlm": Template(
        system=("System: ", "<end_of_utterance>\n"),
        user=("User:", "<end_of_utterance>\n"),
        assistant=("Assistant:", "<end_of_utterance>\n"),
        default_system=None,
        single_image="{image}",
        multi_image="{image}",
        stop=("<end_of_utterance>",),
        begin="<|im_start|>",
        no_image=" ",  # "User: question", but "User:<image>question" (a video comes after "User: ")
        answer_prefix=" ",
    ),
}
FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
ADDED_TOKENS: tuple[tuple[str, bool], ...] = ()  # SmolVLM2 checkpoints ship tokenizer.json


def _tile_tag(row: int, col: int) -> str:
    return f"<row_{row}_col_{col}>"


_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """A count in English words as num2words writes it ("sixty-four", "one hundred and five"): how the
    processor says how many frames a video has."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" and " + number_words(n % 100) if n % 100 else "")
    if n < 1_000_000:
        rest = n % 1000
        joint = ", " if rest >= 100 else " and "
        return number_words(n // 1000) + " thousand" + (joint + number_words(rest) if rest else "")
    raise ValueError(f"{n} frames is more than a video can have here")


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def prompt_format(cfg: ModelConfig) -> PromptFormat:
    if cfg.template not in TEMPLATES:
        raise ConfigError(f"template '{cfg.template}' is not supported (known: {', '.join(TEMPLATES)})")
    rows = IMAGE * cfg.tokens_per_tile

    def image_text(layout: ImageLayout) -> str:
        whole = FAKE + GLOBAL + rows + FAKE
        if layout.tiles == 1:
            return whole
        cols, n_rows = layout.grid
        grid = "".join("".join(FAKE + _tile_tag(r, c) + rows for c in range(1, cols + 1)) + "\n"
                       for r in range(1, n_rows + 1))  # fmt: skip
        return grid + "\n" + whole

    def video_text(video: VideoLayout) -> str:  # transformers' SmolVLMProcessor: an intro, each frame timed
        duration = str(timedelta(seconds=int(video.duration)))
        text = (f"You are provided the following series of {number_words(video.frames)} frames from a {duration} "
                "[H:MM:SS] video.\n")  # fmt: skip
        frame = image_text(ImageLayout(1))
        return text + "".join(f"\nFrame from {_clock(t)}:{frame}" for t in video.times) + "\n\n"

    side = range(1, cfg.max_side + 1)
    tags = (_tile_tag(r, c) for r in side for c in side)
    controls = ("<|im_start|>", "<end_of_utterance>", FAKE, GLOBAL, IMAGE, *tags)
    return PromptFormat(TEMPLATES[cfg.template], FAKE + GLOBAL, IMAGE, FAKE, controls, image_text, video_text)


# --------------------------------------------------------------------------------------------
# Image processing, as transformers' SmolVLMImageProcessor (PIL backend) does it: the longest edge
# resized to `longest_edge`, then both sides up to multiples of the tile, cut into rows x cols tiles,
# and the whole image resized to one tile last. Without splitting: only that one tile.


def _fit(width: int, height: int, longest: int) -> tuple[int, int]:
    """The longest edge to `longest` (even short side, as the reference rounds), then under 4096."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    width, height = max(width, 1), max(height, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIDE:
        width, height = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE / aspect)
    elif height > width and height > MAX_IMAGE_SIDE:
        height, width = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE * aspect)
    return max(width, 1), max(height, 1)


def _to_tiles(width: int, height: int, tile: int) -> tuple[int, int]:
    """Both sides rounded up to multiples of the tile, keeping the aspect ratio as the reference does."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return width, height


@dataclass(frozen=True)
class Splitting:
    """How a SmolVLM2 model wants its images cut (its processor's settings), capped per request."""

    tile: int
    longest_edge: int
    splitting: bool = True
    max_tiles: int = 17
    resample: int = LANCZOS
    norm: Norm = HALF
    video_fps: float = 1.0
    video_max_frames: int = 64
    video_edge: int | None = None  # a frame's longest side before it is resized to one tile (None: a tile)
    frame_group: ClassVar[int] = 1  # video frames per vision run

    def capped(self, max_tiles: int | None, max_pixels: int | None = None) -> Splitting:
        """At most `max_tiles` tiles (and no more than `max_pixels` of them in area): each image is then
        resized to the largest edge (a multiple of the tile) that keeps within it; one tile means no
        splitting."""
        max_tiles = tile_cap(max_tiles, max_pixels, self.tile)
        if not max_tiles or max_tiles >= self.max_tiles:
            return self
        if max_tiles < 1:
            raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
        return replace(self, max_tiles=max_tiles, splitting=self.splitting and max_tiles > 1)

    def _edges(self) -> list[int]:
        """The longest edge to try, largest first: the model's, then smaller whole numbers of tiles."""
        below = range(math.ceil(self.longest_edge / self.tile) - 1, 0, -1)
        return [self.longest_edge] + [k * self.tile for k in below]

    def grid(self, width: int, height: int) -> tuple[int, tuple[int, int]]:
        """The longest edge used for an image of this size and the (columns, rows) it is cut into."""
        for edge in self._edges():
            w, h = _to_tiles(*_fit(width, height, edge), self.tile)
            cols, rows = w // self.tile, h // self.tile
            if cols * rows == 1 or cols * rows + 1 <= self.max_tiles:  # one tile has no global image
                return edge, (cols, rows)
        raise AssertionError("an edge of one tile always fits")

    def tile_image(self, img: Image.Image) -> Tiles:
        """An RGB image as tiles [N,3,T,T] (row-major, the global image last) and its grid."""
        t, f = self.tile, self.resample
        if not self.splitting:
            resized = img.resize(_fit(*img.size, self.longest_edge), f)
            return Tiles(normalize(resized.resize((t, t), f), self.norm)[None], (1, 1), img.size)
        edge, (cols, rows) = self.grid(*img.size)
        canvas = img.resize(_fit(*img.size, edge), f).resize((cols * t, rows * t), f)
        if cols == rows == 1:
            return Tiles(normalize(canvas, self.norm)[None], (1, 1), img.size)
        pixels = normalize(canvas, self.norm)
        tiles = pixels.reshape(3, rows, t, cols, t).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)
        whole = normalize(canvas.resize((t, t), f), self.norm)[None]
        return Tiles(np.ascontiguousarray(np.concatenate([tiles, whole])), (cols, rows), img.size)

    def load(self, source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tiles:
        return self.tile_image(load_image(source, max_pixels=max_pixels))

    def sample(self, info: VideoInfo, sampling: FrameSampling) -> list[int]:
        """The frames of a clip, as transformers' SmolVLMVideoProcessor samples them: `fps` per second, at
        most `frames`, evenly from end to end; a second is skipped at each end of a clip long enough."""
        most = sampling.frames or self.video_max_frames
        fps = sampling.fps or self.video_fps
        wanted = max(1, min(round(fps * info.duration), most))
        start, end = 0, info.frames - 1
        if info.duration - 2 > most * fps:  # one second off each end
            start, end = int(info.fps), int(info.frames - info.fps)
        start, end = max(0, start), min(end, info.frames - 1)
        if start >= end:
            start, end = 0, info.frames - 1
        return sorted({int(i) for i in np.linspace(start, end, wanted, dtype=int)})

    def frames(self, images: list[Image.Image]) -> list[Tiles]:
        """A clip's frames as the vision encoder takes them: each resized to the video size and then to one
        tile, never split."""
        whole = replace(self, splitting=False, longest_edge=self.video_edge or self.tile)
        return [whole.tile_image(img) for img in images]


def tiling(cfg: ModelConfig, min_tiles: int, max_tiles: int) -> Splitting:
    """The model's processor settings with at most `max_tiles` tiles (min_tiles does not apply)."""
    whole = Splitting(cfg.tile_size, cfg.longest_edge, cfg.splitting, cfg.max_tiles, cfg.resample,
                      (cfg.image_mean, cfg.image_std), cfg.video_fps, cfg.video_max_frames, cfg.video_edge)  # fmt: skip
    return whole.capped(max_tiles)


# --------------------------------------------------------------------------------------------
# Vision graph


npu_vision = one_tile_per_run  # on the NPU: one tile per run, fed as a uint8 image
vision_inputs = run_per_tile  # on the CPU: a run per tile


def build_vision_graph(get: Callable[[str], Any], cfg: ModelConfig, path: Any, spec: Any) -> Any:
    """SigLIP + pixel shuffle + projection as one ONNX graph (graphs/siglip.py)."""
    from ..graphs.siglip import build_vision_graph as build

    return build(get, cfg, path, spec)
