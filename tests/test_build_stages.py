"""`build` keeps each stage as soon as it is done, resumes, and plans memory before it starts."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llama_export import memory
from llama_export.config import SIZES


def cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "llama_export.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def stages(folder):
    return json.loads((folder / "manifest.json").read_text()).get("stages", {})


def test_killed_stage_keeps_the_export_and_the_next_run_resumes(tmp_path):
    out = tmp_path / "tiny"
    build = ("build", "--size", "tiny", "--random-init", "--out", out, "--max-seq", "64", "--steps", "2",
             "--no-triton")
    first = cli(*build)
    deadline = time.monotonic() + 300
    while not (out / "manifest.json").is_file():  # the export is in place: the next stage is running
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL  # killed mid-way, not finished
    done = stages(out)
    assert "export" in done and "validation" not in done
    model = (out / "model.onnx.data").stat()

    second = cli(*build)
    _, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    assert "export: kept" in stderr
    assert (out / "model.onnx.data").stat().st_mtime_ns == model.st_mtime_ns  # not rewritten
    assert "validation" in stages(out) and (out / "report" / "report.json").is_file()
    assert not list(out.glob(".engine.plan.tmp-*"))
    third = cli(*build)
    _, stderr = third.communicate(timeout=600)
    assert third.returncode == 0 and "validation: kept" in stderr


@pytest.mark.slow
def test_other_options_redo_only_the_stages_they_change(tmp_path):
    out = tmp_path / "tiny"
    base = ("build", "--size", "tiny", "--random-init", "--out", out, "--engine", "skip", "--no-triton")
    first = cli(*base, "--steps", "2")
    assert first.communicate(timeout=600) and first.returncode == 0
    again = cli(*base, "--steps", "3")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert "export: kept" in stderr and "validation: kept" not in stderr
    assert stages(out)["validation"]["steps"] == 3
    other = cli(*base, "--steps", "3", "--precision", "fp16")
    _, stderr = other.communicate(timeout=600)
    assert other.returncode == 0 and "export: kept" not in stderr
    assert json.loads((out / "manifest.json").read_text())["precision"] == "fp16"


def test_engine_require_that_cannot_fit_is_refused_up_front(tmp_path):
    """7B fp16: the export fits in 8 GB, the TensorRT-RTX build does not: one line, exit 2, nothing written."""
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "big"
    env = {**os.environ, memory.LIMIT_ENV: "8G"}
    done = cli("build", "--size", "7b", "--random-init", "--precision", "fp16", "--out", out, "--engine", "require",
               env=env)
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    need = memory.engine_need(memory.estimated_weight_bytes(SIZES["7b"], "fp16"), "tensorrt-rtx")
    assert f"needs ~{need.bytes / 1e9:.1f} GB" in lines[0] and "limit is 8.6 GB" in lines[0]
    assert "--engine auto" in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_refused_under_a_tiny_limit(tmp_path):
    out = tmp_path / "tiny"
    done = cli("build", "--size", "tiny", "--random-init", "--out", out, env={**os.environ, memory.LIMIT_ENV: "100M"})
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 2
    assert len(stderr.strip().splitlines()) == 1 and "the export needs ~" in stderr and "0.1 GB" in stderr
    assert not out.exists()


def test_memory_limit_sources(monkeypatch):
    monkeypatch.setenv(memory.LIMIT_ENV, "1.5G")
    limit = memory.memory_limit()
    assert limit.bytes == int(1.5 * (1 << 30)) and limit.source == memory.LIMIT_ENV
    monkeypatch.delenv(memory.LIMIT_ENV)
    limit = memory.memory_limit()
    assert 0 < limit.bytes <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory.parse_size("512M") == 512 << 20 and memory.parse_size("1000") == 1000
