"""`convert` never destroys what is not a bundle, and a failed or killed convert leaves nothing behind."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edgevlm.bundle import is_bundle
from helpers import assert_one_line_error, run_edgevlm

FAST = ("--llm", "w8a8", "--vision", "int8", "--max-context", "512", "--no-accuracy")


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture()
def user_files(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    return folder


def test_force_refuses_a_folder_of_user_files(tiny_ckpt, user_files):
    r = run_edgevlm("convert", tiny_ckpt["hf"], user_files, *FAST, "--force")
    assert_one_line_error(r, "not an edgevlm bundle")
    assert (user_files / "holiday.jpg").read_bytes() == b"precious"
    assert listing(user_files.parent) == ["photos"]


def test_force_refuses_the_current_folder_and_the_source(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt["hf"], ckpt)
    before = listing(ckpt)
    for out, cwd in ((".", ckpt), (ckpt, tmp_path), (tmp_path, ckpt)):
        r = subprocess.run([sys.executable, "-m", "edgevlm", "convert", str(ckpt), str(out), *FAST, "--force"],
                           cwd=cwd, capture_output=True, text=True)  # fmt: skip
        assert_one_line_error(r)
        assert listing(ckpt) == before and listing(tmp_path) == ["ckpt"]


def test_force_over_a_file_is_refused_and_leaves_no_old(tiny_ckpt, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert_one_line_error(run_edgevlm("convert", tiny_ckpt["hf"], target, *FAST, "--force"), "not a bundle folder")
    assert target.read_text() == "keep me" and listing(tmp_path) == ["notes.txt"]


def test_force_replaces_a_bundle_and_says_so(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    assert run_edgevlm("convert", tiny_ckpt["hf"], out, *FAST).returncode == 0
    (out / "stray").write_text("x")
    r = run_edgevlm("convert", tiny_ckpt["hf"], out, *FAST, "--force")
    assert r.returncode == 0 and "replacing the bundle" in r.stderr
    assert is_bundle(out) and not (out / "stray").exists() and listing(tmp_path) == ["b"]
    # without --force an existing bundle is kept, and the message says how to replace it
    assert_one_line_error(run_edgevlm("convert", tiny_ckpt["hf"], out, *FAST), "already exists", "--force")


def test_a_killed_convert_is_cleaned_by_the_next(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "edgevlm", "convert", str(tiny_ckpt["hf"]), str(out), *FAST],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while "[2/" not in proc.stderr.readline():  # killed in the middle of writing the graphs
        assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p for p in listing(tmp_path) if p.endswith(".partial")], listing(tmp_path)
    assert run_edgevlm("convert", tiny_ckpt["hf"], out, *FAST).returncode == 0
    assert listing(tmp_path) == ["b"]


def test_a_live_converts_partial_folder_is_left_alone(tiny_ckpt, tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        theirs = tmp_path / f".b.{sleeper.pid}.partial"
        theirs.mkdir()
        assert run_edgevlm("convert", tiny_ckpt["hf"], tmp_path / "b", *FAST).returncode == 0
        assert theirs.exists()
    finally:
        sleeper.kill()


def test_a_full_disk_is_one_line_and_leaves_nothing(tiny_ckpt, tmp_path):
    """The bundle is written to a 3 MB tmpfs (mounted in a private mount namespace): it cannot fit."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare (util-linux) with user namespaces to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=3m tmpfs {disk} && {sys.executable} -m edgevlm convert {tiny_ckpt['hf']} "
              f"{disk}/out {' '.join(FAST)}; code=$?; ls -A {disk} >&2; exit $code")  # fmt: skip
    start = time.time()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=os.environ)
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(errors) == 1 and "No space left on device" in errors[0], r.stderr
    assert lines[-1] == errors[0], "the folder of the full disk is not empty: " + r.stderr
    assert time.time() - start < 120
