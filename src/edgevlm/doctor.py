"""`edgevlm doctor`: what a user needs to know before asking for help, and which backend `auto` picks.

Everything is read from files (`/proc`, `/sys`, the device tree, the libraries themselves), under a
root that tests point at a fake board. Nothing here loads the NPU libraries or touches the network.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .runtime.memory import memory_mb

RKLLM_LIB, RKNN_LIB = "librkllmrt.so", "librknnrt.so"
MIN_DRIVER = (0, 9, 7)  # what RKLLM runtime 1.3.0 asks for at init ("please upgrade to 0.9.7")
LIB_DIRS = ("usr/lib", "usr/lib/aarch64-linux-gnu", "usr/local/lib", "lib", "lib/aarch64-linux-gnu", "usr/lib64")
ISA_FLAGS = {"avx2": "AVX2", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "asimddp": "Arm dot-product",
             "i8mm": "Arm int8 matmul"}  # fmt: skip
_DRIVER = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_RKNN_VERSION = re.compile(rb"librknnrt version: (\d+\.\d+\.\d+[^\s\x00]*)")


@dataclass
class Report:
    """The machine as edgevlm sees it."""

    cpu: str
    arch: str
    instruction_sets: list[str]
    onnxruntime: str
    memory_mb: tuple[int, int]  # total, available
    board: str | None
    rk3588: bool
    npu_driver: str | None
    rkllm: str | None  # path and version
    rknn: str | None
    rknnlite: bool
    npu_governor: str | None
    backend: str = "cpu"
    reason: str = ""
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        total, free = self.memory_mb
        return [
            f"CPU: {self.cpu} ({self.arch}); {', '.join(self.instruction_sets) or 'no int8 dot-product instructions'}",
            f"ONNX Runtime: {self.onnxruntime}",
            f"memory: {total} MB, {free} MB available",
            f"board: {self.board or 'none found (no device-tree model)'}{' (RK3588)' if self.rk3588 else ''}",
            f"NPU driver: {self.npu_driver or 'not found'}",
            f"{RKLLM_LIB}: {self.rkllm or 'not found'}",
            f"{RKNN_LIB}: {self.rknn or 'not found'}",
            f"rknn-toolkit-lite2 (rknnlite): {'installed' if self.rknnlite else 'not installed'}",
            f"NPU frequency governor: {self.npu_governor or 'not found'}",
            f"--backend auto: {self.backend}" + (f" ({self.reason})" if self.reason else ""),
            *(f"problem: {p}" for p in self.problems),
        ]

    def to_dict(self) -> dict:
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().replace(b"\x00", b"\n").decode("utf-8", "replace").strip()
    except OSError:
        return None


def _cpu(root: Path) -> tuple[str, list[str]]:
    text = _read(root / "proc/cpuinfo") or ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name") or fields.get("Hardware") or fields.get("CPU part") or platform.processor()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return name or "unknown", [label for flag, label in ISA_FLAGS.items() if flag in flags]


@dataclass(frozen=True)
class Host:
    """What speed figures depend on: the CPU, its int8 instruction sets, ONNX Runtime's version."""

    cpu: str
    arch: str
    instruction_sets: list[str]
    onnxruntime: str


def host(root: str | Path = "/") -> Host:
    import onnxruntime

    cpu, isa = _cpu(Path(root))
    return Host(cpu, platform.machine(), isa, onnxruntime.__version__)


def describe_host(h: dict) -> str:
    """One line for a host as the bench's JSON records it."""
    isa = ", ".join(h["instruction_sets"]) or "no int8 dot-product instructions"
    return f"{h['cpu']} ({h['arch']}); {isa}; ONNX Runtime {h['onnxruntime']}"


def _driver(root: Path) -> tuple[int, int, int] | None:
    for name in ("sys/kernel/debug/rknpu/version", "sys/module/rknpu/version"):
        if (text := _read(root / name)) and (m := _DRIVER.search(text)):
            return int(m[1]), int(m[2]), int(m[3])
    return None


def find_library(name: str, root: Path = Path("/")) -> Path | None:
    """Where the dynamic loader would find `name`: LD_LIBRARY_PATH (on the real root), then the system
    folders."""
    extra = os.environ.get("LD_LIBRARY_PATH", "").split(":") if root == Path("/") else []
    for folder in [*(Path(d) for d in extra if d), *(root / d for d in LIB_DIRS)]:
        if (folder / name).is_file():
            return folder / name
    return None


