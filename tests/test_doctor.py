"""`edgevlm doctor` on this machine, and on a board faked under a temporary root (device tree, NPU
driver version, the RKLLM stand-in library, RKNN's runtime string, the NPU governor)."""

import logging
from pathlib import Path

import onnxruntime
import pytest

from edgevlm import doctor
from helpers import build_stub, run_edgevlm


def test_doctor_reports_this_machine():
    r = run_edgevlm("doctor")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    cpu = next(line for line in lines if line.startswith("CPU: "))
    for flag, label in doctor.ISA_FLAGS.items():
        assert (label in cpu) == (flag in flags), (flag, cpu)
    assert f"ONNX Runtime: {onnxruntime.__version__}" in lines
    total = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
    assert any(line.startswith(f"memory: {total // 1024} MB") for line in lines)
    assert lines[-1] == "--backend auto: cpu (not an RK3588 board)"


def fake_board(root: Path, *, runtime: str = "1.3.0", driver: str = "v0.9.8") -> Path:
    """The files a Rock 5B with Rockchip's NPU stack shows, under `root`."""
    files = {
        "proc/cpuinfo": "processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics asimdrdm lrcpc dcpop asimddp\n"
                        "CPU part\t: 0xd05\n",
        "proc/meminfo": "MemTotal:       16163072 kB\nMemAvailable:   15000000 kB\n",
        "proc/device-tree/model": "Radxa ROCK 5B\0",
        "proc/device-tree/compatible": "radxa,rock-5b\0rockchip,rk3588\0",
        "sys/kernel/debug/rknpu/version": f"RKNPU driver: {driver}\n",
        "sys/class/devfreq/fdab0000.npu/governor": "rknpu_ondemand\n",
        "sys/class/devfreq/fdab0000.npu/cur_freq": "1000000000\n",
    }  # fmt: skip
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    lib = root / "usr/lib"
    lib.mkdir(parents=True)
    build_stub(lib, runtime)
    (lib / doctor.RKNN_LIB).write_bytes(b"\x7fELF\x00librknnrt version: 2.3.2 (429f97ae6b@2025-04-09T09:09:27)\x00")
    return root


def test_doctor_on_a_faked_board(tmp_path, monkeypatch, tiny_bundle):
    root = fake_board(tmp_path)
    r = doctor.examine(root=root)
    assert r.board == "Radxa ROCK 5B" and r.rk3588 and r.npu_driver == "0.9.8"
    assert r.instruction_sets == ["Arm dot-product"] and r.memory_mb == (15784, 14648)
    assert r.rkllm == f"{root}/usr/lib/librkllmrt.so (1.3.0)" and r.rknn.endswith("librknnrt.so (2.3.2)")
    assert r.npu_governor == "rknpu_ondemand, 1000 MHz"
    assert r.backend == "cpu" and r.reason == "rknn-toolkit-lite2 is not installed (pip install rknn-toolkit-lite2)"
    monkeypatch.setattr(doctor, "_rknnlite", lambda: True)
    r = doctor.examine(root=root)
    assert (r.backend, r.reason, r.problems) == ("rk3588", "an RK3588 with its NPU libraries", [])
    r = doctor.examine(tiny_bundle, root=root)  # a bundle made for the CPU only
    assert r.backend == "cpu" and r.reason == f"{tiny_bundle} has no vision_rk3588 or llm_rk3588 artifact " \
                                              "(run `edgevlm export-rk3588`)"  # fmt: skip
    assert "--backend auto: cpu (" in r.lines()[-2]


def test_doctor_names_an_old_runtime_and_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "_rknnlite", lambda: True)
    r = doctor.examine(root=fake_board(tmp_path, runtime="1.2.1", driver="v0.9.6"))
    assert r.backend == "cpu" and r.problems == [
        "librkllmrt.so is 1.2.1; edgevlm needs 1.3 or newer",
        "rknpu driver 0.9.6 is older than 0.9.7, which RKLLM 1.3 needs",
    ]
    assert r.lines()[-2:] == [f"problem: {p}" for p in r.problems]


def test_auto_backend_falls_back_to_the_cpu_in_one_line(tmp_path, monkeypatch, tiny_bundle, caplog):
    import edgevlm
    from edgevlm.model import VLM

    real, root = doctor.examine, fake_board(tmp_path)
    monkeypatch.setattr(doctor, "examine", lambda bundle=None: real(bundle, root=root))
    with caplog.at_level(logging.WARNING, logger="edgevlm"):
        model = edgevlm.load(tiny_bundle)
    assert isinstance(model, VLM)
    (record,) = caplog.records
    assert record.getMessage().startswith("edgevlm: --backend auto uses the CPU: rknn-toolkit-lite2 is not installed")
    assert "\n" not in record.getMessage()


@pytest.mark.parametrize("missing", ["proc/device-tree/model", "sys/kernel/debug/rknpu/version"])
def test_doctor_says_what_it_could_not_find(tmp_path, monkeypatch, missing):
    root = fake_board(tmp_path)
    (root / missing).unlink()
    r = doctor.examine(root=root)
    text = "\n".join(r.lines())
    assert ("board: none found" in text) == (missing == "proc/device-tree/model")
    assert ("NPU driver: not found" in text) == (missing == "sys/kernel/debug/rknpu/version")
