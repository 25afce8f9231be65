"""Cleanup shared by every target: constant folding, identity/no-op removal, dead code, CSE.

Why not `onnxscript.optimizer.optimize` as is: it deduplicates initializers by comparing their bytes and folds
any node whose inputs are small enough — on an export whose weights are external data (or still meta tensors
straight from the tracer) that would read weights. Here folding skips every node that reads a weight-sized
initializer; everything the tracer computes from shapes and small constants still folds.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import optimizer, rewriter
from onnxscript.rewriter.rules import common as rules

from ..pending_weights import is_meta

WEIGHT_SIZE = 1024  # initializers at least this big are weights: never read them to fold

# onnxscript's default rewrite rules (rewriter._DEFAULT_REWRITE_RULES, 0.7), in their order, named from its public
# rules.common, minus those for ops a LLaMA graph never has (Conv, BatchNorm, Clip/Relu/Min/Max chains, Scatter,
# Pad, Gemm bias) and SlicesSplit: each rule is tried on every node, and SlicesSplit, a two-output pattern,
# indexes the whole graph on every try, so its cost grows with the square of the graph (most of a `small`
# cleanup's time; docs/BENCHMARKS.md, "Figures behind the code"). None of them fires on the traced graphs
# (counted per rule over opsets 18/23, fp32/fp16, MHA/GQA).
RULES = [
    *rules.mul_by_1_rule.commute(), *rules.add_0_rule.commute(), rules.sub_0_rule, rules.div_by_1_rule,
    rules.dropout_zero_rule, rules.dropout_inference_rule,
    rules.two_reshapes_matmul_reshape_rule, rules.one_reshape_matmul_reshape_rule,
    rules.cast_constant_of_shape_rule, rules.cast_constant_of_shape_without_value_rule,
    rules.collapse_slice_rule, rules.collapse_slice2_rule, rules.materialize_reshape_shape_rule,
    rules.cast_cast_rule, rules.no_op_cast_rule, rules.no_op_expand_rule, rules.flatten_to_reshape_rule,
    rules.reshape_reshape_rule, rules.no_op_transpose_rule, rules.transpose_transpose_rule,
    rules.unsqueeze_unsqueeze_rule, rules.squeeze_reshape_1d_rule,
]


class _FoldConstants(ir.passes.InPlacePass):
    """onnxscript.optimizer.fold_constants (its default size limits) as a pass, skipping nodes that read weights."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=_reads_weight)


def _reads_weight(node: ir.Node) -> bool | None:
    for value in node.inputs:
        if value is None or not value.is_initializer() or value.const_value is None:
            continue
        tensor = value.const_value
        # A streamed checkpoint tensor (no bytes yet, or external data) is a weight whatever its size: e.g.
        # the per-channel int8 scales that fused_projections concatenates.
        if tensor.size >= WEIGHT_SIZE or is_meta(tensor) or isinstance(tensor, ir.ExternalTensor):
            return False
    return None  # default folding rules


def cleanup(model: ir.Model) -> int:
    """Fold, simplify and prune in place; returns how many nodes went away."""
    before = sum(1 for _ in model.graph)
    passes = ir.passes.Sequential(
        ir.passes.PassManager(
            [
                _FoldConstants(),
                # Identity, CastLike-to-same-type, Transpose∘Transpose, Reshape∘Reshape ... (no fusions)
                rewriter.RewritePass(RULES),
                common_passes.RemoveUnusedNodesPass(),
            ],
            steps=3,
            early_stop=True,
        ),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
    )
    passes(model)
    return before - sum(1 for _ in model.graph)


def remove_unused(model: ir.Model) -> None:
    """Fusions that share inputs (the RoPE tables) leave their old producers behind; drop them."""
    common_passes.RemoveUnusedNodesPass()(model)
