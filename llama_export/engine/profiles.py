"""Optimization profiles for prefill and decode, derived from io_spec so every input agrees.

prefill: seq 1..max_input, past 0 (total = seq).
decode:  seq 1, past 1..max_seq-1 (total = past + 1).
Each dynamic dim gets (min, opt, max); `total` is computed as past + seq for each of the three, so
attention_mask and the KV tensors can never disagree (TensorRT rejects a profile whose opt shapes
violate the graph's own shape constraints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import io_spec
from ..config import ModelArgs
from ..errors import UserError

Range = tuple[int, int, int]  # (min, opt, max)


@dataclass(frozen=True)
class ProfileLimits:
    max_batch: int = 1
    max_input: int = 128  # longest prompt in one prefill
    max_seq: int = 512  # longest past + seq, i.e. the KV cache capacity

    def check(self, args: ModelArgs) -> None:
        if min(self.max_batch, self.max_input, self.max_seq) < 1:
            raise UserError("--max-batch, --max-input and --max-seq must be at least 1")
        if self.max_seq < 2:
            raise UserError("--max-seq must be at least 2 (a prompt token plus one decoded token)")
        if self.max_input > self.max_seq:
            raise UserError(f"--max-input {self.max_input} exceeds --max-seq {self.max_seq}; lower it or raise --max-seq")
        if self.max_seq > args.max_seq_len:
            raise UserError(f"--max-seq {self.max_seq} exceeds the model's context length {args.max_seq_len}")

    def to_dict(self) -> dict:
        return asdict(self)


def dim_ranges(limits: ProfileLimits) -> dict[str, dict[str, Range]]:
    batch = (1, limits.max_batch, limits.max_batch)
    prefill_seq = (1, max(1, limits.max_input // 2), limits.max_input)
    decode_past = (1, max(1, limits.max_seq // 2), limits.max_seq - 1)
    profiles = {
        "prefill": {io_spec.BATCH: batch, io_spec.SEQ: prefill_seq, io_spec.PAST: (0, 0, 0)},
        "decode": {io_spec.BATCH: batch, io_spec.SEQ: (1, 1, 1), io_spec.PAST: decode_past},
    }
    for dims in profiles.values():
        dims[io_spec.TOTAL] = tuple(p + s for p, s in zip(dims[io_spec.PAST], dims[io_spec.SEQ]))
    return profiles


def input_shapes(args: ModelArgs, limits: ProfileLimits) -> dict[str, dict[str, tuple[tuple[int, ...], ...]]]:
    """{profile: {input name: (min shape, opt shape, max shape)}} for every model input."""
    limits.check(args)
    result = {}
    for profile, dims in dim_ranges(limits).items():
        shapes = {}
        for spec in io_spec.io_spec(args)["inputs"]:
            per_dim = [dims[d] if isinstance(d, str) else (d, d, d) for d in spec.shape]
            shapes[spec.name] = tuple(tuple(r[k] for r in per_dim) for k in range(3))
        result[profile] = shapes
    return result
