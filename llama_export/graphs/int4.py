"""INT4 weight-only: blockwise symmetric quantization, ONNX's packed INT4 layout, and the streamed weight transform.

Layout (the form ORT fuses into MatMulNBits and TensorRT imports as INT4 weight-only GEMM):
`DequantizeLinear(W.int4 [in, out] INT4, W.scale [ceil(in / B), out] float, axis=0, block_size=B) → MatMul`.
One scale per output column and block of B consecutive input channels; zero point 0 (TensorRT needs symmetric);
scale = max|w| / 7 over the block, so q = round(w / scale) lies in [-7, 7] ⊂ INT4's [-8, 7]. ONNX and ORT allow
a partial last block, TensorRT does not ("The quantization axis must divide into whole blocks", docs/ENGINES.md):
a linear whose `in` is not a multiple of B uses the largest allowed block size below B that divides it
(`block_size_for`; only the tiny model's w2, in 704 = 11 · 64, at B 128; every LLaMA size divides by 128).

Packing follows the ONNX spec: the tensor is flattened row-major and element 2i goes in the low nibble of
byte i, element 2i+1 in the high nibble. With [in, out] rows of even width, concatenating packed tensors along
`out` is concatenating their byte rows, which is how fused q/k/v and w1/w3 groups are written for the `ort`
target: ORT has no Concat kernel for INT4, so unlike int8 the group is concatenated in the file, not the graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

INT4_MAX = 7  # scale = amax / 7: symmetric, so -w quantizes to -q(w)
BLOCK_SIZES = (32, 64, 128)
DEFAULT_BLOCK_SIZE = 128  # TensorRT-LLM's and ModelOpt's default
WEIGHT_SUFFIX, SCALE_SUFFIX = ".int4", ".scale"


class PackedInt4(NamedTuple):
    """Bytes of an INT4 tensor (two values per byte) and its logical shape; what the weight stream writes."""

    data: torch.Tensor  # uint8, numel = prod(shape) / 2
    shape: tuple[int, ...]


def block_size_for(in_features: int, requested: int) -> int:
    """The block size a linear with `in_features` inputs gets: `requested`, or the largest allowed smaller one
    that divides it (TensorRT needs whole blocks)."""
    for size in sorted(BLOCK_SIZES, reverse=True):
        if size <= requested and in_features % size == 0:
            return size
    from ..errors import UserError

    raise UserError(f"int4-wo: {in_features} input channels are not a multiple of any block size "
                    f"≤ {requested} ({', '.join(map(str, BLOCK_SIZES))}); TensorRT needs whole blocks")


def n_blocks(in_features: int, block_size: int) -> int:
    return -(-in_features // block_size)


def _blocked(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """[in, out] → [n_blocks, block_size, out], zero-padded at the end of `in` (zeros never raise a max)."""
    k, n = w.shape
    pad = n_blocks(k, block_size) * block_size - k
    if pad:
        w = torch.cat([w, w.new_zeros(pad, n)])
    return w.reshape(-1, block_size, n)


def block_amax(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """max|w| per block and output column of an [in, out] weight: [n_blocks, out]."""
    return _blocked(w.float().abs(), block_size).amax(1)


def quantize_blockwise(w: torch.Tensor, block_size: int,
                       amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[in, out] float → (q int8 [in, out] in [-8, 7], scale fp32 [n_blocks, out]). `amax` (default: each
    block's max|w|) is the clipping range: AWQ's clip search passes a smaller one, and values beyond it saturate."""
    k = w.shape[0]
    amax = block_amax(w, block_size) if amax is None else amax.float()
    scale = amax.clamp_min(1e-12) / INT4_MAX  # an all-zero block: any scale works
    expanded = scale.repeat_interleave(block_size, 0)[:k]
    q = torch.round(w.float() / expanded).clamp_(-INT4_MAX - 1, INT4_MAX).to(torch.int8)
    return q, scale


def dequantize_blockwise(q: torch.Tensor, scale: torch.Tensor, block_size: int) -> torch.Tensor:
    return q.float() * scale.repeat_interleave(block_size, 0)[:q.shape[0]]


def fake_quantize(w: torch.Tensor, block_size: int, amax: torch.Tensor | None = None) -> torch.Tensor:
    """What the runtime multiplies by: the weight after INT4 rounding, in fp32 ([in, out] layout)."""
    q, scale = quantize_blockwise(w, block_size, amax)
    return dequantize_blockwise(q, scale, block_size)


def pack_int4(q: torch.Tensor) -> PackedInt4:
    """int8 values in [-8, 7] → ONNX INT4 bytes (low nibble first, row-major)."""
    if q.numel() % 2:
        raise ValueError(f"INT4 packing needs an even element count, got shape {tuple(q.shape)}")
    flat = q.reshape(-1).to(torch.uint8) & 0x0F  # two's complement nibble
    return PackedInt4((flat[0::2] | (flat[1::2] << 4)).contiguous(), tuple(q.shape))


def unpack_int4(packed: torch.Tensor | bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX INT4 bytes → int8 values (sign-extended), shaped `shape`."""
    data = torch.frombuffer(bytearray(packed), dtype=torch.uint8) if isinstance(packed, bytes) else packed
    nibbles = torch.stack([data & 0x0F, data >> 4], dim=1).reshape(-1).to(torch.int16)
    nibbles = torch.where(nibbles > 7, nibbles - 16, nibbles).to(torch.int8)
    return nibbles[: int(torch.tensor(shape).prod())].reshape(shape)


def concat_packed(parts: list[PackedInt4]) -> PackedInt4:
    """Packed [in, out_i] tensors → packed [in, sum out_i] (along `out`: byte rows side by side)."""
    k = parts[0].shape[0]
    if any(p.shape[0] != k or p.shape[1] % 2 for p in parts):
        raise ValueError(f"cannot concatenate packed INT4 shapes {[p.shape for p in parts]} along out")
    rows = [p.data.reshape(k, p.shape[1] // 2) for p in parts]
    return PackedInt4(torch.cat(rows, dim=1).reshape(-1), (k, sum(p.shape[1] for p in parts)))


__all__ = ["BLOCK_SIZES", "DEFAULT_BLOCK_SIZE", "INT4_MAX", "SCALE_SUFFIX", "WEIGHT_SUFFIX", "PackedInt4",
           "block_amax", "block_size_for", "concat_packed", "dequantize_blockwise", "fake_quantize", "n_blocks", "pack_int4",
           "quantize_blockwise", "unpack_int4"]
