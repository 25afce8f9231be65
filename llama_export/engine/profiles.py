"""Optimization profiles for prefill and decode, derived from io_spec so every input agrees.

prefill: seq 1..max_input, past 0 (total = seq).
decode:  seq 1, past 1..max_seq-1 (total = past + 1).
Each dynamic dim gets (min, opt, max); `total` is computed as past + seq for each of the three, so
attention_mask and the KV tensors can never disagree (TensorRT rejects a profile whose opt shapes
violate the graph's own shape constraints).

The limits are also what a built engine can run: `ProfileLimits.from_engine` reads them back from the manifest,
`check_run` refuses a run that would leave them (before any GPU runtime loads), and `select_profile` picks the
profile each step runs in. Pure Python: all of it is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import io_spec
from ..config import ModelArgs
from ..errors import UserError

Range = tuple[int, int, int]  # (min, opt, max)
# An engine's optimization profile i is PROFILES[i]: build_engine adds them in dim_ranges' order, which is this one.
PROFILES = ("prefill", "decode")
PREFILL, DECODE = range(len(PROFILES))


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

    @classmethod
    def from_engine(cls, engine: dict, where: str) -> ProfileLimits:
        """The limits an engine was built with, from its manifest section (`where` names it in errors)."""
        try:
            return cls(**{key: int(engine["limits"][key]) for key in ("max_batch", "max_input", "max_seq")})
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: the engine section records no usable limits ({type(exc).__name__}: {exc}); "
                            "rebuild the engine") from None

    def check_run(self, batch: int, prompt: int | None, new_tokens: int, prompt_what: str, new_what: str) -> None:
        """Refuse (one-line UserError naming the limit and the build option that raises it) a run of `batch`
        sequences, each a prompt of `prompt` tokens (None: not known yet) and up to `new_tokens` more, that the
        engine's profiles cannot hold. Counted as the model's context is: prompt + new tokens <= max_seq.
        `prompt_what` / `new_what` name the user's numbers, e.g. "--prompt-tokens 64" and "--steps 32"."""
        if batch > self.max_batch:
            raise UserError(f"{batch} prompts exceed the engine's largest batch (max_batch {self.max_batch}); pass "
                            f"at most {self.max_batch}, or rebuild the engine with --max-batch {batch} or more")
        if new_tokens >= self.max_seq:
            raise UserError(f"{new_what} leaves no room for a prompt in the engine's KV cache (max_seq "
                            f"{self.max_seq}); lower it, or rebuild the engine with a larger --max-seq")
        if prompt is None:
            return
        if prompt > self.max_input:
            raise UserError(f"{prompt_what} exceeds the engine's longest prompt (max_input {self.max_input}); "
                            f"shorten it, or rebuild the engine with --max-input {prompt} or more")
        if prompt + new_tokens > self.max_seq:
            raise UserError(f"{prompt_what} + {new_what} = {prompt + new_tokens} tokens exceed the engine's KV cache "
                            f"(max_seq {self.max_seq}); lower them, or rebuild the engine with --max-seq "
                            f"{prompt + new_tokens} or more")

    def select_profile(self, batch: int, past: int, seq: int) -> int:
        """The optimization profile (PREFILL or DECODE) a step of `seq` new tokens on a cache of `past` tokens runs
        in; a UserError when neither profile holds the step."""
        if not 1 <= batch <= self.max_batch:
            raise UserError(f"a batch of {batch} is outside the engine's profiles (max_batch {self.max_batch}); "
                            "rebuild the engine with a larger --max-batch")
        if past == 0:
            if not 1 <= seq <= self.max_input:
                raise UserError(f"a prompt of {seq} tokens is outside the engine's prefill profile (max_input "
                                f"{self.max_input}); rebuild the engine with a larger --max-input")
            return PREFILL
        if seq != 1:
            raise UserError(f"{seq} tokens on a cache of {past}: the engine's decode profile takes one token per "
                            "step (prompts are prefilled on an empty cache)")
        if past + seq > self.max_seq:
            raise UserError(f"{past + seq} tokens exceed the engine's KV cache (max_seq {self.max_seq}); rebuild the "
                            "engine with a larger --max-seq")
        return DECODE


def dim_ranges(limits: ProfileLimits) -> dict[str, dict[str, Range]]:
    batch = (1, limits.max_batch, limits.max_batch)
    prefill_seq = (1, max(1, limits.max_input // 2), limits.max_input)
    decode_past = (1, max(1, limits.max_seq // 2), limits.max_seq - 1)
    profiles = {
        PROFILES[PREFILL]: {io_spec.BATCH: batch, io_spec.SEQ: prefill_seq, io_spec.PAST: (0, 0, 0)},
        PROFILES[DECODE]: {io_spec.BATCH: batch, io_spec.SEQ: (1, 1, 1), io_spec.PAST: decode_past},
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
