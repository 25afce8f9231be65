import pytest

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.engine.profiles import ProfileLimits, input_shapes
from llama_export.errors import UserError

ARGS = ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=256)


def test_every_input_agrees_within_each_profile():
    shapes = input_shapes(ARGS, ProfileLimits(max_batch=4, max_input=32, max_seq=128))
    for per_input in shapes.values():
        assert set(per_input) == set(io_spec.input_names(ARGS.n_layers))
        for k in range(3):  # min, opt, max must each be a shape the graph accepts
            batch, seq = per_input["input_ids"][k]
            assert per_input["position_ids"][k] == (batch, seq)
            key = per_input[io_spec.past_key(1)][k]
            assert key == per_input[io_spec.past_value(0)][k]
            assert key[0] == batch and key[1] == ARGS.kv_heads and key[3] == ARGS.head_dim
            assert per_input["attention_mask"][k] == (batch, key[2] + seq)  # total = past + seq


def test_prefill_and_decode_ranges():
    shapes = input_shapes(ARGS, ProfileLimits(max_batch=4, max_input=32, max_seq=128))
    prefill, decode = shapes["prefill"], shapes["decode"]
    assert [s[2] for s in prefill[io_spec.past_key(0)]] == [0, 0, 0]
    assert prefill["input_ids"][0] == (1, 1) and prefill["input_ids"][2] == (4, 32)
    assert [s[1] for s in decode["input_ids"]] == [1, 1, 1]
    assert decode[io_spec.past_key(0)][0][2] == 1 and decode[io_spec.past_key(0)][2][2] == 127
    assert decode["attention_mask"][2] == (4, 128)


@pytest.mark.parametrize("limits,message", [
    (ProfileLimits(max_input=64, max_seq=32), "--max-input"),
    (ProfileLimits(max_seq=1024), "context length"),
    (ProfileLimits(max_batch=0), "at least 1"),
])
def test_inconsistent_limits_are_user_errors(limits, message):
    with pytest.raises(UserError, match=message):
        input_shapes(ARGS, limits)
