"""`llama-export build` end to end through the real CLI."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def run_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "llama_export.cli", *map(str, args)], check=False,
                          capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture
def no_builder_env(tmp_path):
    """An environment where neither TensorRT module imports, as on a machine without them."""
    shadow = tmp_path / "shadow"
    for module in ("tensorrt", "tensorrt_rtx"):
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text("raise ImportError('not installed (test shadow)')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx-cu13 is not installed (pip install '.[tensorrt-rtx]')")
def test_build_writes_engine_validation_and_manifest(tmp_path):
    out = tmp_path / "tiny"
    done = run_cli("build", "--size", "tiny", "--random-init", "--out", out, "--max-seq", "128", "--steps", "4",
                   "--no-triton", "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["builder"] == "tensorrt-rtx"
    assert manifest["engine"]["limits"]["max_seq"] == 128
    assert manifest["engine"]["profiles"]["decode"]["attention_mask"][2] == [1, 128]
    assert manifest["files"]["engine.plan"]["size"] == (out / "engine.plan").stat().st_size
    assert manifest["validation"]["passed"] is True
    assert (out / "report" / "report.html").is_file()
    assert not list(tmp_path.glob(".tiny.tmp-*"))

    info = run_cli("engine-info", out)
    assert info.returncode == 0
    assert "tensorrt-rtx" in info.stdout and "prefill" in info.stdout and "past 1..127" in info.stdout


def test_engine_require_without_a_builder_fails_before_writing(tmp_path, no_builder_env):
    out = tmp_path / "never"
    done = run_cli("build", "--size", "tiny", "--random-init", "--out", out, "--engine", "require",
                   env=no_builder_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no TensorRT builder" in lines[0] and "pip install" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_engine_auto_without_a_builder_says_so_and_builds_the_rest(tmp_path, no_builder_env):
    out = tmp_path / "onnx-only"
    done = run_cli("build", "--size", "tiny", "--random-init", "--out", out, "--no-validate", "--no-triton",
                   env=no_builder_env)
    assert done.returncode == 0, done.stderr
    assert "engine: skipped, no TensorRT builder is installed" in done.stderr
    assert (out / "model.onnx").is_file() and not (out / "engine.plan").exists()
    assert "engine" not in json.loads((out / "manifest.json").read_text())


def test_engine_info_on_a_folder_without_engine_is_a_user_error(tmp_path, no_builder_env):
    out = tmp_path / "plain"
    assert run_cli("build", "--size", "tiny", "--random-init", "--out", out, "--no-validate", "--no-triton",
                   "--quiet", env=no_builder_env).returncode == 0
    info = run_cli("engine-info", out)
    assert info.returncode == 2 and "has no engine" in info.stderr and "Traceback" not in info.stderr
