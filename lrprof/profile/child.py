"""Measurement in a fresh process, one way for every kind: a request as JSON in, a result as
JSON out, through files in a temporary directory (`python -m MODULE REQUEST.json RESULT.json`).

`--repeat` times rows in fresh processes (`replicate`), `--instructions` counts them in one
process under valgrind (`instructions`, which wraps the command); both start children here.
The child's module ends with `sys.exit(child_main(worker, sys.argv[1:]))`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT_S = 3600  # a hung child must not hang the profile forever


def child_env(**extra: str) -> dict[str, str]:
    """The parent's environment, with this lrprof importable first (an editable install, a
    PYTHONPATH checkout or a wheel all work), plus `extra`."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


@dataclass
class ChildResult:
    """What the child returned (`result`), what `collect` read beside it, or why it failed."""

    result: Any = None
    collected: Any = None
    failed: str | None = None


def last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_child(module: str, request: dict[str, Any], *, prefix: str = "lrprof-child-",
              wrap: Callable[[Path], list[str]] | None = None, env: dict[str, str] | None = None,
              collect: Callable[[Path, Any], Any] | None = None, timeout_s: float = TIMEOUT_S,
              stderr_filter: Callable[[str], bool] | None = None) -> ChildResult:
    """Run `python -m module` on `request` in a fresh process. `wrap(tmp)` gives the command
    that runs it (valgrind with its output in tmp, say); `collect(tmp, result)` reads what the
    child left in tmp before it goes; `stderr_filter` keeps the stderr lines that can explain
    a failure (a wrapper's own chatter dropped)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp)
        req, res = folder / "request.json", folder / "result.json"
        req.write_text(json.dumps(request))
        command = [*(wrap(folder) if wrap else []), sys.executable, "-m", module, str(req), str(res)]
        try:
            done = subprocess.run(command, env=env or child_env(), capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return ChildResult(failed=f"no result after {timeout_s:g} s")
        if done.returncode != 0 or not res.is_file():
            text = done.stderr or done.stdout or ""
            if stderr_filter:
                text = "\n".join(line for line in text.splitlines() if stderr_filter(line))
            return ChildResult(failed=f"exit {done.returncode}: {last_line(text)}")
        result = json.loads(res.read_text())
        return ChildResult(result, collect(folder, result) if collect else None)


def child_main(worker: Callable[[dict[str, Any]], Any], argv: list[str]) -> int:
    """The child's side: read the request, run `worker`, write its JSON-ready result."""
    request_path, result_path = Path(argv[0]), Path(argv[1])
    try:
        result = worker(json.loads(request_path.read_text()))
    except KeyboardInterrupt:
        return 130
    result_path.write_text(json.dumps(result))
    return 0
