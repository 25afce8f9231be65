"""INT4 weight-only (`int4-wo`): the graph's blocked DequantizeLinear nodes and the streamed weight transform.

Graph: each linear's `Transpose(W) → MatMul` becomes
`DequantizeLinear(W.int4 [in, out], W.scale [n_blocks, out], axis=0, block_size=B) → MatMul` (int4.py has the
layout). With `quantize_embeddings` the table becomes `DequantizeLinear(E.int4 [vocab, dim],
E.scale [vocab, n_blocks], axis=1, block_size=B) → Gather` (blocks along each token's row).
Fused q/k/v and w1/w3 on the `ort` target: fused_projections.py replaces the members' DQs by one DQ on
`layers.{i}.{group}.weight.int4`, and this transform writes that tensor already concatenated (ORT has no INT4
Concat kernel), holding a group's packed members until its last one streams by.

Weights: AWQ's factors (awq.AwqPlan) multiply each linear's input channels and divide its absorber (norm weight,
wv or w3 rows) in fp32, then each linear is rounded blockwise with the plan's clipped ranges; method `rtn` is
the same without a plan. lm_head (when asked) is plain RTN: nothing upstream can absorb a factor except the
final norm, which only it reads, and the paper leaves it in float anyway.
"""

from __future__ import annotations

import onnx_ir as ir
import torch

from ..config import ModelArgs
from . import fused_projections, int4
from .awq import AwqPlan


class Int4WeightTransform:
    """Checkpoint tensor → the tensors the int4-wo graph holds (see the module docstring)."""

    def __init__(self, linears: list[str], block_size: int, dtype: torch.dtype, plan: AwqPlan | None = None,
                 quantize_embeddings: bool = False, fused_groups: bool = False):
        self.linears, self.block_size, self.dtype, self.plan = set(linears), block_size, dtype, plan
        self.embeddings = "tok_embeddings.weight" if quantize_embeddings else None
        self.group_of: dict[str, tuple[str, list[str]]] = {}  # member -> (fused prefix, members in order)
        if fused_groups:
            for name in linears:
                prefix = _fused_prefix(name)
                if prefix:
                    members = fused_projections.members(prefix + ".weight")
                    self.group_of.update({m: (prefix, members) for m in members})
        self.held: dict[str, tuple[int4.PackedInt4, torch.Tensor]] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> list[tuple[str, object]]:
        w = tensor.float()
        if self.plan is not None:
            w = self.plan.scaled(name, w)
        if name == self.embeddings:  # [vocab, dim]: blocks along dim, one row of scales per token
            q, scale = int4.quantize_blockwise(w.t(), int4.block_size_for(w.shape[1], self.block_size))
            return [(name + int4.WEIGHT_SUFFIX, int4.pack_int4(q.t().contiguous())),
                    (name + int4.SCALE_SUFFIX, scale.t().contiguous().to(self.dtype))]
        if name not in self.linears:
            return [(name, w.to(self.dtype).contiguous())]
        w_kn = w.t()
        amax = self.plan.clip_amax(name, w_kn) if self.plan is not None else None
        q, scale = int4.quantize_blockwise(w_kn, int4.block_size_for(w_kn.shape[0], self.block_size), amax)
        packed, scale = int4.pack_int4(q.contiguous()), scale.to(self.dtype)
        if name not in self.group_of:
            return [(name + int4.WEIGHT_SUFFIX, packed), (name + int4.SCALE_SUFFIX, scale)]
        prefix, members = self.group_of[name]
        self.held[name] = (packed, scale)
        if any(m not in self.held for m in members):
            return []
        parts = [self.held.pop(m) for m in members]
        return [(f"{prefix}.weight{int4.WEIGHT_SUFFIX}", int4.concat_packed([p for p, _ in parts])),
                (f"{prefix}.weight{int4.SCALE_SUFFIX}", torch.cat([s for _, s in parts], dim=1))]


def _fused_prefix(name: str) -> str | None:
    """`layers.3.attention.wq.weight` → `layers.3.qkv` (the fused group it belongs to), else None."""
    layer, _, rest = name.removeprefix("layers.").partition(".")
    for group, members in fused_projections.GROUPS.items():
        if rest.removesuffix(".weight") in members:
            return f"layers.{layer}.{group}"
    return None


def dequantized_int4(graph: ir.Graph, name: str, shape: tuple[int, int], axis: int, block_size: int,
                     dtype: torch.dtype, before: ir.Node) -> ir.Value:
    """Declare `name`.int4 (INT4 `shape`) and `name`.scale (blocks along `axis`) and insert their blocked
    DequantizeLinear before `before`; returns its output."""
    from ..pending_weights import meta_initializer

    block_size = int4.block_size_for(shape[axis], block_size)
    scale_shape = list(shape)
    scale_shape[axis] = int4.n_blocks(shape[axis], block_size)
    q = meta_initializer(graph, name + int4.WEIGHT_SUFFIX, shape, torch.int4)
    scale = meta_initializer(graph, name + int4.SCALE_SUFFIX, tuple(scale_shape), dtype)
    dq = ir.node("DequantizeLinear", [q, scale], attributes={"axis": axis, "block_size": block_size},
                 name=f"{name}/DequantizeLinear")
    graph.insert_before(before, dq)
    dq.outputs[0].name = f"{name}.dequantized"
    return dq.outputs[0]


def int4_linears(args: ModelArgs, quantize_lm_head: bool) -> list[str]:
    from .quantize import block_linears

    return block_linears(args) + (["output.weight"] if quantize_lm_head else [])


__all__ = ["Int4WeightTransform", "dequantized_int4", "int4_linears"]
