"""The one place that names the model's inputs, outputs and dynamic dimensions.

One graph serves prefill (past = 0) and decode (seq = 1). The KV cache is explicit: each layer reads
`past_key_values.{i}.key/.value` [batch, n_kv_heads, past, head_dim] and writes `present.{i}.key/.value`
[batch, n_kv_heads, total, head_dim], total = past + seq.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelArgs

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"

BATCH, SEQ, PAST, TOTAL = "batch", "seq", "past", "total"


def past_key(i: int) -> str:
    return f"past_key_values.{i}.key"


def past_value(i: int) -> str:
    return f"past_key_values.{i}.value"


def present_key(i: int) -> str:
    return f"present.{i}.key"


def present_value(i: int) -> str:
    return f"present.{i}.value"


def past_names(n_layers: int) -> list[str]:
    """Flat KV input names in the order the model takes them: key0, value0, key1, value1, ..."""
    return [name for i in range(n_layers) for name in (past_key(i), past_value(i))]


def present_names(n_layers: int) -> list[str]:
    return [name for i in range(n_layers) for name in (present_key(i), present_value(i))]


def input_names(n_layers: int) -> list[str]:
    return [INPUT_IDS, POSITION_IDS, ATTENTION_MASK, *past_names(n_layers)]


def output_names(n_layers: int) -> list[str]:
    return [LOGITS, *present_names(n_layers)]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name; "model" means the model's float dtype
    shape: tuple  # ints for fixed dims, names for dynamic ones


def io_spec(args: ModelArgs, kv_dtype: str = "float32") -> dict[str, list[TensorSpec]]:
    kv_in = (BATCH, args.kv_heads, PAST, args.head_dim)
    kv_out = (BATCH, args.kv_heads, TOTAL, args.head_dim)
    inputs = [
        TensorSpec(INPUT_IDS, "int64", (BATCH, SEQ)),
        TensorSpec(POSITION_IDS, "int64", (BATCH, SEQ)),
        TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL)),
        *(TensorSpec(n, kv_dtype, kv_in) for n in past_names(args.n_layers)),
    ]
    outputs = [
        TensorSpec(LOGITS, "float32", (BATCH, SEQ, args.vocab_size)),
        *(TensorSpec(n, kv_dtype, kv_out) for n in present_names(args.n_layers)),
    ]
    return {"inputs": inputs, "outputs": outputs}


def io_spec_json(args: ModelArgs, kv_dtype: str = "float32") -> dict:
    spec = io_spec(args, kv_dtype)
    return {
        side: [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors]
        for side, tensors in spec.items()
    }
