"""Constant values seen by the rewrite rules, through onnx-ir's public API (onnx_ir.convenience.get_const_tensor
folds a Constant node's value too) instead of onnxscript's private rewriter._ir_utils."""

from __future__ import annotations

import math

import onnx_ir as ir


def scalar_value(value: ir.Value | None) -> int | float | None:
    """The element of a one-element constant, else None. Size is checked before any bytes are read: a streamed
    weight (PendingWeight) has no bytes yet, and is never a one-element constant."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or math.prod(tensor.shape.numpy()) != 1:
        return None
    return tensor.numpy().item()


def is_scalar(value: ir.Value | None, expected: int) -> bool:
    """True when `value` is a one-element constant equal to the integer `expected`."""
    return scalar_value(value) == expected


__all__ = ["is_scalar", "scalar_value"]
