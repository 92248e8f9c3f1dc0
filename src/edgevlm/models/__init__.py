"""Model families as plug-ins: one module per family, found by config.json's model_type or architectures.

A family module (like mlx-lm's `models/<arch>.py`, no base class) provides:
    NAME, MODEL_TYPES {model_type: architecture}, PARSERS {architecture: parser(raw, preprocessor)}, PRESETS,
    NOT_YET {command: why it cannot take the family yet} (empty when every command can)
    ModelConfig, VisionConfig                 (frozen dataclasses; `.vision`, and `.text` the shared TextConfig;
                                               tokens_per_tile, tile_size, min/max_tiles, image_mean/std, template)
    tiling(cfg, min_tiles, max_tiles) (the image processor; also a clip's frames: `sample`, `frames`),
    vision_inputs(cfg, tiles) (the vision graph's feeds for one image or one video unit)
    expected_shapes(cfg), source_names(cfg), stored_name(name, cfg), tolerated_names(cfg), describe(cfg)
    ADDED_TOKENS (a vocab.json tokenizer's default added tokens), prompt_format(cfg) (image and video text)
    build_vision_graph(get, cfg, path, VisionGraphSpec)
Adding a family is one module and one entry in FAMILIES.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import ConfigError, TextConfig, read_config_json

FAMILIES = {"internvl3": "InternVL3", "smolvlm2": "SmolVLM2", "qwen2_vl": "Qwen2-VL"}  # module: the name users know


def family(name: str) -> ModuleType:
    """The module of the family called `name`."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; this edgevlm knows {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def _architectures(raw: Mapping[str, Any]) -> list[str]:
    declared = raw.get("architectures")
    return [a for a in declared if isinstance(a, str)] if isinstance(declared, list) else []


def detect(raw: Mapping[str, Any]) -> tuple[ModuleType, str]:
    """The family of a config.json and the architecture to read it as."""
    kind = raw.get("model_type")
    for name in FAMILIES:
        module = family(name)
        wanted = _architectures(raw) + ([module.MODEL_TYPES[kind]] if isinstance(kind, str)
                                        and kind in module.MODEL_TYPES else [])  # fmt: skip
        for arch in wanted:
            if arch in module.PARSERS:
                return module, arch
    known = sorted(a for name in FAMILIES for a in family(name).PARSERS)
    raise ConfigError(f"config.json: not a supported model (architectures {raw.get('architectures')!r:.100}, "
                      f"model_type {kind!r:.60}); supported: {', '.join(known)}")  # fmt: skip


def parse_config(raw: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None) -> Any:
    """The family's ModelConfig for the object of a config.json (and of preprocessor_config.json)."""
    module, arch = detect(raw)
    return module.PARSERS[arch](raw, preprocessor or {})


def config_from_dict(name: str, d: Mapping[str, Any]) -> Any:
    """The ModelConfig of family `name` that a manifest recorded (`dataclasses.asdict` of it)."""
    def tuples(obj: Mapping[str, Any]) -> dict[str, Any]:  # JSON has no tuples
        return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}

    module, raw = family(name), tuples(d)
    return module.ModelConfig(vision=module.VisionConfig(**tuples(raw.pop("vision"))),
                              text=TextConfig(**tuples(raw.pop("text"))), **raw)  # fmt: skip


def load_config(path: str | Path) -> Any:
    """Read config.json (and preprocessor_config.json, where there is one) from a checkpoint folder
    into its family's ModelConfig."""
    raw = read_config_json(path)
    extra = Path(path) / "preprocessor_config.json"
    try:
        return parse_config(raw, read_config_json(extra) if extra.is_file() else None)
    except ConfigError as e:
        file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
        raise ConfigError(str(e) if str(e).startswith("config.json") else f"{file}: {e}") from None


def preset(name: str) -> Any:
    """A real model's dimensions (no weights), by preset name, from any family."""
    for fam in FAMILIES:
        presets = family(fam).PRESETS
        if name in presets:
            return presets[name]
    known = sorted(p for fam in FAMILIES for p in family(fam).PRESETS)
    raise ConfigError(f"unknown preset '{name}'; choose from {known}")


def preset_name(cfg: Any) -> str | None:
    """The preset a config has the dimensions of (a real model's name), if any."""
    presets = family(cfg.family).PRESETS
    return next((name for name, p in presets.items() if p == cfg), None)
