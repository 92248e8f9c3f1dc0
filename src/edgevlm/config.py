"""Typed model configuration read from a checkpoint's config.json.

Two namings exist for the same InternVL3 model: OpenGVLab's original (`InternVLChatModel`, keys
`llm_config`, `max_dynamic_patch`, ...) and transformers' `-hf` (`InternVLForConditionalGeneration`,
keys `text_config`, `image_token_id`, ...). Both parse to one `ModelConfig`; a PARSERS table picks the
reader by architecture, so adding a naming is a table row, not another branch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

IMAGE_TOKEN_ID = 151667  # <IMG_CONTEXT> in every InternVL3 tokenizer


class ConfigError(ValueError):
    """config.json is missing a key, has a bad value, or describes an unsupported model."""


def _validate(obj: object, where: str) -> None:
    """Every field of a config dataclass has its declared type, and counts and sizes are positive:
    a config from a file (checkpoint or manifest) fails here, naming the key, not later in a graph."""
    for f in fields(obj):  # type: ignore[arg-type]
        value, kind = getattr(obj, f.name), str(f.type)
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}{f.name} must be a whole number, got {value!r}")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not math.isfinite(value)):  # fmt: skip
            raise ConfigError(f"{where}{f.name} must be a finite number, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}{f.name} must be true or false, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{where}{f.name} must be a string, got {value!r}")
        if kind in ("int", "float") and f.name in _POSITIVE and value <= 0:
            raise ConfigError(f"{where}{f.name} must be positive, got {value!r}")


def _divides(where: str, a: str, av: int, b: str, bv: int) -> None:
    if av % bv:
        raise ConfigError(f"{where}{a} {av} is not a multiple of {b} {bv}")


_POSITIVE = {
    "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size", "image_size",
    "patch_size", "layer_norm_eps", "rms_norm_eps", "rope_theta", "max_position_embeddings", "downsample_ratio",
    "min_dynamic_patch", "max_dynamic_patch",
}  # fmt: skip


@dataclass(frozen=True)
class VisionConfig:
    """InternViT encoder dimensions."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    image_size: int = 448
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    select_layer: int = -1

    def __post_init__(self) -> None:
        where = "vision_config."
        _validate(self, where)
        _divides(where, "hidden_size", self.hidden_size, "num_attention_heads", self.num_heads)
        _divides(where, "image_size", self.image_size, "patch_size", self.patch_size)
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
class TextConfig:
    """Qwen2 language model dimensions."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        where = "text_config."
        _validate(self, where)
        _divides(where, "hidden_size", self.hidden_size, "num_attention_heads", self.num_heads)
        _divides(where, "num_attention_heads", self.num_heads, "num_key_value_heads", self.num_kv_heads)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    """One InternVL3 model, whichever naming its checkpoint uses."""

    vision: VisionConfig
    text: TextConfig
    naming: str = "hf"  # "original" or "hf": the checkpoint's tensor naming
    downsample_ratio: float = 0.5
    image_token_id: int = IMAGE_TOKEN_ID
    template: str = "internvl2_5"
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    ps_version: str = "v2"

    def __post_init__(self) -> None:
        _validate(self, "")
        if self.downsample_ratio > 1 or (self.vision.grid * self.downsample_ratio) % 1:
            raise ConfigError(f"downsample_ratio {self.downsample_ratio} does not divide the {self.vision.grid} "
                              "patches per side of a tile")  # fmt: skip
        if self.min_dynamic_patch > self.max_dynamic_patch:
            raise ConfigError(f"min_dynamic_patch {self.min_dynamic_patch} > max_dynamic_patch "
                              f"{self.max_dynamic_patch}")  # fmt: skip
        if self.image_token_id < 0:
            raise ConfigError(f"image_token_id must not be negative, got {self.image_token_id}")

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one 448 px tile becomes after pixel shuffle (256 for InternVL3)."""
        side = int(self.vision.grid * self.downsample_ratio)
        return side * side

    @property
    def projector_in(self) -> int:
        """Channels after pixel shuffle: hidden * (1/ratio)^2."""
        return int(self.vision.hidden_size * round(1 / self.downsample_ratio) ** 2)

    def with_naming(self, naming: str) -> ModelConfig:
        return replace(self, naming=naming)


# --------------------------------------------------------------------------------------------
# Reading config.json


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"config.json: missing required key '{where}{key}'")
    return d[key]


