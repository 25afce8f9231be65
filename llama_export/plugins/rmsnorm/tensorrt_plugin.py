"""llama_export::RMSNorm for TensorRT's Python plugin API, with an ahead-of-time Triton kernel.

The engine embeds the PTX, so running it needs no Python (a C++ runtime such as Triton Inference Server
works). Only building needs this module: call `register()` before parsing an ONNX file whose RMSNorm nodes
carry plugin_namespace="llama_export" and aot=1 (spec.make_node writes both). GPU + full TensorRT only.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads these annotations as real types.

from .. import spec
from . import triton_kernel

_registered = False


def register() -> None:
    """Register the plugin with tensorrt.plugin; idempotent."""
    global _registered
    if _registered:
        return
    import tensorrt.plugin as trtp

    from ..tensorrt_support import TYPE_COMBINATION, aot_result, compute_capability, constant_dim, dtype_name

    @trtp.register(spec.RMSNORM.plugin_id)
    def _describe(x: trtp.TensorDesc, weight: trtp.TensorDesc, epsilon: float) -> trtp.TensorDesc:
        spec.rms_norm_output(_dims(x), dtype_name(x.dtype), _dims(weight), dtype_name(weight.dtype))
        return x.like()

    @trtp.autotune(spec.RMSNORM.plugin_id)
    def _autotune(x: trtp.TensorDesc, weight: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]):
        return [trtp.AutoTuneCombination(", ".join([TYPE_COMBINATION] * 3), "LINEAR")]

    @trtp.aot_impl(spec.RMSNORM.plugin_id)
    def _aot(x: trtp.TensorDesc, weight: trtp.TensorDesc, epsilon: float, outputs: tuple[trtp.TensorDesc],
             tactic: int):
        shape = x.shape_expr
        n_cols = constant_dim(shape[len(shape) - 1], "RMSNorm hidden size")
        compiled = triton_kernel.compile_for_cuda(dtype_name(x.dtype), n_cols, epsilon, compute_capability())
        rows = triton_kernel.grid([shape[i] for i in range(len(shape))])
        return aot_result(compiled, rows, [n_cols])

    _registered = True


def _dims(desc) -> list:
    """Constant dims as ints, dynamic ones as their symbolic expressions (the rules compare ints only)."""
    shape = desc.shape_expr
    return [shape[i].constant_value if shape[i].is_constant else shape[i] for i in range(len(shape))]
