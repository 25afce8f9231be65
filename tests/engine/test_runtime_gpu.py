"""The engine on a GPU against the Torch reference (the trained tiny model, fp32): TensorRTRunner through KVSession
with the KV cache kept on the device, batched generation on the device cache, and `validate --backend tensorrt`
end to end. Needs an NVIDIA GPU, a CUDA build of torch and TensorRT or TensorRT-RTX (the builder that builds the
engine also runs it)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _gpu_and_tensorrt() -> bool:
    import torch

    has_trt = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))
    return has_trt and torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not _gpu_and_tensorrt(), reason="needs an NVIDIA GPU, a CUDA build of torch and tensorrt or tensorrt-rtx")]

PROMPTS = ["The for statement in Python", "Dictionaries are"]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_export.cli", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def engine_folder(tmp_path_factory) -> Path:
    from llama_export.build import BuildOptions, build
    from llama_export.engine.profiles import ProfileLimits
    from llama_export.exporter.sources import resolve_checkpoint

    options = BuildOptions(engine="require", validate=False, triton=False,
                           limits=ProfileLimits(max_batch=2, max_input=64, max_seq=128))
    return build(resolve_checkpoint(), tmp_path_factory.mktemp("gpu-engine") / "tiny-fp32", options,
                 quiet=True).folder


def test_engine_matches_torch_with_the_cache_on_the_device(engine_folder):
    import torch

    from llama_export.engine.profiles import DECODE
    from llama_export.engine.runtime import TensorRTRunner, engine_section
    from llama_export.exporter.artifacts import load_manifest
    from llama_export.exporter.checkpoints import load_model
    from llama_export.validate.pipeline import reference_checkpoint
    from llama_export.validate.runners import KVSession, TorchRunner

    built = load_manifest(engine_folder)
    engine = engine_section(built)
    runner = TensorRTRunner(engine_folder / engine["file"], built.args, engine)
    reference = TorchRunner(load_model(reference_checkpoint(built)))
    prompt = built.tokenizer().encode(PROMPTS[0])
    on_engine, on_torch = KVSession(runner), KVSession(reference)
    logits = [(on_engine.prefill([prompt]), on_torch.prefill([prompt]))]
    for _ in range(12):
        token = int(np.argmax(logits[-1][1][0, -1]))
        returned = dict(on_engine.past)
        assert all(isinstance(t, torch.Tensor) and t.is_cuda for t in returned.values()), "cache left the GPU"
        logits.append((on_engine.step([token]), on_torch.step([token])))
        # present.* of the last step were bound as this step's past_key_values.* in place: same device memory
        for name, tensor in returned.items():
            assert runner.context.get_tensor_address(name) == tensor.data_ptr(), name
    assert runner.profile == DECODE
    for engine_logits, torch_logits in logits:
        assert isinstance(engine_logits, np.ndarray)
        np.testing.assert_array_equal(engine_logits.argmax(-1), torch_logits.argmax(-1))
        assert np.abs(engine_logits - torch_logits).max() < 5e-2 * np.abs(torch_logits).max()
    runner.close()


def test_batched_generation_on_the_device_cache_equals_each_prompt_alone(engine_folder):
    common = ("generate", engine_folder, "--backend", "tensorrt", "--max-new-tokens", "24")
    together = cli(*common, *(a for p in PROMPTS for a in ("--prompt", p)))
    assert together.returncode == 0, together.stderr
    alone = [cli(*common, "--prompt", p) for p in PROMPTS]
    assert all(a.returncode == 0 for a in alone), [a.stderr for a in alone]
    assert together.stdout == "".join(a.stdout for a in alone)  # each row's tokens are its batch-1 tokens


def test_validate_the_engine_against_torch(engine_folder):
    done = cli("validate", engine_folder, "--backend", "tensorrt", "--prompt-tokens", "48", "--steps", "16",
               "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((engine_folder / "report-tensorrt" / "report.json").read_text())
    manifest = json.loads((engine_folder / "manifest.json").read_text())
    assert report["passed"] and report["candidate"]["runner"].startswith(manifest["engine"]["builder"])
    assert not (engine_folder / "report").exists(), "the ORT report's folder is not the engine's"
