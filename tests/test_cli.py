import re
import subprocess
import sys

import pytest

from edgevlm.cli import main
from edgevlm.convert_options import ConvertOptions
from edgevlm.models import FAMILIES
from helpers import assert_one_line_error, run_edgevlm


def test_info_describes_a_checkpoint(tiny_ckpt, capsys):
    assert main(["info", str(tiny_ckpt["original"])]) == 0
    out = capsys.readouterr().out
    assert "original naming, BF16" in out and "2 layers, hidden 64" in out and "256 tokens" in out


def test_user_mistakes_are_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgevlm", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a folder" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"), ("--repetition-penalty", "0"),
     ("--repetition-penalty", "-1"), ("--seed", "-1"), ("--seed", "1e3"), ("--temperature", "nan"),
     ("--temperature", "inf"), ("--temperature", "-0.5"), ("--max-tokens", "0"), ("--top-k", "-3")],
)  # fmt: skip
def test_sampling_flags_are_checked_by_argparse(small_bundle, flag, value):
    r = run_edgevlm("chat", "-m", small_bundle, "-p", "hi", flag, value)
    assert_one_line_error(r, flag, "usage")


@pytest.mark.parametrize("flag", ["-p", "--system"])
def test_non_utf8_arguments_are_one_line(small_bundle, flag):
    args = [sys.executable, "-m", "edgevlm", "chat", "-m", str(small_bundle), "-p", "hi", flag, b"caf\xe9 \xff"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert_one_line_error(r, flag, "UTF-8")


def test_a_non_utf8_line_in_the_chat_is_an_error_and_the_chat_goes_on(small_bundle):
    lines = b"Tell me about bread.\n\xff\xfe broken \xc3\n\nAnd butter?\n/exit\n"
    r = run_edgevlm("chat", "-m", small_bundle, "--max-tokens", "4", "--stats", stdin=lines)
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert err.count("not valid UTF-8") == 1
    stats = re.findall(r"prompt (\d+) tokens \((\d+) cached", err)
    assert len(stats) == 2, err  # both good questions answered
    (first, _), (second, cached) = ((int(a), int(b)) for a, b in stats)
    assert second > first and cached >= first  # the second turn follows the first: the conversation was kept


def test_answering_does_not_import_onnx():
    """The onnx package (graph building only) costs ~10 MB resident: loading and answering never import it."""
    code = ("import sys, edgevlm.cli, edgevlm.model, edgevlm.session, edgevlm.server.app, edgevlm.structured; "
            "edgevlm.cli.build_parser().parse_args(['chat', '-m', 'b', '-p', 'hi']); "
            "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_command_line_parser_is_light_and_names_every_family():
    """`edgevlm --help` imports neither onnx nor onnxruntime (0.1 s instead of 0.55), names every registered
    family, and shows the converter's own defaults."""
    code = ("import sys, edgevlm.cli; p = edgevlm.cli.build_parser(); a = p.parse_args(['convert', 'c', 'o']); "
            "print(a.llm, a.vision, a.max_context); print(p.description); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))")  # fmt: skip
    defaults, description, heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True).stdout.splitlines()  # fmt: skip
    assert heavy == "[]"
    d = ConvertOptions()
    assert defaults == f"{d.llm} {d.vision} {d.max_context}"
    assert all(title in description for title in FAMILIES.values()) and len(FAMILIES) == 3
