"""RMSNorm: `Pow(x32,2) → ReduceMean(-1) → Add(eps) → Sqrt → Reciprocal → Mul(x32) → [Cast back] → Mul(weight)`.

The pattern is the one onnxscript's RmsNormFusion uses (rules/fusion/_rms_normalization.py), written here on the
public `pattern.RewriteRuleClassBase`: it matches exactly what our model.RMSNorm traces to after cleanup — fp32
without Casts, fp16/bf16 with `Cast(x, FLOAT)` in and `Cast(·, T)` out. The checks:
- eps a float scalar; x and the weight of a float type;
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

from ..plugins import spec
from .constants import scalar_value

TARGET_OPS = {"onnx": "RMSNormalization", "ort": "SimplifiedLayerNormalization", "plugin": spec.RMSNORM.name}


def plugin_attributes(op: str, inputs: int, **attrs) -> dict:
    """Attributes exactly as plugins.spec.make_node writes them (defaults filled, values checked)."""
    node = spec.make_node(op, [f"i{k}" for k in range(inputs)], ["y"], **attrs)
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} | {"_domain": spec.DOMAIN}


FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


class RMSNormRule(pattern.RewriteRuleClassBase):
    def __init__(self, target: str, mul_order: bool):
        super().__init__(f"RMSNorm[{target}]{'' if mul_order else '-scale-first'}")
        self.target, self.mul_order = target, mul_order

    def pattern(self, op, x, scale, epsilon, compute_dtype, target_dtype):
        x = pattern.OrValue([op.Cast(x, to=compute_dtype), x])
        mean_square = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1, noop_with_empty_axes=0)
        normalized = op.Mul(x, op.Reciprocal(op.Sqrt(op.Add(mean_square, epsilon))))
        normalized = pattern.OrValue([op.Cast(normalized, to=target_dtype), normalized])
        # the matcher takes no OrValue as the pattern's last node: one rule per operand order
        return op.Mul(normalized, scale) if self.mul_order else op.Mul(scale, normalized)

    def check(self, context, x, scale, epsilon, compute_dtype, target_dtype, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not isinstance(scalar_value(epsilon), float):
            return result.fail("epsilon is not a float scalar", epsilon)
        if x.dtype not in FLOAT_TYPES or scale.dtype not in FLOAT_TYPES:
            return result.fail("x or the weight is not of a float type", x)
        if epsilon.const_value is None:
            return result.fail("epsilon is not a constant", epsilon)
        if (x.dtype if compute_dtype is None else compute_dtype.as_int()) != ir.DataType.FLOAT:
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
