"""The exported graph equals the Torch reference in ONNX Runtime over prefill + decode, in every precision.

Each export is made once per module (tracing takes seconds) and shared by the tests that read it.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from export_helpers import DictCheckpoint, batch_inputs, real_positions, run_session

from llama_export.config import ModelArgs
from llama_export.errors import UserError
from llama_export.exporter.checkpoints import load_model, open_checkpoint
from llama_export.exporter.export import export_to_folder
from llama_export.exporter.meta_format import save_meta_checkpoint
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.sources import TINY_ASSET
from llama_export.validate.runners import OrtRunner, TorchRunner

CONFIGS = {
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=32),
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32),
    "gqa-tied": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32,
                          tie_embeddings=True),
}
FP32_ATOL = 1e-4


def ort_runner(folder, args, fused: bool = True) -> OrtRunner:
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return OrtRunner(folder / "model.onnx", args, graph_optimization_level=level)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def fp32_export(request, tmp_path_factory):
    ckpt = RandomCheckpoint(CONFIGS[request.param], seed=3)
    folder = export_to_folder(ckpt, tmp_path_factory.mktemp("export") / request.param, ExportOptions("fp32"), quiet=True)
    return ckpt, folder


@pytest.mark.parametrize("fused", [True, False], ids=["ort-fused", "ort-unfused"])
def test_fp32_matches_torch_over_prefill_and_decode(fp32_export, fused):
    ckpt, folder = fp32_export
    inputs = batch_inputs(ckpt.args.vocab_size)
    expected = run_session(TorchRunner(load_model(ckpt)), *inputs)
    got = run_session(ort_runner(folder, ckpt.args, fused), *inputs)
    np.testing.assert_allclose(real_positions(got), real_positions(expected), atol=FP32_ATOL, rtol=0)


def test_left_padded_row_matches_its_unpadded_run_in_ort(fp32_export):
    """attention_mask is honoured by the graph: padding changes nothing for the real tokens."""
    from export_helpers import PAD

    ckpt, folder = fp32_export
    runner = ort_runner(folder, ckpt.args)
    ids, mask, decode = batch_inputs(ckpt.args.vocab_size)
    padded = run_session(runner, ids, mask, decode)
    alone = run_session(runner, ids[1:, PAD:], mask[1:, PAD:], decode[:, 1:])
    np.testing.assert_allclose(padded[1, PAD:], alone[0], atol=FP32_ATOL, rtol=0)


def test_graph_is_valid_and_its_data_stays_inside_the_folder(fp32_export):
    _, folder = fp32_export
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data"]
    assert not list(folder.parent.glob(".*tmp-*")), "the staging folder must be gone"


def test_the_vocabulary_matrix_is_stored_once_when_tied(fp32_export):
    """Tied (Llama 3.2): ONE [vocab, dim] initializer, read by the embedding Gather and (transposed) by the final
    MatMul; model.onnx.data holds exactly n_params fp32 values (n_params counts the matrix once: test_sizes)."""
    ckpt, folder = fp32_export
    args = ckpt.args
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    vocab_matrices = [t.name for t in model.graph.initializer if list(t.dims) == [args.vocab_size, args.dim]]
    assert len(vocab_matrices) == (1 if args.tie_embeddings else 2)
    consumers = {node.op_type: node for node in model.graph.node if vocab_matrices[0] in node.input}
    if args.tie_embeddings:
        assert set(consumers) == {"Gather", "Transpose"}
        transposed = consumers["Transpose"].output[0]
        final = next(node for node in model.graph.node if transposed in node.input)
        assert final.op_type == "MatMul"
    lengths = [int(e.value) for t in model.graph.initializer for e in t.external_data if e.key == "length"]
    assert sum(lengths) == args.n_params * 4


def test_io_follows_io_spec(fp32_export):
    import json

    from llama_export import io_spec

    ckpt, folder = fp32_export
    manifest = json.loads((folder / "manifest.json").read_text())
    model = ir.load(folder / "model.onnx")
    graph_io = {"inputs": model.graph.inputs, "outputs": model.graph.outputs}
    for side, values in graph_io.items():
        spec = io_spec.io_spec_json(ckpt.args)[side]
        assert [v.name for v in values] == [t["name"] for t in spec]
        assert [[d if isinstance(d, int) else d.value for d in v.shape] for v in values] == [t["shape"] for t in spec]
    assert manifest["io"] == io_spec.io_spec_json(ckpt.args, "float32")
    assert manifest["args"] == ckpt.args.to_dict() and manifest["opset"] == 23 and manifest["target"] == "none"
    assert set(manifest["libraries"]) == {"torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir"}
    assert manifest["checkpoint"]["fingerprint"] == ckpt.fingerprint()
    data = (folder / "model.onnx.data").read_bytes()
    assert manifest["files"]["model.onnx.data"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_identical_inputs_give_byte_identical_files(fp32_export, tmp_path):
    ckpt, folder = fp32_export
    again = export_to_folder(RandomCheckpoint(ckpt.args, seed=3), tmp_path / "again", ExportOptions("fp32"), quiet=True)
    for name in ("model.onnx", "model.onnx.data", "manifest.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name


# --- reduced precision ----------------------------------------------------------------------------------------

HUGE = 300.0  # embedding scale: a row's sum of squares is ~64 * 300² ≈ 5.8e6, far past fp16's max 65504


@pytest.fixture(scope="module")
def huge_checkpoint():
    args = CONFIGS["gqa"]
    state = RandomCheckpoint(args, seed=4).state_dict()
    generator = torch.Generator().manual_seed(0)
    state["tok_embeddings.weight"] = torch.randn(state["tok_embeddings.weight"].shape, generator=generator) * HUGE
    state = {n: (1 + 0.1 * torch.randn(t.shape, generator=generator) if t.dim() == 1 else t) for n, t in state.items()}
    return DictCheckpoint(args, state, "huge activations")


@pytest.fixture(scope="module")
def fp16_export(huge_checkpoint, tmp_path_factory):
    return export_to_folder(huge_checkpoint, tmp_path_factory.mktemp("fp16") / "out", ExportOptions("fp16"), quiet=True)


def test_huge_activations_would_overflow_a_naive_fp16_norm(huge_checkpoint):
    x = huge_checkpoint.tensor("tok_embeddings.weight").half()
    assert torch.isinf((x * x).sum(-1)).all()


def test_fp16_export_is_finite_and_as_close_to_fp32_as_torch_fp16(huge_checkpoint, fp16_export):
    """Tolerance from Torch itself: the exported fp16 graph may differ from the fp32 reference by at most
    3x what Torch's own fp16 model differs by (fp16 rounding of weights, matmuls and the KV cache)."""
    inputs = batch_inputs(huge_checkpoint.args.vocab_size, seed=1)
    ref32 = real_positions(run_session(TorchRunner(load_model(huge_checkpoint)), *inputs))
    ref16 = real_positions(run_session(TorchRunner(load_model(huge_checkpoint, torch.float16)), *inputs))
    got = real_positions(run_session(ort_runner(fp16_export, huge_checkpoint.args), *inputs))
    assert np.isfinite(got).all() and np.isfinite(ref16).all()
    torch_error = np.abs(ref16 - ref32).max()
    assert 0 < torch_error < 0.1 * np.abs(ref32).max()
    assert np.abs(got - ref32).max() <= 3 * torch_error


