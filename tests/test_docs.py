"""The documentation's commands, run as written.

Every command that starts with `lrprof ` or `.venv/bin/lrprof ` (after an optional `$ `,
environment assignments or `taskset -c CPUS`) in a ```bash block of README.md or docs/*.md
runs through the installed console script, block by block and in order (a compare reads
the report the line before it made), in a temporary directory holding copies of
`examples/` and `reports/` (and a link to `lrprof/`, which they only read), so the
repository stays clean.

A comment after a command says what to expect, in parts separated by `;`:

- `exits N` or `exits N or M`: the exit status (default 0);
- `slow`: takes long on a 2-core CPU. The default run runs a block's commands up to its
  first slow one; the block's `-all` test, marked slow, runs them all in order;
- `needs CUDA`, `needs valgrind`, `needs Slurm`: where that is missing, the test skips
  this command and the rest of its block (they may depend on it).

Any other part is a remark for the reader.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LRPROF = Path(sys.executable).parent / "lrprof"
README_MAX_LINES = 250
COPIED = ("examples", "reports")  # what the commands read and may write beside, copied
LINKED = ("lrprof",)  # read only (`lrprof check lrprof/ops/...`): a copy would register its operators twice
TIMEOUT_S = 3600

# Subcommands the docs describe before this build has them: a block that uses one is skipped
# while `lrprof --help` does not list it, and runs once it does. Anything else unknown fails.
PENDING: dict[str, str] = {}

FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
COMMAND = re.compile(
    r"^(?P<prefix>(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:taskset\s+-c\s+\S+\s+)?)"
    r"(?P<exe>(?:\.venv/bin/)?lrprof)(?=\s|$)(?P<rest>.*)$"
)
EXITS = re.compile(r"exits? (?P<first>\d+)(?P<more>(?: or \d+)*)(?!\w)")
NEEDS = re.compile(r"needs (?P<what>CUDA|valgrind|Slurm)\b")


@dataclass(frozen=True)
class Command:
    source: str  # file:line
    text: str  # the shell command as the docs show it, without its comment
    statuses: frozenset[int] = frozenset({0})
    slow: bool = False
    needs: tuple[str, ...] = ()

    def shell(self) -> str:
        """The command for bash, its lrprof replaced by the console script beside this Python."""
        match = COMMAND.match(self.text)
        assert match is not None
        return f"{match['prefix']}{shlex.quote(str(LRPROF))}{match['rest']}"

    @property
    def subcommand(self) -> str:
        words = COMMAND.match(self.text)["rest"].split()
        return words[0] if words else ""


@dataclass
class Block:
    source: str  # file:line of the opening fence
    commands: list[Command] = field(default_factory=list)


def split_comment(line: str) -> tuple[str, str]:
    """The command and its comment: the first `#` outside quotes that starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def parse_comment(comment: str, where: str) -> dict:
    found: dict = {"statuses": frozenset({0}), "slow": False, "needs": ()}
    for part in (p.strip() for p in comment.split(";")):
        if match := EXITS.match(part):
            found["statuses"] = frozenset(int(n) for n in [match["first"], *match["more"].split(" or ")[1:]])
        elif re.match(r"exits?\b", part):
            raise ValueError(f"{where}: cannot read the exit status in {part!r} "
                             "(write 'exits N' or 'exits N or M')")
        elif re.match(r"slow\b", part):
            found["slow"] = True
        elif match := NEEDS.match(part):
            found["needs"] = (*found["needs"], match["what"])
        elif re.match(r"needs\b", part):
            raise ValueError(f"{where}: unknown requirement {part!r} (needs CUDA, valgrind or Slurm)")
    return found


