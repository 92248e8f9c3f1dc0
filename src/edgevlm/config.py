"""Configuration shared by every model family: the language model's dimensions and decoder flags
(`TextConfig`), the checks every config dataclass runs, and helpers to read config.json.

What is specific to a family (its vision encoder, image processing, naming) lives in its module
under `edgevlm.models`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """config.json is missing a key, has a bad value, or describes an unsupported model."""


def is_whole(value: object, minimum: float = 0) -> bool:
    """A whole number (JSON's true/false are not) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate(obj: object, where: str) -> None:
    """Every field of a config dataclass has its declared type, and counts and sizes are positive:
    a config from a file (checkpoint or manifest) fails here, naming the key, not later in a graph."""
    for f in fields(obj):  # type: ignore[arg-type]
        value, kind = getattr(obj, f.name), str(f.type)
        if kind == "int" and not is_whole(value, minimum=-math.inf):  # the sign is checked below
            raise ConfigError(f"{where}{f.name} must be a whole number, got {value!r}")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not math.isfinite(value)):  # fmt: skip
            raise ConfigError(f"{where}{f.name} must be a finite number, got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}{f.name} must be true or false, got {value!r}")
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{where}{f.name} must be a string, got {value!r}")
        if kind in ("int", "float") and f.name in POSITIVE and value <= 0:
            raise ConfigError(f"{where}{f.name} must be positive, got {value!r}")


def check_image_fields(cfg: Any) -> None:
    """What every family's config has alike: a mean and a positive std of three numbers each, and an
    image token id that is a token id where one is given."""
    for name in ("image_mean", "image_std"):
        value = getattr(cfg, name)
        if not (isinstance(value, tuple) and len(value) == 3 and all(_finite(x) for x in value)):
            raise ConfigError(f"{name} must be three numbers, got {value!r}")
    if min(cfg.image_std) <= 0:
        raise ConfigError(f"image_std must be positive, got {cfg.image_std}")
    if cfg.image_token_id is not None and not is_whole(cfg.image_token_id):
        raise ConfigError(f"image_token_id must be a token id, got {cfg.image_token_id!r}")


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def divides(where: str, a: str, av: int, b: str, bv: int) -> None:
    if av % bv:
        raise ConfigError(f"{where}{a} {av} is not a multiple of {b} {bv}")


POSITIVE = {
    "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size", "image_size",
    "patch_size", "layer_norm_eps", "rms_norm_eps", "rope_theta", "max_position_embeddings", "downsample_ratio",
    "min_dynamic_patch", "max_dynamic_patch", "scale_factor", "longest_edge",
}  # fmt: skip


@dataclass(frozen=True)
class TextConfig:
    """The language model's dimensions and the flags of the shared decoder graph (any family's text model:
    Qwen2, Llama)."""

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
    qkv_bias: bool = True  # Qwen2 has q/k/v biases, Llama none
    mrope_section: tuple[int, ...] = ()  # M-RoPE: rotary pairs turned by time, height, width positions

    def __post_init__(self) -> None:
        where = "text_config."
        validate(self, where)
        divides(where, "hidden_size", self.hidden_size, "num_attention_heads", self.num_heads)
        divides(where, "num_attention_heads", self.num_heads, "num_key_value_heads", self.num_kv_heads)
        sections = self.mrope_section
        if sections and (not all(is_whole(n, 1) for n in sections) or sum(sections) != self.head_dim // 2):
            raise ConfigError(f"mrope_section {list(sections)} must be counts adding up to half the head size "
                              f"({self.head_dim // 2})")  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# --------------------------------------------------------------------------------------------
# Reading config.json


def get_key(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"config.json: missing required key '{where}{key}'")
    return d[key]


def section(d: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> Mapping[str, Any]:
    """A nested object of config.json ({} when optional and absent)."""
    value = get_key(d, key, where) if required else (d.get(key) or {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"config.json: '{where}{key}' must be an object, got {type(value).__name__}")
    return value


def scalar(value: Any) -> int:
    """image_size / patch_size are an int in the original naming and a pair in -hf."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"config.json: non-square size {value} is not supported")
        return value[0]
    return value


def rope_theta(text: Mapping[str, Any]) -> float:
    # transformers 5 nests it under rope_parameters; older configs keep it at the top.
    params = section(text, "rope_parameters", "", required=False)
    theta = params.get("rope_theta", text.get("rope_theta", 10000.0))
    scaling = section(text, "rope_scaling", "", required=False)
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in ("default", None):
        raise ConfigError(f"config.json: rope type '{kind}' is not supported")
    return theta


def text_config(t: Mapping[str, Any], where: str, *, qkv_bias: bool) -> TextConfig:
    """The text model's section of config.json (Qwen2 and Llama keys); `qkv_bias` is the family's."""
    heads = get_key(t, "num_attention_heads", where)
    return TextConfig(
        hidden_size=get_key(t, "hidden_size", where),
        num_layers=get_key(t, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=t.get("num_key_value_heads") or heads,
        intermediate_size=get_key(t, "intermediate_size", where),
        vocab_size=get_key(t, "vocab_size", where),
        rope_theta=rope_theta(t),
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        max_position_embeddings=t.get("max_position_embeddings", 32768),
        tie_word_embeddings=t.get("tie_word_embeddings", False),
        qkv_bias=t.get("attention_bias", qkv_bias),
    )


def read_config_json(path: str | Path) -> dict[str, Any]:
    """The object in a checkpoint folder's config.json (or the file itself)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no config.json (is this a checkpoint folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return raw
