"""Graph rewrites: fusion targets (onnx / ort / plugin / none), one concept per file, ordered in passes.py."""

from .passes import TARGETS, FusionCountError, apply_target, expected_counts

__all__ = ["TARGETS", "FusionCountError", "apply_target", "expected_counts"]
