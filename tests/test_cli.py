import subprocess
import sys

from edgevlm.cli import main


def test_info_describes_a_checkpoint(tiny_ckpt, capsys):
    assert main(["info", str(tiny_ckpt["original"])]) == 0
    out = capsys.readouterr().out
    assert "original naming, BF16" in out and "2 layers, hidden 64" in out and "256 tokens" in out


def test_user_mistakes_are_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgevlm", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a folder" in r.stderr and "Traceback" not in r.stderr
