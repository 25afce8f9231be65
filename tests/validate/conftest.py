"""Exported tiny models for the validation tests (the built-in trained tiny model), built once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from llama_export.exporter.checkpoints import file_sha256
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.sources import resolve_checkpoint


def perturb_initializer(folder: Path, name: str, scale: float, seed: int = 0) -> None:
    """Add noise to one weight *in the exported files* (its bytes in the external data), so the candidate and
    only the candidate differs from the reference."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    init = next(i for i in model.graph.initializer if i.name == name)
    info = {entry.key: entry.value for entry in init.external_data}
    dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}[init.data_type]
    offset, length = int(info.get("offset", 0)), int(info["length"])
    with open(folder / info["location"], "r+b") as f:
        f.seek(offset)
        weight = np.frombuffer(f.read(length), dtype=dtype).copy()
        weight += (scale * np.random.default_rng(seed).standard_normal(weight.shape)).astype(dtype)
        f.seek(offset)
        f.write(weight.tobytes())
    # As an export that wrote these bytes would record them: readers verify files against the manifest.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][info["location"]]["sha256"] = file_sha256(folder / info["location"])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("validate-exports")


@pytest.fixture(scope="session")
def fp32_dir(exports) -> Path:
    return export_to_folder(resolve_checkpoint(), exports / "tiny-fp32", ExportOptions("fp32"), quiet=True)


@pytest.fixture(scope="session")
def perturbed_dir(fp32_dir, exports) -> Path:
    """layers.1.feed_forward.w2 perturbed by ~10% of its scale (init std 0.02)."""
    folder = exports / "tiny-fp32-perturbed"
    shutil.copytree(fp32_dir, folder)
    shutil.rmtree(folder / "report", ignore_errors=True)
    perturb_initializer(folder, "layers.1.feed_forward.w2.weight", scale=0.002)
    return folder


@pytest.fixture(scope="session")
def fp16_dir(exports) -> Path:
    return export_to_folder(resolve_checkpoint(), exports / "tiny-fp16", ExportOptions("fp16"), quiet=True)
