"""numpy RMSNorm in the reference model's order: normalise in fp32, cast back, then multiply by weight."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from .. import spec


def rms_norm(x: np.ndarray, weight: np.ndarray, epsilon: float = spec.RMSNORM.attribute("epsilon").default
             ) -> np.ndarray:
    x32 = x.astype(np.float32)
    inv_rms = 1.0 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + np.float32(epsilon))
    # The cast back happens before the weight, as in model.RMSNorm (matters for fp16/bf16 only).
    return (x32 * inv_rms).astype(x.dtype) * weight.astype(x.dtype)


class RMSNorm(OpRun):
    """For onnx.reference.ReferenceEvaluator(model, new_ops=[RMSNorm])."""

    op_domain = spec.DOMAIN

    def _run(self, x, weight, epsilon=None, **_):  # **_: TensorRT's plugin_namespace / aot
        eps = spec.RMSNORM.attribute("epsilon").default if epsilon is None else epsilon
        return (rms_norm(x, weight, eps),)
