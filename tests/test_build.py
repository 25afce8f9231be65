"""`llama-export build` end to end through the real CLI."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

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


def outlier_checkpoint(folder):
    """The trained tiny model with one weight per row of every block linear set to 20x the row's largest: a real
    checkpoint that int8 weight-only quantization ruins (one scale per row, sized by the outlier, rounds the rest
    of the row to a few levels), so its int8-wo export genuinely fails the validation gate."""
    import shutil

    from llama_export.exporter.checkpoints import open_checkpoint, save_checkpoint
    from llama_export.exporter.sources import TINY_ASSET

    trained = open_checkpoint(TINY_ASSET)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name in trained.names():
        tensor = trained.tensor(name).clone()
        if name.startswith("layers.") and tensor.dim() == 2:
            columns = torch.randint(0, tensor.shape[1], (tensor.shape[0],), generator=generator)
            tensor[torch.arange(tensor.shape[0]), columns] = 20 * tensor.abs().amax(1)
        state[name] = tensor
    save_checkpoint(state, trained.args, folder)
    shutil.copyfile(TINY_ASSET / "tokenizer.model", folder / "tokenizer.model")  # the Triton front end needs one
    return folder


def test_a_failed_gate_keeps_export_and_report_and_writes_no_triton_repository(tmp_path):
    pytest.importorskip("tritonclient")  # --triton needs it
    from llama_export.exporter import artifacts

    out = tmp_path / "out"
    done = run_cli("build", "--checkpoint", outlier_checkpoint(tmp_path / "outliers"), "--precision", "int8-wo",
                   "--engine", "skip", "--triton", "--steps", "4", "--out", out)
    assert done.returncode == 1, done.stderr
    assert "triton: not written, the validation gate failed" in done.stderr and "Traceback" not in done.stderr
    manifest = artifacts.load_manifest(out, verify_hashes=True).manifest  # the export is in place and intact
    assert manifest["validation"]["passed"] is False and set(manifest["stages"]) == {"export", "validation"}
    assert "triton" not in manifest and not (out / "triton").exists()
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["passed"] is False and not all(check["passed"] for check in report["gate"]["checks"])
    assert (out / "report" / "report.html").is_file()
