"""INT8 as a graph pass: int8 weights + DequantizeLinear (int8-wo), plus activation Q/DQ pairs (int8, W8A8).

The tracer exports nn.Linear as Transpose(W [out, in]) → MatMul. The pass replaces that with
DequantizeLinear(W_int8 [in, out], scale [out], axis=1) → MatMul: the weight is stored already transposed so the
DQ feeds the MatMul directly (the form ORT turns into MatMulNBits and TensorRT fuses into an int8 GEMM), and
axis 1 is the output channel of that layout. Scales are symmetric per output channel (max|W| / 127), zero point 0,
in the model's float dtype, so the DQ output has the dtype the MatMul expects.

For `int8` each distinct MatMul input (attention_norm output → wq/wk/wv, attention output → wo, ffn_norm output
→ w1/w3, SwiGLU product → w2) gets, per MatMul, QuantizeLinear → DequantizeLinear with one per-tensor scale
from calibration and an explicit int8 zero point 0 (without one QuantizeLinear would produce uint8, which TensorRT
refuses). Softmax, norms, RoPE and the residual stream stay float.

`int4-wo` (packed INT4, blocked scales, RTN or AWQ) shares the options and the entry points; its graph nodes and
weight transform live in int4_weights.py.

Weight bytes never pass through here: the pass declares the new initializers (on the meta device, like the
tracer's), and `WeightTransform` converts each checkpoint tensor while it is streamed (exporter/weights.py), so
an int8 export holds at most one float weight at a time, like the float exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from ..config import ModelArgs
from ..pending_weights import meta_initializer
from . import fused_projections, int4
from .awq import AwqPlan
from .calibration import Calibration
from .int4_weights import Int4WeightTransform, dequantized_int4

QUANTIZED_PRECISIONS = ("int8-wo", "int8", "int4-wo")
INT4_METHODS = ("awq", "rtn")
Q_MAX = 127.0  # symmetric int8: [-127, 127], so -x quantizes to -q(x)
WEIGHT_SUFFIX, SCALE_SUFFIX = ".int8", ".scale"


@dataclass(frozen=True)
class QuantOptions:
    """What to quantize. `calibration` is required for method int8 (W8A8) and ignored for int8-wo; int4-wo uses
    `block_size`, `int4_method` and, for AWQ, `awq` (awq.awq_plan on calibration text)."""

    method: str  # "int8-wo", "int8" or "int4-wo"
    quantize_lm_head: bool = False  # output.weight, weight-only in every method
    quantize_embeddings: bool = False  # tok_embeddings.weight: DQ(axis 0) → Gather
    calibration: Calibration | None = field(default=None, compare=False)
    block_size: int = int4.DEFAULT_BLOCK_SIZE
    int4_method: str = "awq"
    awq: AwqPlan | None = field(default=None, compare=False)

    def manifest(self) -> dict:
        if self.method == "int4-wo":
            return {"method": self.method, "int4_method": self.int4_method, "block_size": self.block_size,
                    "weights": "int4 symmetric per block of input channels, zero point 0",
                    "lm_head": "int4" if self.quantize_lm_head else "float",
                    "embeddings": "int4" if self.quantize_embeddings else "float",
                    "awq": self.awq.manifest() if self.awq is not None else None}
        out = {"method": self.method, "weights": "int8 symmetric per output channel, zero point 0",
               "lm_head": "int8" if self.quantize_lm_head else "float",
               "embeddings": "int8" if self.quantize_embeddings else "float"}
        if self.method == "int8":
            out["activations"] = "int8 symmetric per tensor (static), zero point 0"
            out["smoothquant"] = self.calibration.manifest() if self.calibration else None
        return out


def block_linears(args: ModelArgs) -> list[str]:
    """The 7 linear weights of every block, in checkpoint names."""
    names = []
    for i in range(args.n_layers):
        p = f"layers.{i}"
        names += [f"{p}.attention.w{x}.weight" for x in "qkvo"]
        names += [f"{p}.feed_forward.w{x}.weight" for x in "123"]
    return names


def quantized_weights(args: ModelArgs, options: QuantOptions) -> list[str]:
    """Linear weights (nn.Linear layout [out, in]) that become int8."""
    return block_linears(args) + (["output.weight"] if options.quantize_lm_head else [])


def quantize_per_channel(weight: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per index of `axis`: (q int8, scale fp32)."""
    w = weight.float()
    reduce = tuple(d for d in range(w.dim()) if d != axis)
    amax = w.abs().amax(dim=reduce, keepdim=True).clamp_min(1e-12)  # all-zero channel: any scale works
    scale = amax / Q_MAX
    q = torch.round(w / scale).clamp_(-Q_MAX, Q_MAX).to(torch.int8)
    return q, scale.reshape(-1)


