"""What `edgevlm convert` takes, checked when made (light to import: the CLI's parser shows its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from .precision import DEFAULT_LLM, DEFAULT_VISION, LLM_PRECISIONS, VISION_PRECISIONS

CONTEXT_RANGE = (256, 131072)  # the --max-context a bundle may be made with


class ConvertError(ValueError):
    """The conversion cannot proceed: bad options, or a source that cannot be had."""


@dataclass(frozen=True)
class ConvertOptions:
    llm: str = DEFAULT_LLM
    vision: str = DEFAULT_VISION
    max_context: int = 4096
    max_tiles: int | None = None  # None: the model's own limit
    force: bool = False
    accuracy: bool = True  # measure each quantised part against fp32 (accuracy.py) and record it

    def __post_init__(self) -> None:
        if self.llm not in LLM_PRECISIONS:
            raise ConvertError(f"--llm must be one of {', '.join(LLM_PRECISIONS)}, got {self.llm!r}")
        if self.vision not in VISION_PRECISIONS:
            raise ConvertError(f"--vision must be one of {', '.join(VISION_PRECISIONS)}, got {self.vision!r}")
        low, high = CONTEXT_RANGE
        if not low <= self.max_context <= high:
            raise ConvertError(f"--max-context must be between {low} and {high}, got {self.max_context}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConvertError(f"--max-tiles must be at least 1, got {self.max_tiles}")
