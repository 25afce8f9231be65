"""Ordered pass pipelines per fusion target, with fire counts checked against the model's structure.

    onnx   : cleanup → RMSNormalization → RotaryEmbedding → Attention → fused projections → cleanup  (opset 23)
    ort    : cleanup → SimplifiedLayerNormalization → SkipSimplifiedLayerNormalization
             → com.microsoft RotaryEmbedding → MultiHeadAttention (GQA at opset 23: ONNX Attention)
             → fused projections → cleanup
    plugin : cleanup → llama_export.RMSNorm → llama_export.RotaryEmbedding → cleanup → add_functions
    none   : cleanup
A LLaMA has 2·n_layers+1 RMSNorms (two per block, one final), 2·n_layers rotaries (q and k per block) and
n_layers attentions, and two fused projection groups per layer (q/k/v, w1/w3; for int8 weights only on
`ort`, see fused_projections.py); a pass that
fires any other number of times means a pattern drifted from what the
exporter produces, and `FusionCountError` names the pass instead of shipping a half-fused graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
import onnx_ir as ir

from ..config import ModelArgs
from . import attention, cleanup, fused_projections, rms_norm, rotary, skip_norm

TARGETS = ("onnx", "ort", "plugin", "none")

# Default target: `none`. `onnx` is the most portable fused form for ONNX Runtime and TensorRT-RTX builds it,
# but full TensorRT before 10.15 imports none of the opset-23 RMSNormalization, RotaryEmbedding and Attention
# ops, and engines are built from the same file, so the default must be a graph every backend builds
# (docs/ENGINES.md). Ask for --target onnx / ort for ORT deployments.
DEFAULT_TARGET = "none"
ONNX_TARGET_OPSET = 23
# Targets whose fused projections also concatenate int8 weights. Not `onnx`: engines are built from it and
# TensorRT refuses an int8 constant that feeds anything but a DequantizeLinear (fused_projections.py).
INT8_PROJECTION_TARGETS = ("ort",)


class FusionCountError(RuntimeError):
    """A pass fired a different number of times than the model's structure requires."""


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[ir.Model], int]
    expected: int | None  # None: a cleanup, whatever it removes


def _rule_pass(name: str, ruleset, expected: int | None) -> Pass:
    def run(model: ir.Model) -> int:
        count = ruleset.apply_to_model(model)
        cleanup.remove_unused(model)
        return count

    return Pass(name, run, expected)


def _float_dtype(model: ir.Model) -> ir.DataType:
    return next(v.dtype for v in model.graph.inputs if v.name.startswith("past_key_values."))


def expected_counts(args: ModelArgs, target: str, dtype: ir.DataType = ir.DataType.FLOAT,
                    float_weights: bool = True) -> dict[str, int]:
    norms, rotaries, attentions = 2 * args.n_layers + 1, 2 * args.n_layers, args.n_layers
    projections = 2 * args.n_layers if float_weights or target in INT8_PROJECTION_TARGETS else 0
    if target == "onnx":
        return {"rms_norm": norms, "rotary": rotaries, "attention": attentions, "fused_projections": projections}
    if target == "ort":
        # MHA on ORT CPU is float32-only: fp16/bf16 graphs keep attention decomposed (attention.py).
        mha = attentions if dtype == ir.DataType.FLOAT else 0
        return {"rms_norm": norms, "skip_rms_norm": norms - 1, "rotary": rotaries, "attention": mha,
                "fused_projections": projections}
    if target == "plugin":
        return {"rms_norm": norms, "rotary": rotaries}
    if target == "none":
        return {}
    raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")


def pipeline(args: ModelArgs, target: str, dtype: ir.DataType = ir.DataType.FLOAT,
             float_weights: bool = True, opset: int = ONNX_TARGET_OPSET) -> list[Pass]:
    expected = expected_counts(args, target, dtype, float_weights)
    passes = [Pass("cleanup", cleanup.cleanup, None)]
    if target in ("onnx", "ort", "plugin"):
        passes.append(_rule_pass("rms_norm", rms_norm.rules(target), expected["rms_norm"]))
    if target == "ort":
        passes.append(_rule_pass("skip_rms_norm", skip_norm.rules(), expected["skip_rms_norm"]))
    if target in ("onnx", "ort", "plugin"):
        passes.append(_rule_pass("rotary", rotary.rules(target, args), expected["rotary"]))
    if target in ("onnx", "ort"):
        passes.append(_rule_pass("attention", attention.rules(target, args, opset), expected["attention"]))
        int8 = target in INT8_PROJECTION_TARGETS
        passes.append(Pass("fused_projections", lambda m: fused_projections.fuse_projections(m, args.n_layers, int8),
                           expected["fused_projections"]))
    if target != "none":
        passes.append(Pass("final_cleanup", cleanup.cleanup, None))
    return passes


def apply_target(model: onnx.ModelProto | ir.Model, args: ModelArgs, target: str,
                 ) -> tuple[onnx.ModelProto | ir.Model, dict[str, int]]:
    """Run `target`'s pipeline in place on an ir.Model (a ModelProto is converted and a new one returned).

    Returns (model, counts): every pass's fire count (cleanups: nodes removed). Raises FusionCountError naming
    the pass whose count differs from the model's structure.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    is_proto = isinstance(model, onnx.ModelProto)
    ir_model = ir.serde.deserialize_model(model) if is_proto else model
    opset = ir_model.opset_imports.get("", 0)
    if target == "onnx" and opset < ONNX_TARGET_OPSET:
        raise ValueError(f"target onnx needs opset {ONNX_TARGET_OPSET} (RMSNormalization, RotaryEmbedding, "
                         f"Attention); the model imports {opset}: export with --opset 23")
    if target == "ort":
        ir_model.opset_imports.setdefault("com.microsoft", 1)
    counts: dict[str, int] = {}
    for p in pipeline(args, target, _float_dtype(ir_model), fused_projections.float_weights(ir_model), opset):
        count = p.run(ir_model)
        counts[p.name] = counts.get(p.name, 0) + count if p.expected is None else count
        if p.expected is not None and count != p.expected:
            raise FusionCountError(f"pass {p.name!r} ({target}) fired {count} times, expected {p.expected} "
                                   f"for {args.n_layers} layers: the traced pattern changed or a check refused it")
    if target == "plugin":
        _attach_functions(ir_model)
    return (ir.serde.serialize_model(ir_model) if is_proto else ir_model), counts


def _attach_functions(model: ir.Model) -> None:
    """Plugin nodes carry their decomposition as model-local functions so ORT / onnx.reference run them.

    plugins.onnx_support.add_functions works on a ModelProto; serialising a whole export (external weights)
    just to add two functions would be wasteful, so it runs on a stub holding one node per op used."""
    from ..plugins import spec
    from ..plugins.onnx_support import add_functions

    used = sorted({n.op_type for n in model.graph if n.domain == spec.DOMAIN})
    stub_nodes = [spec.make_node(op, [f"i{k}" for k in range(len(spec.OPS[op].inputs))], [f"o_{op}"])
                  for op in used]
    opset = model.opset_imports.get("", 0)
    stub = onnx.helper.make_model(onnx.helper.make_graph(stub_nodes, "stub", [], []),
                                  opset_imports=[onnx.helper.make_opsetid("", opset)])
    add_functions(stub)
    model.opset_imports.setdefault(spec.DOMAIN, spec.VERSION)
    for proto in stub.functions:
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function
