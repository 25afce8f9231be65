"""One traced block replicated n_layers times gives the graph a full trace gives: same ops, same ORT logits."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest
import torch
from export_helpers import batch_inputs, run_session

from llama_export.config import ModelArgs
from llama_export.exporter.checkpoints import load_model
from llama_export.exporter.export import _trace, trace_graph
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.exporter.replicate import block_nodes, replicate_block
from llama_export.graphs.passes import apply_target
from llama_export.pending_weights import is_meta
from llama_export.validate.runners import OrtRunner, TorchRunner

GQA3 = ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


def ops(model: ir.Model) -> collections.Counter:
    return collections.Counter((n.domain, n.op_type) for n in model.graph)


CKPT = RandomCheckpoint(GQA3, seed=4)


def with_weights(model: ir.Model) -> ir.Model:
    """The graph with the checkpoint's tensors embedded (tiny model: no external data needed)."""
    state = dict(CKPT.iter_tensors())
    for name, value in model.graph.initializers.items():
        if is_meta(value.const_value):
            value.const_value = ir.tensor(state[name].numpy(), name=name)
    return model


def copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


@pytest.fixture(scope="module")
def traced():
    """(full trace, one block replicated), weights embedded."""
    return with_weights(trace_graph(GQA3, replicate=False)), with_weights(trace_graph(GQA3))


def test_same_io_initializers_and_ops_after_cleanup(traced):
    full, replicated = traced
    for side in ("inputs", "outputs"):
        assert [(v.name, v.dtype, str(v.shape)) for v in getattr(replicated.graph, side)] == \
               [(v.name, v.dtype, str(v.shape)) for v in getattr(full.graph, side)]
    assert {n: tuple(v.shape) for n, v in replicated.graph.initializers.items()} == \
           {n: tuple(v.shape) for n, v in full.graph.initializers.items()}
    # The full trace repeats small Constants per block where the copy shares block 0's; cleanup's CSE merges both.
    full_clean, _ = apply_target(copy(full), GQA3, "none")
    replicated_clean, _ = apply_target(copy(replicated), GQA3, "none")
    assert ops(replicated_clean) == ops(full_clean)


@pytest.mark.parametrize("target", ["none", "onnx", "ort"])
def test_same_logits_in_ort_for_every_target(traced, target):
    ids, mask, decode = batch_inputs(GQA3.vocab_size)
    logits = []
    for model in traced:
        fused, _ = apply_target(copy(model), GQA3, target)
        serialized = ir.to_proto(fused).SerializeToString()
        logits.append(run_session(OrtRunner(serialized, GQA3), ids, mask, decode))
    np.testing.assert_array_equal(logits[1], logits[0])
    reference = run_session(TorchRunner(load_model(CKPT)), ids, mask, decode)
    np.testing.assert_allclose(logits[1], reference, atol=1e-4, rtol=0)


def test_a_trace_without_block_scopes_is_refused():
    model = _trace(GQA3.replace(n_layers=1), torch.float32, 23)
    assert block_nodes(model.graph)
    for node in model.graph:
        node.metadata_props.clear()
    with pytest.raises(RuntimeError, match="scoped 'layers.0'"):
        replicate_block(model, 3)
