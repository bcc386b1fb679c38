"""Help a person can use: every command's --help has examples and says where reports go;
lrprof --version; bare lrprof prints the help and exits 0; no type tags on flags."""

import re
import subprocess
import sys

import pytest

import lrprof
from lrprof.cli import main

COMMANDS = ["layer", "net", "compare", "ops", "sweep", "merge", "check"]


def run(capsys, *args):
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_says_what_it_writes(command, capsys):
    rc, out, err = run(capsys, command, "--help")
    assert rc == 0 and err == ""
    examples = out.split("Examples:")[1]
    commands = [line.strip() for line in examples.splitlines() if line.strip().startswith("lrprof ")]
    assert len(commands) >= 2 and all(c.startswith(f"lrprof {command}") for c in commands)
    assert "Writes:" in out
    assert "<bool>" not in out and "<str>" not in out and "<int>" not in out


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith(f"lrprof {lrprof.__version__} (torch ")


def test_bare_lrprof_prints_the_help_and_exits_0():
    result = subprocess.run([sys.executable, "-m", "lrprof"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0
    assert "Usage: lrprof" in result.stdout and "layer" in result.stdout
    assert result.stderr == ""


def test_help_examples_parse(capsys):
    """Each example is a command the parser accepts (checked with --help, nothing runs)."""
    for command in COMMANDS:
        _, out, _ = run(capsys, command, "--help")
        for example in re.findall(r"^\s+(lrprof .+)$", out.split("Examples:")[1], re.M):
            args = example.split(">")[0].split()[1:]
            rc, _, err = run(capsys, *args, "--help")
            assert rc == 0, (example, err)
