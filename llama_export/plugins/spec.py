"""The contract of each custom node: domain, op name, version, attributes, inputs/outputs and shape/type rules.

graphs/ (the `plugin` fusion target) emits these nodes with `make_node`; the numpy references, the ONNX
schemas and model-local functions, the Triton kernels and the TensorRT plugins all read this file, so a
node written by one is understood by the others.

RMSNorm(x, weight) -> y
    x [..., hidden], weight [hidden], y like x; all type T. y = cast_T(x32 * rsqrt(mean(x32², -1) + epsilon))
    * weight — the reference model's order: normalise in fp32, cast back, then scale in T.

RotaryEmbedding(x, cos, sin) -> y
    x [batch, heads, seq, head_dim] (type T), cos / sin [batch, 1, seq, head_dim] float32, y like x.
    y = cast_T(x32 * cos + rotate(x32) * sin), rotate-half when interleaved=0 (our graphs), pairwise when 1.
    Why this I/O and not opset-23's (x, position_ids, cos_cache, sin_cache):
    - the traced graph already computes these tables once per forward (position_ids x inv_freq, Llama 3.1
      scaling included) and every layer's q and k read them: the rewrite reuses them as they are, no cache
      initializer, no max-position limit, no scaling logic duplicated in the plugin;
    - the tables stay fp32 (DESIGN: RoPE tables in fp32) while x may be fp16/bf16;
    - 4-D x needs no num_heads attribute: q (n_heads) and k (n_kv_heads, GQA) are two nodes that share tables;
    - full-width tables (both halves) make the node exactly the model's math, whatever the tables hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

DOMAIN = "llama_export"
VERSION = 1

# ONNX type strings for schemas, numpy-style names for the shape/type rules (TensorRT and torch map to them).
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
DTYPE_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16"}
FLOAT_DTYPES = tuple(DTYPE_NAMES[t] for t in FLOAT_TYPES)


@dataclass(frozen=True)
class Attr:
    name: str
    type: str  # "float" | "int" | "string"
    default: float | int | str
    doc: str
    allowed: tuple | None = None


@dataclass(frozen=True)
class Port:
    name: str
    type_param: str
    doc: str


@dataclass(frozen=True)
class OpSpec:
    name: str
    doc: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    attributes: tuple[Attr, ...]
    type_params: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def plugin_id(self) -> str:
        """TensorRT plugin id, `namespace::name`."""
        return f"{DOMAIN}::{self.name}"

    def attribute(self, name: str) -> Attr:
        return next(a for a in self.all_attributes if a.name == name)

    @property
    def all_attributes(self) -> tuple[Attr, ...]:
        return self.attributes + TENSORRT_ATTRS


# TensorRT's ONNX parser maps an unknown op to the plugin named op_type in namespace `plugin_namespace`,
# and uses its ahead-of-time kernel (no Python at run time) when `aot` is 1. It strips both before
# handing the remaining attributes to the plugin; ORT and the reference evaluator ignore them.
TENSORRT_ATTRS = (
    Attr("plugin_namespace", "string", DOMAIN, "TensorRT plugin namespace (ONNX parser convention)"),
    Attr("aot", "int", 1, "1: TensorRT uses the plugin's ahead-of-time compiled kernel", (0, 1)),
)

RMSNORM = OpSpec(
    name="RMSNorm",
    doc="y = cast_T(x32 * rsqrt(mean(x32^2, axis=-1) + epsilon)) * weight; reductions in float32.",
    inputs=(Port("x", "T", "[..., hidden]"), Port("weight", "T", "[hidden]")),
    outputs=(Port("y", "T", "shape and type of x"),),
    attributes=(Attr("epsilon", "float", 1e-5, "added to the mean square before the square root"),),
    type_params={"T": FLOAT_TYPES},
)

ROTARY = OpSpec(
    name="RotaryEmbedding",
    doc="y = cast_T(x32 * cos + rotate(x32) * sin); rotate-half (interleaved=0) or pairwise (interleaved=1).",
    inputs=(
        Port("x", "T", "[batch, heads, seq, head_dim], head_dim even"),
        Port("cos", "F", "[batch, 1, seq, head_dim] float32"),
        Port("sin", "F", "[batch, 1, seq, head_dim] float32"),
    ),
    outputs=(Port("y", "T", "shape and type of x"),),
    attributes=(Attr("interleaved", "int", 0, "0: rotate-half pairs (i, i + head_dim/2); 1: pairs (2i, 2i+1)",
                     (0, 1)),),
    type_params={"T": FLOAT_TYPES, "F": ("tensor(float)",)},
)

OPS = {op.name: op for op in (RMSNORM, ROTARY)}


def make_node(op: str | OpSpec, inputs: Sequence[str], outputs: Sequence[str], *, name: str | None = None,
              tensorrt: bool = True, **attrs) -> onnx.NodeProto:
    """A `llama_export` node with every attribute written out (defaults filled in, values checked).

    tensorrt=True adds plugin_namespace/aot so TensorRT's parser binds the node to the AOT plugin.
    """
    spec = OPS[op] if isinstance(op, str) else op
    if len(inputs) != len(spec.inputs) or len(outputs) != len(spec.outputs):
        raise ValueError(f"{spec.name} takes inputs {[p.name for p in spec.inputs]} and outputs "
                         f"{[p.name for p in spec.outputs]}, got {list(inputs)} -> {list(outputs)}")
    known = {a.name for a in spec.all_attributes}
    unknown = sorted(set(attrs) - known)
    if unknown:
        raise ValueError(f"{spec.name} has no attribute(s) {unknown}; known: {sorted(known)}")
    values = {}
    for a in spec.attributes + (TENSORRT_ATTRS if tensorrt else ()):
        value = attrs.get(a.name, a.default)
        values[a.name] = _checked(spec, a, value)
    return onnx.helper.make_node(spec.name, list(inputs), list(outputs), name=name, domain=DOMAIN, **values)


def _checked(spec: OpSpec, a: Attr, value):
    converted = {"float": float, "int": int, "string": str}[a.type](value)
    if a.type == "int" and converted != value:
        raise ValueError(f"{spec.name}.{a.name} must be an int, got {value!r}")
    if a.allowed is not None and converted not in a.allowed:
        raise ValueError(f"{spec.name}.{a.name} must be one of {a.allowed}, got {value!r}")
    return converted


def node_attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values, defaults filled in for the ones it leaves out."""
    spec = OPS[node.op_type]
    values = {a.name: a.default for a in spec.attributes}
    values.update({a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


# Shape/type rules: plain functions over ints (or TensorRT symbolic dims, which support == only when
# constant) and dtype names, shared by the TensorRT descriptor functions and the tests.

def _same(a, b) -> bool:
    return not (isinstance(a, int) and isinstance(b, int)) or a == b


def rms_norm_output(x_shape: Sequence, x_dtype: str, w_shape: Sequence, w_dtype: str) -> tuple[tuple, str]:
    if x_dtype not in FLOAT_DTYPES or w_dtype != x_dtype:
        raise ValueError(f"RMSNorm: x and weight must share one of {FLOAT_DTYPES}, got {x_dtype}, {w_dtype}")
    if len(x_shape) < 1 or len(w_shape) != 1 or not _same(x_shape[-1], w_shape[0]):
        raise ValueError(f"RMSNorm: weight must be [hidden] matching x's last dim, got x {list(x_shape)}, "
                         f"weight {list(w_shape)}")
    return tuple(x_shape), x_dtype


def rotary_output(x_shape: Sequence, x_dtype: str, cos_shape: Sequence, cos_dtype: str,
                  sin_shape: Sequence, sin_dtype: str) -> tuple[tuple, str]:
    if x_dtype not in FLOAT_DTYPES or cos_dtype != "float32" or sin_dtype != "float32":
        raise ValueError(f"RotaryEmbedding: x must be one of {FLOAT_DTYPES} and cos/sin float32, got "
                         f"{x_dtype}, {cos_dtype}, {sin_dtype}")
    if len(x_shape) != 4 or len(cos_shape) != 4 or len(sin_shape) != 4:
        raise ValueError(f"RotaryEmbedding: x, cos, sin must be 4-D, got {list(x_shape)}, {list(cos_shape)}, "
                         f"{list(sin_shape)}")
    head_dim = x_shape[3]
    if isinstance(head_dim, int) and head_dim % 2:
        raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
    expected = (x_shape[0], 1, x_shape[2], head_dim)
    for label, shape in (("cos", cos_shape), ("sin", sin_shape)):
        if not all(_same(a, b) for a, b in zip(shape, expected)):
            raise ValueError(f"RotaryEmbedding: {label} must be [batch, 1, seq, head_dim] = {list(expected)}, "
                             f"got {list(shape)}")
    return tuple(x_shape), x_dtype