def _governor(root: Path) -> str | None:
    for node in sorted((root / "sys/class/devfreq").glob("*npu*")):
        if governor := _read(node / "governor"):
            freq = _read(node / "cur_freq")
            return governor + (f", {int(freq) // 1_000_000} MHz" if freq and freq.isdigit() else "")
    return None


def _rknnlite() -> bool:
    import importlib.util

    return importlib.util.find_spec("rknnlite") is not None


def _dotted(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "unknown version"


def examine(bundle: str | Path | None = None, root: str | Path = "/") -> Report:
    """Everything `doctor` reports, and the backend `auto` picks for `bundle` (or for any bundle) and why."""
    from .rk3588.rkllm import library_version

    root = Path(root)
    h = host(root)
    compatible = _read(root / "proc/device-tree/compatible") or ""
    rkllm_path, rknn_path = find_library(RKLLM_LIB, root), find_library(RKNN_LIB, root)
    rkllm_version = library_version(rkllm_path) if rkllm_path else None
    rknn_match = _RKNN_VERSION.search(rknn_path.read_bytes()) if rknn_path else None
    driver = _driver(root)
    report = Report(
        cpu=h.cpu, arch=h.arch, instruction_sets=h.instruction_sets, onnxruntime=h.onnxruntime,
        memory_mb=memory_mb(root), board=_read(root / "proc/device-tree/model"),
        rk3588="rk3588" in compatible, npu_driver=_dotted(driver) if driver else None,
        rkllm=f"{rkllm_path} ({_dotted(rkllm_version)})" if rkllm_path else None,
        rknn=f"{rknn_path} ({rknn_match[1].decode() if rknn_match else 'unknown version'})" if rknn_path else None,
        rknnlite=_rknnlite(), npu_governor=_governor(root),
    )  # fmt: skip
    if not report.rk3588:
        report.reason = "not an RK3588 board"
        return report
    missing = _npu_gaps(report.rknnlite, rkllm_path, rkllm_version, rknn_path, driver)
    if bundle is not None:
        missing += _bundle_gaps(Path(bundle))
    report.problems = missing
    report.backend = "cpu" if missing else "rk3588"
    report.reason = "; ".join(missing) if missing else "an RK3588 with its NPU libraries"
    return report


def _npu_gaps(rknnlite: bool, rkllm_path: Path | None, rkllm_version: tuple[int, int, int] | None,
              rknn_path: Path | None, driver: tuple[int, int, int] | None) -> list[str]:  # fmt: skip
    """What an RK3588's NPU stack lacks for the board backend, each in a few words."""
    from .rk3588.rkllm import SUPPORTED

    missing = []
    if not rknnlite:
        missing.append("rknn-toolkit-lite2 is not installed (pip install rknn-toolkit-lite2)")
    if rkllm_path is None:
        missing.append(f"{RKLLM_LIB} not found (install RKLLM runtime {_dotted(SUPPORTED)})")
    elif rkllm_version is not None and rkllm_version[:2] < SUPPORTED:
        missing.append(f"{RKLLM_LIB} is {_dotted(rkllm_version)}; edgevlm needs {_dotted(SUPPORTED)} or newer")
    if rknn_path is None:
        missing.append(f"{RKNN_LIB} not found (it comes with rknn-toolkit-lite2's runtime)")
    if driver is None:
        missing.append("no rknpu driver version found (is the NPU driver loaded?)")
    elif driver < MIN_DRIVER:
        missing.append(f"rknpu driver {_dotted(driver)} is older than {_dotted(MIN_DRIVER)}, which RKLLM 1.3 needs")
    return missing


def _bundle_gaps(folder: Path) -> list[str]:
    from .bundle import BundleError, open_bundle

    try:
        parts = open_bundle(folder).parts
    except BundleError as e:
        return [str(e)]
    lacking = [p for p in ("vision_rk3588", "llm_rk3588") if p not in parts]
    return [f"{folder} has no {' or '.join(lacking)} artifact (run `edgevlm export-rk3588`)"] if lacking else []
