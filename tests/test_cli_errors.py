"""Broken checkpoints through the real CLI: exit code 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

CLI = [shutil.which("llama-export")] if shutil.which("llama-export") else [sys.executable, "-m", "llama_export.cli"]

KINDS = ["missing_path", "missing_tensor", "unexpected_tensor", "misshaped_tensor", "contradicting_params",
         "truncated_safetensors", "not_safetensors", "pth_non_tensor"]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_a_bad_checkpoint_prints_one_line_and_exits_2(make_bad_checkpoint, kind, tmp_path):
    case = make_bad_checkpoint(kind)
    result = subprocess.run([*CLI, "generate", "--checkpoint", str(case.path), "--prompt", "hi",
                             "--max-new-tokens", "1"], check=False, capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    for fragment in case.fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_the_program_keeps_its_output_and_exit_codes_although_it_skips_teardown():
    """`llama-export` ends with os._exit (cli.run): the output written before it and the exit code of each
    way out (return, one-line error) must survive it."""
    from llama_export.config import SIZES

    listed = subprocess.run([*CLI, "sizes", "--json"], check=False, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and [row["name"] for row in json.loads(listed.stdout)] == list(SIZES)
    refused = subprocess.run([*CLI, "export", "--size", "nope"], check=False, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error: unknown size 'nope'")
