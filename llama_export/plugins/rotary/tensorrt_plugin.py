"""llama_export::RotaryEmbedding for TensorRT's Python plugin API, with an ahead-of-time Triton kernel.

As rmsnorm/tensorrt_plugin.py: the engine embeds the PTX; call `register()` before parsing. GPU + full
TensorRT only. cos/sin are always FP32; x and y share FP32, FP16 or BF16.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads these annotations as real types.

from .. import spec
from ..rmsnorm.tensorrt_plugin import _dims
from . import triton_kernel

_registered = False


def register() -> None:
    """Register the plugin with tensorrt.plugin; idempotent."""
    global _registered
    if _registered:
        return
    import tensorrt.plugin as trtp

    from ..tensorrt_support import TYPE_COMBINATION, aot_result, compute_capability, constant_dim, dtype_name

    @trtp.register(spec.ROTARY.plugin_id)
    def _describe(x: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc,
                  interleaved: int) -> trtp.TensorDesc:
        spec.rotary_output(_dims(x), dtype_name(x.dtype), _dims(cos), dtype_name(cos.dtype), _dims(sin),
                           dtype_name(sin.dtype))
        return x.like()

    @trtp.autotune(spec.ROTARY.plugin_id)
    def _autotune(x: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc,
                  outputs: tuple[trtp.TensorDesc]):
        return [trtp.AutoTuneCombination(f"{TYPE_COMBINATION}, FP32, FP32, {TYPE_COMBINATION}", "LINEAR")]

    @trtp.aot_impl(spec.ROTARY.plugin_id)
    def _aot(x: trtp.TensorDesc, cos: trtp.TensorDesc, sin: trtp.TensorDesc, interleaved: int,
             outputs: tuple[trtp.TensorDesc], tactic: int):
        shape = x.shape_expr
        head_dim = constant_dim(shape[3], "RotaryEmbedding head_dim")
        compiled = triton_kernel.compile_for_cuda(dtype_name(x.dtype), head_dim, interleaved, compute_capability())
        rows = triton_kernel.grid([shape[0], shape[1], shape[2]])
        return aot_result(compiled, rows, [shape[1], shape[2], head_dim])

    _registered = True
