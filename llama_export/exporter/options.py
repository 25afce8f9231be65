"""What the user chose for the ONNX graph: one frozen, validated `ExportOptions` that every stage reads.

Every check of precision, opset, target and float dtype lives in `ExportOptions.__post_init__` (as `ModelArgs`
checks itself), so an options object that exists is a valid one, and the CLI refuses bad options before it loads
any weights. A new precision is a row in PRECISIONS or a name in graphs.quantize.QUANTIZED_PRECISIONS plus its
checks here.

The quantization defaults depend on the checkpoint (int8 calibrates on the reference model), so they cannot be
filled in on construction: `with_default_quantization` returns a new object with them, and export_onnx is the one
caller.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from ..errors import UserError
from ..graphs.quantize import QUANTIZED_PRECISIONS, QuantOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    from .checkpoints import Checkpoint

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KV_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # io_spec / manifest spelling
# The quantized precisions quantize the linear layers; everything else (activations, norms, KV cache, unquantized
# weights) keeps a float dtype, chosen with float_dtype (--float-dtype), fp32 by default.
ALL_PRECISIONS = (*PRECISIONS, *QUANTIZED_PRECISIONS)
MIN_OPSET, DEFAULT_OPSET = 18, 23
QDQ_16BIT_SCALES_OPSET = 19  # QuantizeLinear/DequantizeLinear with fp16/bf16 scales
INT4_OPSET = 21  # INT4 tensors and blocked DequantizeLinear


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    target: str = "none"  # fusion target, graphs.passes.TARGETS
    float_dtype: str | None = None  # quantized precisions: the graph's float dtype (None: fp32)
    quantization: QuantOptions | None = None  # quantized precisions: what to quantize (None: the defaults)

    def __post_init__(self):
        from ..graphs.passes import ONNX_TARGET_OPSET, TARGETS

        if self.target not in TARGETS:
            raise UserError(f"unknown target {self.target!r}; choose one of: {', '.join(TARGETS)}")
        if self.target == "onnx" and self.opset < ONNX_TARGET_OPSET:
            raise UserError(f"--target onnx needs --opset {ONNX_TARGET_OPSET} (RMSNormalization, RotaryEmbedding, "
                            f"Attention), got {self.opset}")
        if self.precision not in ALL_PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of: {', '.join(ALL_PRECISIONS)}")
        if self.opset < MIN_OPSET:
            raise UserError(f"--opset {self.opset} is too old: the export needs opset {MIN_OPSET} or newer "
                            f"(default {DEFAULT_OPSET})")
        newest = onnx.defs.onnx_opset_version()
        if self.opset > newest:
            raise UserError(f"--opset {self.opset} is newer than this onnx package knows (up to {newest}); use "
                            f"{MIN_OPSET}..{newest} (default {DEFAULT_OPSET})")
        if self.precision in PRECISIONS and self.float_dtype not in (None, self.precision):
            raise UserError(f"--float-dtype {self.float_dtype} contradicts --precision {self.precision}; "
                            f"--float-dtype applies to the int8 precisions ({', '.join(QUANTIZED_PRECISIONS)})")
        if self.float_dtype is not None and self.float_dtype not in PRECISIONS:
            raise UserError(f"unknown --float-dtype {self.float_dtype!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.precision == "int8" and self.dtype_name == "bf16":  # static activation scales are in the float dtype
            raise UserError("--precision int8 (W8A8) supports --float-dtype fp32 or fp16, not bf16; use int8-wo "
                            "for bf16")
        if self.precision == "int4-wo" and self.opset < INT4_OPSET:
            raise UserError(f"--precision int4-wo needs --opset {INT4_OPSET} or newer (INT4 and blocked "
                            f"DequantizeLinear), got {self.opset}")
        if self.quantized and self.dtype_name != "fp32" and self.opset < QDQ_16BIT_SCALES_OPSET:
            raise UserError(f"--precision {self.precision} with --float-dtype {self.dtype_name} needs --opset "
                            f"{QDQ_16BIT_SCALES_OPSET} or newer (16-bit QuantizeLinear/DequantizeLinear scales)")
        if self.quantization is not None and (not isinstance(self.quantization, QuantOptions)
                                              or self.quantization.method != self.precision):
            raise UserError(f"quantization options {self.quantization!r} do not fit --precision {self.precision}")

    @property
    def quantized(self) -> bool:
        return self.precision in QUANTIZED_PRECISIONS

    @property
    def dtype_name(self) -> str:
        """The graph's float dtype: the precision itself for fp32/fp16/bf16, float_dtype (default fp32) otherwise."""
        return self.precision if self.precision in PRECISIONS else self.float_dtype or "fp32"

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.dtype_name]

    def with_default_quantization(self, checkpoint: Checkpoint) -> ExportOptions:
        """These options with the quantization defaults for `checkpoint` filled in (self when there is nothing
        to fill): int8-wo's defaults, or int8 calibrated on the built-in text."""
        if not self.quantized or self.quantization is not None:
            return self
        return replace(self, quantization=prepare_quantization(checkpoint, self.precision))


