"""Deliver 6: SIGTERM is handled like Ctrl-C (staging removed, exit 143); a SIGKILLed run's staging folder is
removed by the next run; a weight-stream child whose parent dies exits without a word."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hardening_helpers import ENV, Outcome, argv_of, assert_one_line_error, leftovers, snapshot

from llama_export.exporter import artifacts


def start_export(out: Path) -> subprocess.Popen:
    return subprocess.Popen(argv_of("export", "--out", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ENV)


def wait_for_staging(parent: Path, process: subprocess.Popen, timeout: float = 240, holding: str | None = None) -> None:
    """Until a staging folder exists under `parent` (and, with `holding`, that file in it is non-empty)."""
    deadline = time.monotonic() + timeout

    def ready() -> bool:
        staging = [parent / name for name in leftovers(parent)]
        if holding is None:
            return bool(staging)
        return any((folder / holding).is_file() and (folder / holding).stat().st_size > 0 for folder in staging)

    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the export never reached the point the test waits for"
        time.sleep(0.05)


def previous_output(folder: Path) -> None:
    folder.mkdir()
    (folder / "manifest.json").write_text('{"tool": {"name": "llama-export"}, "run": 1}')


# Two moments: as soon as staging exists (tracing), and while the weights stream into model.onnx.data (a CI run
# once saw the progress bar's last frame printed above the error line at that point).
@pytest.mark.parametrize("moment", [None, "model.onnx.data"], ids=["tracing", "writing-weights"])
def test_sigterm_removes_the_staging_folder_and_exits_143(tmp_path, moment):
    out = tmp_path / "out"
    previous_output(out)
    before = snapshot(tmp_path)
    process = start_export(out)
    wait_for_staging(tmp_path, process, holding=moment)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert_one_line_error(Outcome(process.returncode, stdout.decode(), stderr.decode()), "terminated (SIGTERM)",
                          code=143)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_a_killed_runs_staging_is_removed_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "out"
    previous_output(out)
    process = start_export(out)
    wait_for_staging(tmp_path, process)
    process.kill()
    process.communicate(timeout=60)
    (stale,) = leftovers(tmp_path)
    assert stale.startswith(f".out.tmp-{process.pid}-")
    with artifacts.staged_output(out) as staging:  # the next run into the same --out
        (staging / "manifest.json").write_text('{"tool": {"name": "llama-export"}, "run": 2}')
    assert leftovers(tmp_path) == [] and '"run": 2' in (out / "manifest.json").read_text()
    assert f"removed 1 leftover staging folder(s) of an interrupted run next to {out}" in capsys.readouterr().err


PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from llama_export.config import ModelArgs
    from llama_export.exporter.random_init import RandomCheckpoint
    from llama_export.exporter.stream_process import ProcessWeightStreamer

    args = ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=64)  # ~230 MB: seconds
    streamer = ProcessWeightStreamer(RandomCheckpoint(args, 0), torch.float32, Path(sys.argv[1]),
                                     progress=lambda name: print(name, flush=True))
    streamer.start()
    time.sleep(600)
""")


def test_a_stream_child_whose_parent_dies_exits_quietly(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "model.onnx.data")], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert parent.stdout.readline(), "the child streamed no tensor"  # the child is mid-stream now
    parent.kill()
    parent.wait()
    start = time.monotonic()
    stderr = parent.stderr.read()  # EOF once the child, which shares this pipe, has exited too
    assert time.monotonic() - start < 60
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr.decode()
