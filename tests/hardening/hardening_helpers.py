"""Helpers for the hardening tests: run the CLI, and snapshot a folder tree to prove nothing else changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-m", "llama_export.cli"]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def argv_of(*argv) -> list:
    return [*CLI, *(a if isinstance(a, bytes) else str(a) for a in argv)]


def run_program(*argv, cwd: Path | None = None, timeout: float = 300) -> Outcome:
    """The real program in a subprocess (for signals, and what only a fresh process shows). `bytes` arguments
    pass through undecoded."""
    done = subprocess.run(argv_of(*argv), check=False, capture_output=True, cwd=cwd, timeout=timeout, env=ENV)
    return Outcome(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def run_cli(*argv, cwd: Path | None = None) -> Outcome:
    """The CLI in this process (no ~10 s torch import per call). An exception escaping the CLI's error handling
    is what a user would see as a traceback: it is reported as one in stderr."""
    from click.testing import CliRunner

    from llama_export.cli import main

    args = [a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else str(a) for a in argv]
    previous = Path.cwd()
    os.chdir(cwd or previous)
    try:
        result = CliRunner().invoke(main, args, prog_name="llama-export")
    finally:
        os.chdir(previous)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "Traceback (escaped the CLI):\n" + "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, result.stdout, stderr)


def assert_one_line_error(outcome: Outcome, *fragments: str, code: int = 2) -> str:
    """Exit `code`, no traceback, exactly one line on stderr holding every fragment; returns that line."""
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr
    assert outcome.code == code, f"exit {outcome.code}: {outcome.stderr}"
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` (hidden ones included): relative path -> sha256 of a file, or 'dir'."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            tree[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            tree[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return tree


def leftovers(parent: Path) -> list[str]:
    """Staging or set-aside siblings (`.NAME.tmp-*`, `.NAME.old-*`) under `parent`."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