def bash_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number of the first line inside, lines) of every ```bash block."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, end = match["fence"], i + 1
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if match["lang"] == "bash":
            found.append((i + 2, lines[i + 1:end]))
        i = end + 1
    return found


def parse_block(name: str, first: int, lines: list[str]) -> Block:
    block = Block(f"{name}:{first - 1}")
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.endswith("\\") and i + 1 < len(lines):  # a continuation: joined, as bash does
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:].lstrip()
        text, comment = split_comment(line)
        if not COMMAND.match(text):
            continue
        where = f"{name}:{first + start}"
        block.commands.append(Command(where, text, **parse_comment(comment, where)))
    return block


def doc_blocks() -> list[Block]:
    blocks = []
    for path in DOC_FILES:
        name = path.relative_to(ROOT).as_posix()
        for first, lines in bash_blocks(path.read_text()):
            block = parse_block(name, first, lines)
            if block.commands:
                blocks.append(block)
    return blocks


BLOCKS = doc_blocks()


def block_params() -> list:
    params = []
    for block in BLOCKS:
        if not block.commands[0].slow:
            params.append(pytest.param(block, False, id=block.source))
        if any(c.slow for c in block.commands):
            params.append(pytest.param(block, True, id=f"{block.source}-all", marks=pytest.mark.slow))
    return params


@cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@cache
def subcommands() -> frozenset[str]:
    out = subprocess.run([str(LRPROF), "--help"], capture_output=True, text=True, timeout=120).stdout
    listed = out.split("Commands:", 1)[-1]
    return frozenset(line.split()[0] for line in listed.splitlines()
                     if line.startswith("  ") and line.split())


def missing(command: Command) -> str | None:
    """Why this command cannot run here, or None."""
    for what in command.needs:
        if what == "CUDA" and not has_cuda():
            return "needs CUDA"
        if what == "valgrind" and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
            return "needs valgrind and callgrind_control"
        if what == "Slurm" and not shutil.which("sbatch"):
            return "needs Slurm (sbatch)"
    if command.subcommand in PENDING and command.subcommand not in subcommands():
        return PENDING[command.subcommand]
    return None


def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in COPIED:
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in LINKED:
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    return work


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.parametrize(("block", "with_slow"), block_params())
def test_doc_commands_run_as_written(block: Block, with_slow: bool, tmp_path: Path) -> None:
    assert LRPROF.exists(), f"no console script at {LRPROF}: pip install -e . into this environment"
    work = workdir(tmp_path)
    env = {**os.environ, "PATH": f"{LRPROF.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    for command in block.commands:
        if command.slow and not with_slow:
            break  # what follows may read what this one writes
        if (reason := missing(command)) is not None:
            pytest.skip(f"{command.source}: {reason}; it and the rest of its block not run")
        start = time.perf_counter()
        proc = subprocess.run(["bash", "-c", "set -o pipefail; " + command.shell()], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S)
        took = time.perf_counter() - start
        print(f"{command.source}: {took:.1f} s, exit {proc.returncode}: {command.text}")
        expected = " or ".join(str(s) for s in sorted(command.statuses))
        assert proc.returncode in command.statuses, (
            f"{command.source}: `{command.text}` exited {proc.returncode}, the docs say {expected}\n"
            f"--- stdout\n{tail(proc.stdout)}\n--- stderr\n{tail(proc.stderr)}"
        )


def test_the_docs_show_commands_of_every_kind() -> None:
    commands = [c for block in BLOCKS for c in block.commands]
    shown = {c.subcommand for c in commands}
    assert {"layer", "net", "sweep", "merge", "compare", "check", "ops", "schema"} <= shown, shown
    readme = [c.text for c in commands if c.source.startswith("README.md:")]
    assert "lrprof layer --k 7 --m 8" in readme and len(readme) >= 10, readme
    assert any(c.statuses == {1} for c in commands) and any(c.statuses == {2} for c in commands)


def test_the_extraction_reads_what_the_docs_write() -> None:
    text = "\n".join([
        "```bash",
        "$ lrprof layer --k 7 \\",
        "      --m 8   # the main job; slow",
        ".venv/bin/lrprof check x.py:A --init '{\"a\": \"#1\"}'  # exits 1",
        "taskset -c 1 lrprof compare a.json b.json  # exits 0 or 1; needs valgrind",
        "python benchmarks/lr_impls.py  # not lrprof: not run",
        "```",
        "```text",
        "lrprof ops",
        "```",
    ])
    (first, lines), = bash_blocks(text)
    block = parse_block("doc.md", first, lines)
    layer, check, compare = block.commands
    assert (layer.source, layer.text, layer.slow, layer.statuses) == (
        "doc.md:2", "lrprof layer --k 7 --m 8", True, {0})
    assert check.text == ".venv/bin/lrprof check x.py:A --init '{\"a\": \"#1\"}'" and check.statuses == {1}
    assert compare.statuses == {0, 1} and compare.needs == ("valgrind",) and not compare.slow
    assert compare.shell().startswith("taskset -c 1 " + shlex.quote(str(LRPROF)) + " compare")
    with pytest.raises(ValueError, match="exit status"):
        parse_comment("exit code 1", "doc.md:9")


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """The set-up block's second line, byte for byte, is the test command in .ci/run."""
    (_, setup), *_ = bash_blocks((ROOT / "README.md").read_text())
    main_job, tests = setup
    assert main_job.endswith("&& .venv/bin/lrprof layer --k 7 --m 8")
    assert tests.endswith("&& .venv/bin/python -m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


NO_MKDOCS = importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None


@pytest.mark.skipif(NO_MKDOCS, reason="mkdocs-material is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
             "--config-file", str(ROOT / "mkdocs.yml")]
    proc = subprocess.run(build, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert proc.returncode == 0, tail(proc.stdout + proc.stderr, 40)
