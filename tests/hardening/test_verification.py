"""Deliver 2: every reader checks the folder against its manifest (sizes always, sha256 by default for validate,
triton and engine-info), and the graph's real precision/target against the manifest's."""

from __future__ import annotations

import json

import pytest
from hardening_helpers import assert_one_line_error, run_cli, snapshot

from llama_export.errors import UserError
from llama_export.exporter import artifacts


def flip_low_bit(path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_a_flipped_bit_fails_validate_before_any_work(export_copy):
    flip_low_bit(export_copy / "model.onnx.data", offset=len((export_copy / "model.onnx.data").read_bytes()) // 2)
    before = snapshot(export_copy)
    artifacts.load_manifest(export_copy)  # sizes match: readers that skip hashes still open it
    with pytest.raises(UserError, match="does not match its sha256"):
        artifacts.load_manifest(export_copy, verify_hashes=True)
    outcome = run_cli("validate", export_copy, "--quiet")
    assert_one_line_error(outcome, str(export_copy / "model.onnx.data"), "sha256", "--no-verify")
    assert snapshot(export_copy) == before, "no report written for a folder that failed verification"


def test_a_truncated_data_file_stops_triton_and_generate(export_copy, tmp_path):
    data = export_copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4096])
    before = snapshot(tmp_path)
    repo = tmp_path / "repo"
    assert_one_line_error(run_cli("triton", export_copy, "--repo", repo), str(data), "bytes but manifest.json")
    assert_one_line_error(run_cli("generate", export_copy, "--prompt", "hi", "--max-new-tokens", "1"), str(data))
    assert snapshot(tmp_path) == before and not repo.exists()


def test_a_manifest_claiming_another_precision_is_refused(export_copy):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["precision"] = "fp16"  # an fp32 graph judged by the looser fp16 gate would pass too easily
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="precision fp32 graph but .* says fp16"):
        artifacts.load_manifest(export_copy)
    manifest["precision"], manifest["target"] = "fp32", "ort"
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="target none graph but .* says ort"):
        artifacts.load_manifest(export_copy)


def test_a_damaged_model_file_of_the_right_size_is_one_line(export_copy):
    model = export_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[:64] = b"\xff" * 64
    model.write_bytes(bytes(data))
    outcome = run_cli("generate", export_copy, "--prompt", "hi", "--max-new-tokens", "1")
    assert_one_line_error(outcome, str(model), "not a readable ONNX model")


def test_an_incomplete_engine_section_is_one_line(export_copy):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["engine"] = {"file": "engine.plan", "builder": "tensorrt-rtx"}
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    outcome = run_cli("engine-info", export_copy)
    assert_one_line_error(outcome, "incomplete engine section", "sha256")


def test_a_manifest_entry_outside_the_folder_is_refused(export_copy):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["files"]["../escape"] = {"sha256": "0" * 64, "size": 1}
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="damaged entry for '../escape'"):
        artifacts.load_manifest(export_copy)


@pytest.mark.parametrize("weight_type, activations, expected", [
    ("FLOAT16", False, "fp16"), ("INT8", False, "int8-wo"), ("INT4", False, "int4-wo"), ("INT8", True, "int8")])
def test_graph_facts_read_the_precision_from_the_graph(tmp_path, weight_type, activations, expected):
    import onnx
    from onnx import TensorProto, helper

    from llama_export.exporter.graph_check import graph_facts
    from llama_export.io_spec import past_key

    weight = helper.make_tensor("w", getattr(TensorProto, weight_type), [2], [1, 1])
    nodes = [helper.make_node("RMSNormalization", ["x", "w"], ["y"])]
    if activations:
        nodes.append(helper.make_node("QuantizeLinear", ["y", "s"], ["q"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(past_key(0), TensorProto.FLOAT16, [1])],
                              [], initializer=[weight])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert graph_facts(path) == {"precision": expected, "float_dtype": "fp16", "target": "onnx"}
