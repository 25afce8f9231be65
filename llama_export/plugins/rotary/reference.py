"""numpy rotary embedding: y = cast(x32 * cos + rotate(x32) * sin), as model.apply_rotary (rotate-half)."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from .. import spec


def rotate(x: np.ndarray, interleaved: int = 0) -> np.ndarray:
    """rotate-half: (x1, x2) -> (-x2, x1) over the two halves; interleaved: (a, b) -> (-b, a) per pair."""
    if interleaved:
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        return np.stack((-pairs[..., 1], pairs[..., 0]), axis=-1).reshape(x.shape)
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate((-x2, x1), axis=-1)


def rotary_embedding(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: int = 0) -> np.ndarray:
    spec.rotary_output(x.shape, _name(x), cos.shape, _name(cos), sin.shape, _name(sin))
    x32 = x.astype(np.float32)
    return (x32 * cos + rotate(x32, interleaved) * sin).astype(x.dtype)


def _name(a: np.ndarray) -> str:
    return str(a.dtype)


class RotaryEmbedding(OpRun):
    """For onnx.reference.ReferenceEvaluator(model, new_ops=[RotaryEmbedding])."""

    op_domain = spec.DOMAIN

    # **_: TensorRT attributes, and the ONNX RotaryEmbedding schema's defaults (num_heads, ...), which the
    # evaluator adds because it looks schemas up by op name.
    def _run(self, x, cos, sin, interleaved=None, **_):
        return (rotary_embedding(x, cos, sin, int(interleaved or 0)),)