class WeightTransform:
    """Checkpoint tensor → the tensors the quantized graph holds, one checkpoint tensor at a time.

    Applies the SmoothQuant factors (int8) first, in fp32, then quantizes: a linear becomes (`W.int8` [in, out]
    int8, `W.scale` [out] float dtype); norm weights absorb 1/s; everything else is only cast to `dtype`.
    """

    def __init__(self, args: ModelArgs, options: QuantOptions, dtype: torch.dtype):
        self.dtype = dtype
        self.quantized = set(quantized_weights(args, options))
        self.embeddings = "tok_embeddings.weight" if options.quantize_embeddings else None
        self.columns: dict[str, np.ndarray] = {}  # weight name -> multiply input channels (columns) by s
        self.rows: dict[str, np.ndarray] = {}  # tensor name -> divide output channels (rows / elements) by s
        calibration = options.calibration
        if options.method == "int8":
            if calibration is None:
                raise ValueError("int8 (W8A8) needs a Calibration")
            from .calibration import smoothing_groups

            for absorber, linears in smoothing_groups(args.n_layers):
                s = calibration.smoothing.get(linears[0])
                if s is None:
                    continue
                self.rows[absorber] = s
                for n in linears:
                    self.columns[n] = s

    def __call__(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name not in self.quantized and name not in self.rows and name != self.embeddings:
            return [(name, tensor.to(self.dtype).contiguous())]
        w = tensor.float()
        if name in self.rows:  # a norm weight [dim] or w3 [hidden, dim]: divide output channel j by s_j
            s = torch.from_numpy(self.rows[name])
            w = w / (s if w.dim() == 1 else s[:, None])
        if name in self.columns:
            w = w * torch.from_numpy(self.columns[name])[None, :]
        if name == self.embeddings:  # [vocab, dim], one scale per row (token)
            q, scale = quantize_per_channel(w, axis=0)
            return [(name + WEIGHT_SUFFIX, q), (name + SCALE_SUFFIX, scale.to(self.dtype))]
        if name not in self.quantized:
            return [(name, w.to(self.dtype).contiguous())]
        q, scale = quantize_per_channel(w.t(), axis=1)  # stored transposed: [in, out], per output channel
        return [(name + WEIGHT_SUFFIX, q.contiguous()), (name + SCALE_SUFFIX, scale.to(self.dtype))]


def weight_transform(args: ModelArgs, options: QuantOptions, dtype: torch.dtype, target: str = "none"):
    """The streamed transform for `options`: int8 (WeightTransform) or int4-wo (Int4WeightTransform, which on
    targets that fuse quantized projections writes the q/k/v and w1/w3 groups concatenated)."""
    if options.method != "int4-wo":
        return WeightTransform(args, options, dtype)
    from .passes import INT8_PROJECTION_TARGETS

    if options.int4_method == "awq" and options.awq is None:
        raise ValueError("int4-wo with AWQ needs an AwqPlan (awq.awq_plan)")
    return Int4WeightTransform(quantized_weights(args, options), options.block_size, dtype, options.awq,
                               options.quantize_embeddings, target in INT8_PROJECTION_TARGETS)


def _small_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def _dequantized_weight(graph: ir.Graph, name: str, shape, axis: int, dtype: torch.dtype, before: ir.Node):
    q = meta_initializer(graph, name + WEIGHT_SUFFIX, shape, torch.int8)
    scale = meta_initializer(graph, name + SCALE_SUFFIX, (shape[axis],), dtype)
    dq = ir.node("DequantizeLinear", [q, scale], attributes={"axis": axis}, name=f"{name}/DequantizeLinear")
    graph.insert_before(before, dq)
    dq.outputs[0].name = f"{name}.dequantized"
    return dq.outputs[0]


def quantize_weights(model: ir.Model, args: ModelArgs, options: QuantOptions, dtype: torch.dtype) -> int:
    """Rewrite the traced graph in place, before weights are attached: Transpose(W) → MatMul becomes
    DQ(W_int8, scale) → MatMul. Returns how many weights it quantized."""
    graph = model.graph
    if model.opset_imports.get("", 0) < 19 and dtype != torch.float32:
        raise ValueError("int8 with a 16-bit float dtype needs opset 19+ (16-bit Q/DQ scales)")
    initializers = graph.initializers
    if options.method == "int4-wo" and model.opset_imports.get("", 0) < 21:
        raise ValueError("int4-wo needs opset 21+ (INT4 and blocked DequantizeLinear)")
    count = 0
    for name in quantized_weights(args, options):
        weight = initializers[name]
        transpose = _only_consumer(weight, "Transpose", name)
        if list(transpose.attributes["perm"].as_ints()) != [1, 0]:
            raise ValueError(f"{name}: expected Transpose perm [1, 0] before its MatMul")
        matmul = _only_consumer(transpose.outputs[0], "MatMul", name)
        out_features, in_features = weight.shape.numpy()
        if options.method == "int4-wo":
            dequantized = dequantized_int4(graph, name, (in_features, out_features), 0, options.block_size, dtype,
                                           matmul)
        else:
            dequantized = _dequantized_weight(graph, name, (in_features, out_features), 1, dtype, matmul)
        matmul.replace_input_with(1, dequantized)
        graph.remove(transpose, safe=True)
        del initializers[name]
        count += 1
    if options.quantize_embeddings:
        name = "tok_embeddings.weight"
        weight = initializers[name]
        gather = _only_consumer(weight, "Gather", name)
        if options.method == "int4-wo":
            dequantized = dequantized_int4(graph, name, tuple(weight.shape.numpy()), 1, options.block_size, dtype,
                                           gather)
        else:
            dequantized = _dequantized_weight(graph, name, tuple(weight.shape.numpy()), 0, dtype, gather)
        gather.replace_input_with(0, dequantized)
        del initializers[name]
        count += 1
    return count


def quantize_activations(model: ir.Model, options: QuantOptions) -> int:
    """int8 only: a Q/DQ pair on the activation input of every calibrated linear's MatMul (found by its
    dequantized weight; a fused q/k/v or w1/w3 MatMul gets one pair with its members' largest range). Runs after
    the fusion passes, whose CSE would merge the per-MatMul pairs again: ORT fuses Q → DQ → MatMul (with a DQ
    weight) into MatMulIntegerToFloat only when the DQ has that one consumer. Returns the number of pairs."""
    if options.method != "int8":
        return 0
    graph, calibration = model.graph, options.calibration
    dtype = graph.outputs[1].dtype  # present.0.key: the float dtype
    np_dtype = np.float32 if dtype == ir.DataType.FLOAT else np.float16  # scales in the float dtype
    if dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        raise ValueError(f"int8 activations need a float32 or float16 graph, not {dtype}")
    matmuls = {}
    for node in graph:
        weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) == 2 else None
        name = weight.name.removesuffix(".dequantized") if weight is not None and weight.name else ""
        linears = fused_projections.members(name)  # a fused q/k/v or w1/w3 MatMul: its members' ranges
        if name and all(n in calibration.input_amax for n in linears):
            matmuls[name] = (node, linears)
    for name, (matmul, linears) in matmuls.items():
        amax = max(calibration.activation_amax(n) for n in linears)
        scale = _small_initializer(graph, f"{name}.input_scale", np.array(max(amax, 1e-8) / Q_MAX, np_dtype))
        zero = _small_initializer(graph, f"{name}.input_zero_point", np.array(0, np.int8))
        q = ir.node("QuantizeLinear", [matmul.inputs[0], scale, zero], name=f"{name}/input/QuantizeLinear")
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zero], name=f"{name}/input/DequantizeLinear")
        graph.insert_before(matmul, [q, dq])
        q.outputs[0].name, dq.outputs[0].name = f"{name}.input_q", f"{name}.input_dq"
        matmul.replace_input_with(0, dq.outputs[0])
    return len(matmuls)


def _only_consumer(value: ir.Value, op_type: str, name: str) -> ir.Node:
    users = [u.node for u in value.uses()]
    if len(users) != 1 or users[0].op_type != op_type:
        raise ValueError(f"{name}: expected one {op_type} consumer, found {[u.op_type for u in users]} "
                         "(the traced linear pattern changed)")
    return users[0]


__all__ = ["INT4_METHODS", "QUANTIZED_PRECISIONS", "QuantOptions", "WeightTransform", "block_linears", "quantize_activations",
           "quantize_per_channel", "quantize_weights", "quantized_weights", "weight_transform"]
