"""Rotary embedding, rotate-half layout (model.apply_rotary), with the cos/sin tables it reads.

Matched (after cleanup; opsets 18–23 trace the same form):
    freqs = Mul(Unsqueeze(Cast(position_ids, FLOAT), [2]), inv_freq)             inv_freq a constant [head_dim/2]
    emb   = Unsqueeze(Concat(freqs, freqs, axis=-1), [1]);  cos = Cos(emb);  sin = Sin(emb)
    x32   = Cast(x, FLOAT) or x (fp32 graphs)
    x1, x2 = Split(x32, axis=3|-1, num_outputs=2)
    y     = [Cast back to x's type](Add(Mul(x32, cos), Mul(Concat(Neg(x2), x1, axis=-1), sin)))
The cos and sin must be Cos and Sin of the *same* table built from position_ids: a cos fed from anywhere else,
a table that is not (freqs, freqs), a split that is not into halves along the last axis, is refused.

onnxscript's own rules (rules/fusion/_rotary_embedding.py, ort_fusions/rotary_embedding.py + cos_sin_cache.py)
expect HF's form — Slice halves and `MatMul(inv_freq, position_ids)` + Transpose tables — so they do not fire on
our Split + Mul trace; this rule follows their structure (remove_nodes=False, because the tables are shared by
every layer's q and k, and one cache per inv_freq).

Replacements per target:
- onnx   → RotaryEmbedding(x, cos_cache, sin_cache, position_ids, interleaved=0)         (opset 23)
- ort    → com.microsoft RotaryEmbedding(x, position_ids, cos_cache, sin_cache, interleaved=0)
           caches [max_seq_len, head_dim/2] fp32 initializers from the graph's inv_freq (so llama3 scaling is
           whatever the model computed); for fp16/bf16 x the op runs on Cast(x, FLOAT) and casts back, keeping
           the fp32 island and fp32 tables (both ops want x and the caches in one type).
- plugin → llama_export.RotaryEmbedding(x, cos, sin), the traced fp32 tables as they are (spec.py says why).
Interleaved (Meta's pairwise) RoPE never reaches a graph of ours: checkpoints are permuted to rotate-half at
load (model.py), so there is no interleaved pattern here.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..config import ModelArgs
from ..plugins import spec
from .constants import is_scalar
from .rms_norm import plugin_attributes

TARGET_OPS = {"onnx": "RotaryEmbedding", "ort": "RotaryEmbedding", "plugin": spec.ROTARY.name}


class RotaryRule(pattern.RewriteRuleClassBase):
    def __init__(self, target: str, args: ModelArgs, cast: bool):
        super().__init__(f"Rotary[{target}]{'-cast' if cast else ''}", remove_nodes=False)
        self.target, self.args, self.cast = target, args, cast
        self._caches: dict[int, tuple[ir.Value, ir.Value]] = {}

    def pattern(self, op, x, position_ids, inv_freq, unsq2, unsq1, out_dtype):
        positions = op.Unsqueeze(op.Cast(position_ids, to=ir.DataType.FLOAT), unsq2)
        freqs = op.Mul(positions, inv_freq)
        emb = op.Unsqueeze(op.Concat(freqs, freqs, axis=-1), unsq1)
        cos, sin = op.Cos(emb, _outputs=["cos"]), op.Sin(emb, _outputs=["sin"])
        x32 = op.Cast(x, to=ir.DataType.FLOAT) if self.cast else x
        x1, x2 = op.Split(x32, _allow_other_attributes=True, _outputs=["x1", "x2"])
        rotated = op.Concat(op.Neg(x2), x1, axis=-1)
        y = op.Add(op.Mul(x32, cos), op.Mul(rotated, sin))
        return op.Cast(y, to=out_dtype) if self.cast else y

    def check(self, context, x, position_ids, inv_freq, unsq2, unsq1, x1, out_dtype=None, **_):
        result = pattern.MatchResult()
        if not is_scalar(unsq2, 2) or not is_scalar(unsq1, 1):
            return result.fail("tables are not unsqueezed as [batch, 1, seq, head_dim]")
        if inv_freq.const_value is None:
            return result.fail("inv_freq is not a constant", inv_freq)
        half = self.args.head_dim // 2
        if inv_freq.const_value.size != half:
            return result.fail(f"inv_freq has {inv_freq.const_value.size} entries, expected {half}", inv_freq)
        if position_ids.dtype != ir.DataType.INT64 or position_ids.shape is None or len(position_ids.shape) != 2:
            return result.fail("positions are not int64 [batch, seq]", position_ids)
        if x.shape is None or len(x.shape) != 4 or x.shape[3] != self.args.head_dim:
            return result.fail("x is not [batch, heads, seq, head_dim]", x)
        split = x1.producer()
        axis = split.attributes.get_int("axis", 0)
        if axis not in (3, -1) or split.attributes.get_int("num_outputs", 0) != 2 or len(split.inputs) > 1:
            return result.fail("not an even split of the last axis", x1)
        if self.cast:
            if x.dtype not in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) or out_dtype.as_int() != x.dtype:
                return result.fail("the casts do not go float32 and back to x's type", x)
        elif x.dtype != ir.DataType.FLOAT:
            return result.fail("uncast rotary on a non-float32 x", x)
        return result

    def rewrite(self, op, x, position_ids, inv_freq, cos, sin, **_):
        if self.target == "plugin":
            return op.RotaryEmbedding(x, cos, sin, **plugin_attributes(spec.ROTARY, 3, interleaved=0))
        cos_cache, sin_cache = self._cache(op, inv_freq)
        x32 = op.Cast(x, to=ir.DataType.FLOAT) if self.cast else x
        if self.target == "onnx":
            y = op.RotaryEmbedding(x32, cos_cache, sin_cache, position_ids, interleaved=0)
        else:
            y = op.RotaryEmbedding(x32, position_ids, cos_cache, sin_cache, interleaved=0, _domain="com.microsoft")
        return op.Cast(y, to=x.dtype) if self.cast else y

    def _cache(self, op, inv_freq: ir.Value) -> tuple[ir.Value, ir.Value]:
        """[max_seq_len, head_dim/2] fp32 tables, one pair per inv_freq (shared by every layer's q and k)."""
        key = id(inv_freq)
        if key not in self._caches:
            freq = inv_freq.const_value.numpy().astype(np.float32).reshape(1, -1)
            angles = np.arange(self.args.max_seq_len, dtype=np.float32).reshape(-1, 1) * freq  # fp32, as torch
            self._caches[key] = (op.Constant(value=ir.tensor(np.cos(angles), name="rope_cos_cache")),
                                 op.Constant(value=ir.tensor(np.sin(angles), name="rope_sin_cache")))
        return self._caches[key]

    def cleanup(self):
        self._caches.clear()


def rules(target: str, args: ModelArgs) -> pattern.RewriteRuleSet:
    if target not in TARGET_OPS:
        raise ValueError(f"no rotary fusion for target {target!r}")
    return pattern.RewriteRuleSet([RotaryRule.rule(target, args, False), RotaryRule.rule(target, args, True)])