def _dtypes_of(path, op_type: str) -> set:
    model = ir.load(path)
    return {node.inputs[0].dtype for node in model.graph if node.op_type == op_type}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reductions_softmax_rope_and_logits_stay_fp32(precision, huge_checkpoint, fp16_export, tmp_path):
    folder = fp16_export if precision == "fp16" else export_to_folder(
        huge_checkpoint, tmp_path / "bf16", ExportOptions("bf16"), quiet=True)
    low = ir.DataType.FLOAT16 if precision == "fp16" else ir.DataType.BFLOAT16
    path = folder / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    for op in ("ReduceMean", "Softmax", "Cos", "Sin"):
        assert _dtypes_of(path, op) == {ir.DataType.FLOAT}, op
    assert low in _dtypes_of(path, "MatMul"), "weights and matmuls run in the model dtype"
    model = ir.load(path)
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT  # logits
    assert {v.dtype for v in [*model.graph.inputs[3:], *model.graph.outputs[1:]]} == {low}  # KV cache


def test_a_graph_ort_cannot_run_is_one_line_naming_the_op(tmp_path):
    """When ONNX Runtime's CPU provider has no kernel for a graph (today: bf16 arithmetic), `validate` ends in one
    line naming the op and node, exit 2, after the Torch sides (the bf16 noise floor among them) ran; no report.
    Skipped where this ORT runs the graph: then there is nothing to refuse."""
    from click.testing import CliRunner

    from llama_export.cli import main

    folder = export_to_folder(RandomCheckpoint(CONFIGS["gqa"], seed=3), tmp_path / "bf16", ExportOptions("bf16"),
                              quiet=True)
    try:
        ort_runner(folder, CONFIGS["gqa"])
    except UserError as exc:
        refusal = str(exc)
    else:
        pytest.skip("this ONNX Runtime runs bf16 graphs on CPU")
    assert re.fullmatch(r".*cannot run .*model\.onnx: no kernel for \w+\(\d+\) \(node '[^']+'\).*", refusal)
    result = CliRunner().invoke(main, ["validate", str(folder), "--steps", "2", "--prompt-tokens", "8"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and lines[-1] == f"error: {refusal}", result.output
    assert "validate: noise floor (torch bfloat16)" in lines and "Traceback" not in result.output
    assert not (folder / "report").exists()


# --- checkpoint formats ---------------------------------------------------------------------------------------


def test_hf_and_meta_checkpoints_of_the_same_weights_export_the_same_model(tmp_path, tiny_args, tiny_state,
                                                                            write_hf):
    hf = open_checkpoint(write_hf(tiny_state, tiny_args, tmp_path / "hf"))
    save_meta_checkpoint(tiny_state, tiny_args, tmp_path / "meta", n_shards=2)
    meta = open_checkpoint(tmp_path / "meta")
    inputs = batch_inputs(tiny_args.vocab_size, seed=2)
    logits = [run_session(ort_runner(export_to_folder(c, tmp_path / f"out-{i}", ExportOptions("fp32"), quiet=True), tiny_args),
                          *inputs) for i, c in enumerate((hf, meta))]
    np.testing.assert_allclose(real_positions(logits[0]), real_positions(logits[1]), atol=1e-5, rtol=0)
    expected = run_session(TorchRunner(load_model(DictCheckpoint(tiny_args, tiny_state))), *inputs)
    np.testing.assert_allclose(real_positions(logits[0]), real_positions(expected), atol=FP32_ATOL, rtol=0)


def test_builtin_tiny_model_matches_torch(tmp_path):
    """The trained asset (params.json + model.safetensors + tokenizer.model) exports, matches
    Torch over a padded batch, and its tokenizer travels with the export."""
    ckpt = open_checkpoint(TINY_ASSET)
    folder = export_to_folder(ckpt, tmp_path / "tiny", ExportOptions("fp32"), quiet=True)
    inputs = batch_inputs(ckpt.args.vocab_size)
    expected = run_session(TorchRunner(load_model(ckpt)), *inputs)
    got = run_session(ort_runner(folder, ckpt.args), *inputs)
    np.testing.assert_allclose(real_positions(got), real_positions(expected), atol=FP32_ATOL, rtol=0)
    assert (folder / "tokenizer.model").read_bytes() == (TINY_ASSET / "tokenizer.model").read_bytes()
