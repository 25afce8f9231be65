"""Explicit attention with KV cache (model.Attention) → one fused attention op.

Matched (after cleanup):
    present_key = Concat(past_key, k, axis=2);  present_value = Concat(past_value, v, axis=2)
    repeat_kv (GQA only): Reshape(Expand(Unsqueeze(present, [2]), shape5), shape4)
    scores = Div(MatMul(q, Transpose(key_rep, [0,1,3,2])), sqrt(head_dim))
    probs  = [Cast T](Softmax(Add([Cast FLOAT](scores), bias), axis=-1))
    out    = MatMul(probs, value_rep)                                    [batch, n_heads, seq, head_dim]
Checks: the divisor is sqrt(head_dim); the bias is float32 [batch, 1, seq, total]; q has n_heads and k/v
n_kv_heads static heads of head_dim; the repeat really goes n_kv_heads → n_heads; casts go fp32 and back.
onnxscript's SDPA/GQA rules (ort_fusions/sdpa.py, gqa.py, rules/fusion/_gqa.py) want HF's mask and
repeat forms and GQA's seqlens inputs, so this is our own rule.

Replacements per target:
- onnx → Attention(q, present_key, present_value, bias, scale) → out, with the cache Concats kept outside (opset
         23; 4-D BNSH inputs carry the head counts, GQA included; softmax_precision=FLOAT in fp16/bf16 graphs).
         Why not Attention's own past_key/past_value inputs and present outputs: TensorRT's ONNX parser takes
         Attention with one output only ("TensorRT only supports Attention nodes with one output", TensorRT-RTX
         1.7.1), and ORT runs either form. engine/builder.py marks the parsed IAttention decomposable, so a
         builder without a dedicated kernel for the shape decomposes it instead of failing.
- ort  → com.microsoft MultiHeadAttention(query BSD, key/value repeated BNSH, attention_bias). Why MHA and not
         GroupQueryAttention: GQA refuses batch>1 with seq>1 and a past, and reads padding as right-padding
         (seqlens_k), while KVSession feeds left-padded batches; MHA takes our additive bias as is, so it runs
         for every input. The cache concat stays outside (MHA's own past/present would hold n_heads, not
         n_kv_heads). fp32 only: ORT CPU's MHA kernel is float32.
         GQA models at opset >= 23 get the `onnx` form instead: MHA needs the cache repeated to n_heads, an
         Expand + Reshape of the whole cache per layer and step that took the fused target's decode gain
         (docs/BENCHMARKS.md, "CPU decode by target"), while ORT's kernel for the ONNX Attention reads
         n_kv_heads directly.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..config import ModelArgs
from .constants import is_scalar, scalar_value

TARGET_OPS = {"onnx": "Attention", "ort": "MultiHeadAttention"}
ONNX_ATTENTION_OPSET = 23


class AttentionRule(pattern.RewriteRuleClassBase):
    def __init__(self, target: str, args: ModelArgs, gqa: bool, cast: bool, opset: int):
        super().__init__(f"Attention[{target}]{'-gqa' if gqa else ''}{'-cast' if cast else ''}", remove_nodes=False)
        self.target, self.args, self.gqa, self.cast = target, args, gqa, cast
        # The op the replacement uses: ONNX Attention for `onnx`, and for `ort` where MHA would repeat the cache.
        self.onnx_op = target == "onnx" or (gqa and opset >= ONNX_ATTENTION_OPSET)

    def _repeat(self, op, present, unsq, shape5, shape4):
        return op.Reshape(op.Expand(op.Unsqueeze(present, unsq), shape5), shape4, _allow_other_attributes=True)

    def pattern(self, op, q, k, v, past_key, past_value, bias, divisor, unsq_k, unsq_v, shape5, shape4,
                shape5_v, shape4_v, to_t):
        present_key = op.Concat(past_key, k, axis=2)
        present_value = op.Concat(past_value, v, axis=2)
        key = self._repeat(op, present_key, unsq_k, shape5, shape4) if self.gqa else present_key
        value = self._repeat(op, present_value, unsq_v, shape5_v, shape4_v) if self.gqa else present_value
        scores = op.Div(op.MatMul(q, op.Transpose(key, perm=[0, 1, 3, 2])), divisor)
        if self.cast:
            scores = op.Cast(scores, to=ir.DataType.FLOAT)
        probs = op.Softmax(op.Add(scores, bias), axis=-1)
        if self.cast:
            probs = op.Cast(probs, to=to_t)
        return op.MatMul(probs, value), present_key, present_value

    def check(self, context, q, k, v, past_key, bias, divisor, unsq_k=None, unsq_v=None, to_t=None, **_):
        result = pattern.MatchResult()
        a = self.args
        hd, heads, kv_heads = a.head_dim, a.n_heads, a.kv_heads
        if self.gqa != (heads != kv_heads):
            return result.fail("repeat_kv form does not match the model's head counts")
        scale = scalar_value(divisor)
        if not isinstance(scale, float) or not math.isclose(scale, math.sqrt(hd), rel_tol=1e-3):
            return result.fail(f"scores are not divided by sqrt(head_dim) = {math.sqrt(hd)}", divisor)
        for value, n in ((q, heads), (k, kv_heads), (v, kv_heads), (past_key, kv_heads)):
            if value.shape is None or len(value.shape) != 4 or value.shape[1] != n or value.shape[3] != hd:
                return result.fail(f"not [batch, {n}, seq, {hd}]", value)
        if bias.dtype != ir.DataType.FLOAT or bias.shape is None or len(bias.shape) != 4 or bias.shape[1] != 1:
            return result.fail("mask is not an additive float32 [batch, 1, seq, total] bias", bias)
        if self.gqa and not (is_scalar(unsq_k, 2) and is_scalar(unsq_v, 2)):
            return result.fail("repeat_kv does not unsqueeze the head axis")
        if self.cast:
            if q.dtype not in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) or to_t.as_int() != q.dtype:
                return result.fail("softmax casts are not fp32 and back to q's type", q)
        elif q.dtype != ir.DataType.FLOAT:
            return result.fail("uncast attention on a non-float32 q", q)
        if self.target == "ort" and q.dtype != ir.DataType.FLOAT:
            return result.fail("ORT CPU MultiHeadAttention runs float32 only", q)
        return result

    def rewrite(self, op, q, k, v, past_key, past_value, bias, **_):
        a = self.args
        scale = 1.0 / math.sqrt(a.head_dim)
        if self.onnx_op:
            mask = op.Cast(bias, to=q.dtype) if self.cast else bias
            extra = {"softmax_precision": ir.DataType.FLOAT} if self.cast else {}
        present_key = op.Concat(past_key, k, axis=2)
        present_value = op.Concat(past_value, v, axis=2)
        if self.onnx_op:
            return op.Attention(q, present_key, present_value, mask, scale=scale, **extra), present_key, present_value
        key, value = present_key, present_value
        if self.gqa:  # MHA wants n_heads keys: repeat each kv head n_rep times (BNSH)
            reps = a.n_heads // a.kv_heads
            shape5 = op.Constant(value=ir.tensor(np.array([1, 1, reps, 1, 1], dtype=np.int64)))
            shape4 = op.Constant(value=ir.tensor(np.array([0, a.n_heads, -1, a.head_dim], dtype=np.int64)))
            axis = op.Constant(value=ir.tensor(np.array([2], dtype=np.int64)))
            key = op.Reshape(op.Expand(op.Unsqueeze(present_key, axis), shape5), shape4)
            value = op.Reshape(op.Expand(op.Unsqueeze(present_value, axis), shape5), shape4)
        bsd = op.Constant(value=ir.tensor(np.array([0, 0, -1], dtype=np.int64)))
        query = op.Reshape(op.Transpose(q, perm=[0, 2, 1, 3]), bsd)
        out = op.MultiHeadAttention(query, key, value, None, None, bias, num_heads=a.n_heads, scale=scale,
                                    _domain="com.microsoft")
        bsnh = op.Constant(value=ir.tensor(np.array([0, 0, a.n_heads, a.head_dim], dtype=np.int64)))
        # Back to BNSH for the traced Transpose(0,2,1,3) that follows; cleanup cancels the pair.
        return op.Transpose(op.Reshape(out, bsnh), perm=[0, 2, 1, 3]), present_key, present_value


def rules(target: str, args: ModelArgs, opset: int = ONNX_ATTENTION_OPSET) -> pattern.RewriteRuleSet:
    """`opset`: the model's default-domain opset (ONNX Attention needs 23)."""
    if target not in TARGET_OPS:
        raise ValueError(f"no attention fusion for target {target!r}")
    gqa = args.n_heads != args.kv_heads
    return pattern.RewriteRuleSet([AttentionRule.rule(target, args, gqa, False, opset),
                                   AttentionRule.rule(target, args, gqa, True, opset)])