def prepare_quantization(checkpoint: Checkpoint, precision: str, calibration_file: str | Path | None = None,
                         alpha: float | None = None, samples: int | None = None, quantize_lm_head: bool = False,
                         quantize_embeddings: bool = False, block_size: int | None = None,
                         int4_method: str | None = None,
                         progress: Callable[[int, int], None] | None = None) -> QuantOptions | None:
    """QuantOptions for a quantized precision (None for float ones), after checking that each option applies to
    it. int8 (W8A8) calibrates here: the fp32 Torch reference runs over `calibration_file` (default: the tiny
    model's training text) and is dropped again; int4-wo: prepare_int4 (`progress` reports AWQ's layers)."""
    from ..graphs import calibration as cal
    from .export import find_tokenizer_for

    if precision not in QUANTIZED_PRECISIONS:
        if quantize_lm_head or quantize_embeddings or samples:
            raise UserError(f"--quantize-* / --calibration-samples apply to the quantized precisions "
                            f"({', '.join(QUANTIZED_PRECISIONS)}), not {precision}")
        if calibration_file is not None or alpha is not None:
            raise UserError(f"--calibration / --alpha apply to --precision int8, not {precision}")
        if block_size is not None or int4_method is not None:
            raise UserError(f"--block-size / --int4-method apply to --precision int4-wo, not {precision}")
        return None
    _refuse_tied_quantization(checkpoint, quantize_lm_head, quantize_embeddings)
    if precision == "int4-wo":
        if alpha is not None:
            raise UserError("--alpha applies to --precision int8 (SmoothQuant), not int4-wo")
        return prepare_int4(checkpoint, calibration_file, samples, quantize_lm_head, quantize_embeddings,
                            block_size, int4_method, progress)
    if block_size is not None or int4_method is not None:
        raise UserError(f"--block-size / --int4-method apply to --precision int4-wo, not {precision}")
    calibration = None
    if precision == "int8":
        text = cal.builtin_text() if calibration_file is None else cal.read_calibration_file(calibration_file)
        calibration = cal.calibrate(checkpoint, text, find_tokenizer_for(checkpoint),
                                    cal.DEFAULT_ALPHA if alpha is None else alpha,
                                    cal.DEFAULT_SAMPLES if samples is None else samples)
    elif calibration_file is not None or alpha is not None:
        raise UserError("--calibration / --alpha apply to --precision int8 (int8-wo needs no calibration)")
    return QuantOptions(precision, quantize_lm_head, quantize_embeddings, calibration)


def _refuse_tied_quantization(checkpoint: Checkpoint, quantize_lm_head: bool, quantize_embeddings: bool) -> None:
    if checkpoint.args.tie_embeddings and (quantize_lm_head or quantize_embeddings):
        raise UserError("these weights tie the output projection to the embedding (one matrix read by both); "
                        "quantizing it is not supported: drop --quantize-lm-head / --quantize-embeddings")


def prepare_int4(checkpoint: Checkpoint, calibration_file: str | Path | None = None, samples: int | None = None,
                 quantize_lm_head: bool = False, quantize_embeddings: bool = False, block_size: int | None = None,
                 int4_method: str | None = None, progress: Callable[[int, int], None] | None = None) -> QuantOptions:
    """QuantOptions for int4-wo; AWQ (the default method) calibrates here, one layer at a time (graphs/awq.py),
    calling `progress(done, total)` after each."""
    from ..graphs import calibration as cal
    from ..graphs.awq import calibrate_awq
    from ..graphs.int4 import BLOCK_SIZES, DEFAULT_BLOCK_SIZE
    from ..graphs.quantize import INT4_METHODS
    from .export import find_tokenizer_for

    _refuse_tied_quantization(checkpoint, quantize_lm_head, quantize_embeddings)
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    int4_method = "awq" if int4_method is None else int4_method
    if block_size not in BLOCK_SIZES:
        raise UserError(f"--block-size {block_size}: choose one of {', '.join(map(str, BLOCK_SIZES))}")
    if int4_method not in INT4_METHODS:
        raise UserError(f"--int4-method {int4_method!r}: choose one of {', '.join(INT4_METHODS)}")
    plan = None
    if int4_method == "awq":
        text = cal.builtin_text() if calibration_file is None else cal.read_calibration_file(calibration_file)
        plan = calibrate_awq(checkpoint, text, find_tokenizer_for(checkpoint), block_size, samples, progress)
    elif calibration_file is not None:
        raise UserError("--calibration applies to --int4-method awq (rtn needs no calibration)")
    return QuantOptions("int4-wo", quantize_lm_head, quantize_embeddings, block_size=block_size,
                        int4_method=int4_method, awq=plan)


__all__ = ["ALL_PRECISIONS", "DEFAULT_OPSET", "KV_DTYPE_NAMES", "MIN_OPSET", "PRECISIONS", "ExportOptions",
           "prepare_int4", "prepare_quantization"]
