"""The .rkllm recipe export-rk3588 writes where rkllm-toolkit is absent (no simulator needed)."""

import pytest

from edgevlm.bundle import open_bundle
from edgevlm.rk3588 import export


def test_rkllm_recipe_has_calibration_prompts_and_checks_the_context(tiny_ckpt, tmp_path):
    """The .rkllm recipe (written where rkllm-toolkit is absent) calibrates on prompts in the model's own
    template, and a context rkllm-toolkit cannot build is refused before anything runs."""
    import json
    import shutil
    from dataclasses import replace

    from edgevlm.bundle import write_manifest
    from edgevlm.convert import ConvertOptions, convert

    out = tmp_path / "b"
    convert(tiny_ckpt["hf"], out, ConvertOptions(), log=lambda m: None)
    manifest = open_bundle(out)
    assert export.export_llm(tiny_ckpt["hf"], out, "rk3588", manifest, lambda m: None) is None  # no toolkit here
    prompts = json.loads((out / export.CALIBRATION_FILE).read_text(encoding="utf-8"))
    assert len(prompts) == len(export.CALIBRATION_QUESTIONS) and all(p["target"] == "" for p in prompts)
    assert prompts[0]["input"].startswith("<|im_start|>system\n")
    assert prompts[0]["input"].endswith("<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n")
    recipe = (out / export.RECIPE_FILE).read_text()
    compile(recipe, export.RECIPE_FILE, "exec")
    assert "dataset=calibration" in recipe and f"max_context={manifest.context_length}" in recipe
    assert repr("<IMG_CONTEXT>") in recipe and export.CALIBRATION_FILE in recipe
    for bad in (3000, 20480):
        shutil.copytree(out, tmp_path / str(bad))
        write_manifest(tmp_path / str(bad), replace(manifest, context_length=bad))
        with pytest.raises(export.ExportError, match=f"context of {bad} tokens .* multiple of 32 from 32 to 16384"):
            export.export_rk3588(tiny_ckpt["hf"], tmp_path / str(bad), log=lambda m: None)
