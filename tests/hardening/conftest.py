"""Fixtures for the hardening tests: one tiny export, copied per test before it is damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """One fp32 export that tests copy before they tamper with it: a one-layer random model with the tiny
    model's vocabulary, so it gets the tiny tokenizer (generate and validate need one) and exports in seconds."""
    from llama_export.config import ModelArgs
    from llama_export.exporter.export import export_to_folder
    from llama_export.exporter.random_init import RandomCheckpoint

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=32, max_seq_len=256)
    out = tmp_path_factory.mktemp("hardening") / "small-fp32"
    return export_to_folder(RandomCheckpoint(args, 0), out, quiet=True)


@pytest.fixture
def export_copy(tiny_export, tmp_path) -> Path:
    """A private copy of the tiny export, free to damage."""
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    return copy


@pytest.fixture(scope="session")
def tiny_engine_folder(tmp_path_factory) -> Path:
    """A build of the hardening model with a real TensorRT-RTX engine (built on CPU) of small profile limits:
    batch 1, prompts up to 8 tokens, 16 tokens of KV cache. Not validated, no Triton repository."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install '.[tensorrt-rtx]')")
    from llama_export.build import BuildOptions, build
    from llama_export.config import ModelArgs
    from llama_export.engine.profiles import ProfileLimits
    from llama_export.exporter.random_init import RandomCheckpoint

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=32, max_seq_len=256)
    options = BuildOptions(engine="require", builder="tensorrt-rtx", validate=False, triton=False,
                           limits=ProfileLimits(max_batch=1, max_input=8, max_seq=16))
    out = tmp_path_factory.mktemp("hardening-engine") / "small-fp32"
    return build(RandomCheckpoint(args, 0), out, options, quiet=True).folder
