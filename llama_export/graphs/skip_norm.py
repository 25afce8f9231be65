"""Residual Add + SimplifiedLayerNormalization → com.microsoft SkipSimplifiedLayerNormalization (`ort` target).

Reuses onnxscript's SkipRmsNormFusion (ort_fusions/skip_normalization.py, no-bias variant): it matches
`Add(a, b)` feeding SimplifiedLayerNormalization, checks a, b are [B, S, D] and gamma [D], and exposes the sum as
the fused op's 4th output so the residual stream keeps flowing. In our model every norm but the first layer's
attention_norm (which reads the embedding) follows a residual Add: 2·n_layers of the 2·n_layers+1 norms.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.skip_normalization import SkipRmsNormFusion


def rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([SkipRmsNormFusion.rule("SkipSimplifiedLayerNormalization", has_bias=False)])
