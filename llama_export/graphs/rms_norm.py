"""RMSNorm: `Pow(x32,2) → ReduceMean(-1) → Add(eps) → Sqrt → Reciprocal → Mul(x32) → [Cast back] → Mul(weight)`.

The pattern is onnxscript's `RmsNormFusion` (rules/fusion/_rms_normalization.py), which matches exactly what our
model.RMSNorm traces to after cleanup — fp32 without Casts, fp16/bf16 with `Cast(x, FLOAT)` in and
`Cast(·, T)` out. We reuse its pattern and eps check and add what our targets need:
- ReduceMean over the last axis only (the pattern's constant [-1]); keepdims=1;
- eps a constant scalar (a graph input or computed eps is refused);
- the fp32 island is really fp32 and the cast goes back to x's own type; the weight is [hidden] of x's type.
Replacements per target:
- onnx   → RMSNormalization(x, weight, axis=-1, epsilon, stash_type=FLOAT)   (opset 23)
- ort    → SimplifiedLayerNormalization (ORT registers it in the default domain); skip_norm.py then merges the
           residual Add into SkipSimplifiedLayerNormalization
- plugin → llama_export.RMSNorm(x, weight, epsilon) built by plugins.spec.make_node.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion._rms_normalization import RmsNormFusion

from ..plugins import spec
from .constants import scalar_value

TARGET_OPS = {"onnx": "RMSNormalization", "ort": "SimplifiedLayerNormalization", "plugin": spec.RMSNORM.name}


def plugin_attributes(op: str, inputs: int, **attrs) -> dict:
    """Attributes exactly as plugins.spec.make_node writes them (defaults filled, values checked)."""
    node = spec.make_node(op, [f"i{k}" for k in range(inputs)], ["y"], **attrs)
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} | {"_domain": spec.DOMAIN}


class RMSNormRule(RmsNormFusion):
    def __init__(self, target: str, mul_order: bool):
        super().__init__(f"RMSNorm[{target}]{'' if mul_order else '-scale-first'}", mul_order)
        self.target = target

    def check(self, context, x, scale, epsilon, compute_dtype, target_dtype, **rest) -> pattern.MatchResult:
        result = super().check(context, x, scale, epsilon, compute_dtype, target_dtype, **rest)
        if not result:
            return result
        if epsilon.const_value is None:
            return result.fail("epsilon is not a constant", epsilon)
        if compute_dtype is not None and compute_dtype.as_int() != ir.DataType.FLOAT:
            return result.fail("normalisation does not run in float32", x)
        if target_dtype is not None and target_dtype.as_int() != x.dtype:
            return result.fail("the cast after normalising does not return to x's type", x)
        if scale.dtype != x.dtype or scale.shape is None or len(scale.shape) != 1:
            return result.fail("weight is not [hidden] of x's type", scale)
        if x.shape is not None and isinstance(x.shape[-1], int) and scale.shape[0] != x.shape[-1]:
            return result.fail("weight length differs from x's last dim", scale)
        return result

    def rewrite(self, op, x, scale, epsilon, **_):
        eps = float(scalar_value(epsilon))
        if self.target == "onnx":
            return op.RMSNormalization(x, scale, axis=-1, epsilon=eps, stash_type=ir.DataType.FLOAT)
        if self.target == "ort":
            return op.SimplifiedLayerNormalization(x, scale, axis=-1, epsilon=eps, stash_type=ir.DataType.FLOAT)
        return op.RMSNorm(x, scale, **plugin_attributes(spec.RMSNORM, 2, epsilon=eps))


def rules(target: str) -> pattern.RewriteRuleSet:
    if target not in TARGET_OPS:
        raise ValueError(f"no RMSNorm fusion for target {target!r}")
    return pattern.RewriteRuleSet([RMSNormRule.rule(target, True), RMSNormRule.rule(target, False)])
