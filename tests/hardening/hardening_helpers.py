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


def run_cli(*argv: str, cwd: Path | None = None, timeout: float = 300) -> Outcome:
    """The real program in a subprocess (tracebacks, exit codes and signals are the process's)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([*CLI, *map(str, argv)], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)
    return Outcome(done.returncode, done.stdout, done.stderr)


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
