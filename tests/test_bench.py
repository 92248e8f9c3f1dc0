import json
import subprocess
import sys
from dataclasses import replace

from edgevlm.bench import BOARD_DEMO, EXTRA, KEYS, format_table
from edgevlm.convert import ConvertOptions, convert
from edgevlm.models import preset, preset_name


def test_bench_json_on_a_tiny_bundle(tiny_ckpt, tmp_path):
    from edgevlm.testing.clips import write_clip

    convert(tiny_ckpt["hf"], tmp_path / "b", ConvertOptions(), log=lambda m: None)
    out, clip = tmp_path / "bench.json", write_clip(tmp_path / "clip.mp4", frames=20, fps=5, flat=False)
    r = subprocess.run([sys.executable, "-m", "edgevlm", "bench", "-m", str(tmp_path / "b"), "--runs", "2",
                        "--gen-tokens", "8", "--tiles", "2", "--json", str(out), "--video", str(clip),
                        "--video-frames", "3"], capture_output=True, text=True, check=True)  # fmt: skip
    assert "| board demo" not in r.stdout and "time to first token" in r.stdout  # no published row for "tiny"
    d = json.loads(out.read_text())
    for key in KEYS + EXTRA:
        assert set(d[key]) == {"median", "min", "max"}, key
        assert 0 < d[key]["min"] <= d[key]["median"] <= d[key]["max"], key
    assert d["tiles"] == 3  # two tiles and the thumbnail
    assert d["video_frames"]["median"] == 3 and d["video_prompt_tokens"]["min"] > 3 * 256
    assert "| video: vision per frame |" in r.stdout
    assert d["runs"] == 2 and d["gen_tokens"] == 8 and d["threads"] >= 1 and d["bundle"].endswith("b")
    assert d["prompt_tokens"] > 3 * 256
    for s in d["samples"]:  # the first token waits for the vision encoder and the prefill
        assert s["ttft_ms"] >= s["vision_ms"] + s["prefill_ms"]
        assert abs(s["vision_ms_per_tile"] * s["tiles"] - s["vision_ms"]) < 1e-6
        # The decode ceiling is the read bandwidth over the bytes of the LLM's weights.
        weights = (tmp_path / "b" / "llm.onnx.data").stat().st_size
        assert abs(s["decode_ceiling_tok_s"] - s["memory_read_gbs"] * 1e9 / weights) < 1e-6 * s["decode_ceiling_tok_s"]
        assert abs(s["decode_of_ceiling"] * s["decode_ceiling_tok_s"] - s["decode_tok_s"]) < 1e-6 * s["decode_tok_s"]
        assert 1 < s["memory_read_gbs"] < 2000
    assert "GB/s: decode ceiling" in r.stdout
    # What quantising each part cost, as the manifest recorded it at conversion.
    parts = json.loads((tmp_path / "b" / "manifest.json").read_text())["parts"]
    assert d["accuracy"] == {p: {"precision": parts[p]["precision"], **parts[p]["accuracy"]} for p in ("vision", "llm")}
    # The host's instruction sets beside the figures (they decide the compute-bound stages).
    from dataclasses import asdict

    from edgevlm.doctor import describe_host, host

    assert d["host"] == asdict(host()) and r.stdout.rstrip().endswith(f"host: {describe_host(d['host'])}")
    # On the NPU backend the weights are RKLLM's own: no ceiling, and the table leaves its line out.
    board = {k: v for k, v in d.items() if k not in ("decode_ceiling_tok_s", "decode_of_ceiling")}
    assert "decode ceiling" not in format_table(board) and "| decode |" in format_table(board)
    # A bundle of a real model's dimensions is set beside that model's published board row.
    named = {**d, "model": "smolvlm2-256m", "board_demo": BOARD_DEMO["smolvlm2-256m"]}
    assert "| board demo (RK3588 NPU, published, smolvlm2-256m) | - |" in format_table(named)
    assert format_table(named).splitlines()[3].endswith("| 54 |")


def test_presets_are_recognised_by_their_dimensions():
    assert preset_name(preset("smolvlm2-256m")) == "smolvlm2-256m" and preset_name(preset("internvl3-1b"))
    assert preset_name(replace(preset("smolvlm2-256m"), scale_factor=2)) is None