def _section(d: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> Mapping[str, Any]:
    """A nested object of config.json ({} when optional and absent)."""
    value = _get(d, key, where) if required else (d.get(key) or {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"config.json: '{where}{key}' must be an object, got {type(value).__name__}")
    return value


def _scalar(value: Any) -> int:
    """image_size / patch_size are an int in the original naming and a pair in -hf."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"config.json: non-square size {value} is not supported")
        return value[0]
    return value


def _rope_theta(text: Mapping[str, Any]) -> float:
    # transformers 5 nests it under rope_parameters; older configs keep it at the top.
    params = _section(text, "rope_parameters", "", required=False)
    theta = params.get("rope_theta", text.get("rope_theta", 10000.0))
    scaling = _section(text, "rope_scaling", "", required=False)
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in ("default", None):
        raise ConfigError(f"config.json: rope type '{kind}' is not supported")
    return theta


def _text_config(t: Mapping[str, Any], where: str) -> TextConfig:
    heads = _get(t, "num_attention_heads", where)
    return TextConfig(
        hidden_size=_get(t, "hidden_size", where),
        num_layers=_get(t, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=t.get("num_key_value_heads") or heads,
        intermediate_size=_get(t, "intermediate_size", where),
        vocab_size=_get(t, "vocab_size", where),
        rope_theta=_rope_theta(t),
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        max_position_embeddings=t.get("max_position_embeddings", 32768),
        tie_word_embeddings=t.get("tie_word_embeddings", False),
    )


def _vision_config(v: Mapping[str, Any], where: str, select_layer: int, *, bias_key: str) -> VisionConfig:
    if v.get("qk_normalization") or v.get("use_qk_norm"):
        raise ConfigError("config.json: vision qk normalisation (InternViT-6B) is not supported")
    if v.get("norm_type", "layer_norm") != "layer_norm":
        raise ConfigError(f"config.json: vision norm_type '{v['norm_type']}' is not supported")
    return VisionConfig(
        hidden_size=_get(v, "hidden_size", where),
        num_layers=_get(v, "num_hidden_layers", where),
        num_heads=_get(v, "num_attention_heads", where),
        intermediate_size=_get(v, "intermediate_size", where),
        image_size=_scalar(v.get("image_size", 448)),
        patch_size=_scalar(v.get("patch_size", 14)),
        layer_norm_eps=v.get("layer_norm_eps", 1e-6),
        qkv_bias=v.get(bias_key, True),
        select_layer=select_layer,
    )


def _parse_original(raw: Mapping[str, Any]) -> ModelConfig:
    vision = _vision_config(
        _section(raw, "vision_config", ""), "vision_config.", raw.get("select_layer", -1), bias_key="qkv_bias"
    )
    force = raw.get("force_image_size")
    if force is not None and force != vision.image_size:
        raise ConfigError(f"config.json: force_image_size {force} differs from the encoder's {vision.image_size}")
    ps = raw.get("ps_version", "v2")
    if ps != "v2":
        raise ConfigError(f"config.json: ps_version '{ps}' is not supported (InternVL3 uses v2)")
    return ModelConfig(
        vision=vision,
        text=_text_config(_section(raw, "llm_config", ""), "llm_config."),
        naming="original",
        downsample_ratio=raw.get("downsample_ratio", 0.5),
        template=raw.get("template", "internvl2_5"),
        min_dynamic_patch=raw.get("min_dynamic_patch", 1),
        max_dynamic_patch=raw.get("max_dynamic_patch", 12),
        use_thumbnail=raw.get("use_thumbnail", True),
        ps_version=ps,
    )


def _parse_hf(raw: Mapping[str, Any]) -> ModelConfig:
    layer = raw.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ConfigError(f"config.json: vision_feature_layer {layer!r} (several layers) is not supported")
    text = _text_config(_section(raw, "text_config", ""), "text_config.")
    if "tie_word_embeddings" in raw and "tie_word_embeddings" not in raw["text_config"]:
        text = replace(text, tie_word_embeddings=raw["tie_word_embeddings"])
    return ModelConfig(
        vision=_vision_config(_section(raw, "vision_config", ""), "vision_config.", layer, bias_key="attention_bias"),
        text=text,
        naming="hf",
        downsample_ratio=raw.get("downsample_ratio", 0.5),
        image_token_id=raw.get("image_token_id", IMAGE_TOKEN_ID),
    )


# Which reader handles which checkpoint, keyed by its declared architecture.
PARSERS: dict[str, Callable[[Mapping[str, Any]], ModelConfig]] = {
    "InternVLChatModel": _parse_original,
    "InternVLForConditionalGeneration": _parse_hf,
}
MODEL_TYPES = {"internvl_chat": "InternVLChatModel", "internvl": "InternVLForConditionalGeneration"}


def parse_config(raw: Mapping[str, Any]) -> ModelConfig:
    """Build a ModelConfig from the dict of a config.json in either naming."""
    declared = raw.get("architectures")
    archs = [a for a in declared if isinstance(a, str)] if isinstance(declared, list) else []
    kind = raw.get("model_type")
    if isinstance(kind, str) and kind in MODEL_TYPES:
        archs.append(MODEL_TYPES[kind])
    for arch in archs:
        if arch in PARSERS:
            return PARSERS[arch](raw)
    raise ConfigError(
        f"config.json: not an InternVL checkpoint (architectures {raw.get('architectures')}, "
        f"model_type {raw.get('model_type')!r}); expected one of {sorted(PARSERS)}"
    )


def load_config(path: str | Path) -> ModelConfig:
    """Read config.json from a checkpoint folder (or the file itself)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no config.json (is this a checkpoint folder?)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    try:
        return parse_config(raw)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith("config.json") else f"{file}: {e}") from None


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


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset '{name}'; choose from {sorted(PRESETS)}") from None
