"""What quantisation cost each part of a bundle: the figures measured at conversion (measure.py), their
thresholds, and how `verify`, `bench` and the server show them.

    vision:  cosine of the image features to fp32's, mean and worst token
    llm:     KL(fp32 || quantised) and cosine of the logits, top-1 agreement of the greedy next token
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VISION_COSINE_MIN = 0.99  # below: the part gets a warning at conversion
LLM_KL_MAX = 0.05
SAFER = {"int8": "fp16", "fp16": "fp32", "w4a8": "w8a8", "w8a8": "fp32"}  # each form's next safer one


@dataclass(frozen=True)
class VisionAccuracy:
    cosine_mean: float
    cosine_worst: float
    tokens: int
    inputs: str

    def describe(self) -> str:
        return (f"cosine to fp32 {self.cosine_mean:.5f} mean, {self.cosine_worst:.5f} worst token "
                f"({self.tokens} tokens: {self.inputs})")  # fmt: skip

    def problem(self) -> str | None:
        if self.cosine_mean < VISION_COSINE_MIN:
            return f"image features' cosine to fp32 is {self.cosine_mean:.4f} (< {VISION_COSINE_MIN})"
        return None


@dataclass(frozen=True)
class LlmAccuracy:
    kl_mean: float
    kl_max: float
    cosine_mean: float
    cosine_worst: float
    top1: float
    tokens: int
    inputs: str

    def describe(self) -> str:
        return (f"KL {self.kl_mean:.4f} mean, {self.kl_max:.4f} max; logit cosine {self.cosine_mean:.5f} mean, "
                f"{self.cosine_worst:.5f} worst; top-1 agreement {self.top1:.3f} ({self.tokens} positions: "
                f"{self.inputs})")  # fmt: skip

    def problem(self) -> str | None:
        if self.kl_mean > LLM_KL_MAX:
            return f"logits' KL to fp32 is {self.kl_mean:.4f} (> {LLM_KL_MAX})"
        return None


KINDS = {"vision": VisionAccuracy, "llm": LlmAccuracy}
NOT_MEASURED = "not measured (fp32, --no-accuracy, or too little memory at conversion)"


def figures_of(part: str, values: dict[str, Any]) -> VisionAccuracy | LlmAccuracy | None:
    """A part's recorded figures as their dataclass (None: none recorded, or not in this edgevlm's form).
    A board part ("vision_rk3588") has its kind's figures."""
    kind = KINDS.get(part.split("_")[0])
    try:
        return kind(**values) if kind and values else None
    except TypeError:
        return None


def report(parts: dict[str, Any]) -> list[str]:
    """One line per part of a manifest: what quantising it cost, as measured at conversion (or export)."""
    lines = []
    for name, part in parts.items():
        if name.split("_")[0] in KINDS:
            measured = figures_of(name, part.accuracy)
            what = measured.describe() if measured else NOT_MEASURED
            lines.append(f"{name} ({part.precision}): {what}")
    return lines


def accuracy_record(manifest: Any) -> dict[str, dict[str, Any]]:
    """The measured parts of a manifest with their precision and figures (for JSON: bench, the server)."""
    return {name: {"precision": p.precision, **p.accuracy} for name, p in manifest.parts.items() if p.accuracy}


def warnings(figures: dict[str, dict[str, Any]], precisions: dict[str, str]) -> Sequence[str]:
    """One line per part whose figures are past its threshold, naming the safer form."""
    out = []
    for part, values in figures.items():
        problem = KINDS[part](**values).problem()
        if problem:
            out.append(f"warning: the {precisions[part]} {part} part lost accuracy: {problem}; "
                       f"convert with --{part} {SAFER[precisions[part]]} for a safer form")  # fmt: skip
    return out
