"""What an exported graph really is (precision, float dtype, fusion target), read from model.onnx itself, and
the check that the manifest says the same (artifacts.load_manifest runs it on every folder it reads)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .artifacts import MANIFEST, Artifacts

# Which fusion target a graph was exported for, from the normalization op it holds (every target rewrites all
# 2·n_layers+1 RMSNorms, graphs/passes.py).
_TARGET_OPS = (("plugin", lambda domain, op: domain == "llama_export"),
               ("ort", lambda domain, op: op in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")),
               ("onnx", lambda domain, op: domain in ("", "ai.onnx") and op == "RMSNormalization"))
_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16"}  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16


def graph_facts(model_path: Path) -> dict:
    """Precision, KV/float dtype and fusion target as the ONNX graph itself says (no weight bytes are read)."""
    import onnx
    from google.protobuf.message import DecodeError

    from ..io_spec import past_key

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise UserError(f"{model_path} is not a readable ONNX model ({type(exc).__name__}); the file is damaged: "
                        "rebuild its folder") from None
    graph = model.graph
    past = next((i for i in graph.input if i.name == past_key(0)), None)
    float_dtype = _FLOAT_TYPES.get(past.type.tensor_type.elem_type) if past is not None else None
    weight_types = {t.data_type for t in graph.initializer}
    int4_weights = bool(weight_types & {onnx.TensorProto.INT4, onnx.TensorProto.UINT4})
    int8_weights = onnx.TensorProto.INT8 in weight_types
    int8_activations = any(n.op_type == "QuantizeLinear" for n in graph.node)
    precision = ("int8" if int8_activations else "int4-wo" if int4_weights else "int8-wo" if int8_weights
                 else float_dtype)
    ops = {(n.domain, n.op_type) for n in graph.node}
    target = next((name for name, holds in _TARGET_OPS if any(holds(d, o) for d, o in ops)), "none")
    return {"precision": precision, "float_dtype": float_dtype, "target": target}


def check_graph(built: Artifacts) -> None:
    """The manifest's precision (and float dtype) and target must be the graph's: a manifest saying fp16 over an
    fp32 graph would have it judged by the looser fp16 gate."""
    facts = graph_facts(built.model_path)
    manifest = built.manifest
    said_float = manifest.get("float_dtype") or (built.precision if built.precision in _FLOAT_TYPES.values()
                                                 else "fp32")
    said = {"precision": built.precision, "float_dtype": said_float, "target": manifest.get("target", "none")}
    for key, value in said.items():
        if facts[key] != value:
            raise UserError(f"{built.model_path} is a {key} {facts[key]} graph but {built.folder / MANIFEST} says "
                            f"{value}; the folder was changed after the build: rebuild {built.folder}")


__all__ = ["check_graph", "graph_facts"]
