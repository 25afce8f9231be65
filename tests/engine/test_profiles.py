import pytest

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.engine.profiles import DECODE, PREFILL, PROFILES, ProfileLimits, input_shapes
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


def test_profile_indices_follow_the_build_order():
    # build_engine adds the profiles in input_shapes' order; a step's profile index must name the same one.
    assert list(input_shapes(ARGS, ProfileLimits(max_seq=256))) == list(PROFILES)
    assert PROFILES[PREFILL] == "prefill" and PROFILES[DECODE] == "decode"


def _within(shapes, step_shapes) -> bool:
    """Every input's shape lies between the profile's min and max shapes."""
    return all(all(lo <= d <= hi for lo, d, hi in zip(shapes[n][0], s, shapes[n][2])) for n, s in step_shapes.items())


def test_select_profile_picks_the_profile_whose_shapes_hold_the_step():
    limits = ProfileLimits(max_batch=2, max_input=8, max_seq=16)
    shapes = input_shapes(ARGS, limits)
    for batch in (1, 2, 3):
        for past in range(18):
            for seq in (1, 2, 8, 9):
                kv = (batch, ARGS.kv_heads, past, ARGS.head_dim)
                step = {"input_ids": (batch, seq), "attention_mask": (batch, past + seq),
                        io_spec.past_key(0): kv}
                holding = [i for i, name in enumerate(PROFILES) if _within(shapes[name], step)]
                if holding:  # the profiles never overlap: a step fits one or none
                    assert limits.select_profile(batch, past, seq) == holding[0] and len(holding) == 1
                else:
                    with pytest.raises(UserError):
                        limits.select_profile(batch, past, seq)


@pytest.mark.parametrize("step,message", [
    ((3, 0, 4), "--max-batch"), ((1, 0, 9), "--max-input"), ((1, 16, 1), "--max-seq"),
    ((1, 4, 2), "one token per step"),
])
def test_steps_outside_the_profiles_name_the_build_option(step, message):
    with pytest.raises(UserError, match=message):
        ProfileLimits(max_batch=2, max_input=8, max_seq=16).select_profile(*step)


def test_check_run_counts_prompt_plus_new_tokens_against_the_engine():
    limits = ProfileLimits(max_batch=2, max_input=8, max_seq=16)
    limits.check_run(2, 8, 8, "p", "n")  # every limit met exactly
    limits.check_run(1, None, 15, "p", "n")  # no prompt known yet: room for one prompt token
    for args, message in [
        ((3, 4, 4, "p", "n"), r"3 prompts exceed the engine's largest batch \(max_batch 2\).*--max-batch 3"),
        ((1, None, 16, "p", "--steps 16"), r"--steps 16 leaves no room .*max_seq 16.*--max-seq"),
        ((1, 9, 1, "--prompt-tokens 9", "n"), r"--prompt-tokens 9 exceeds .*max_input 8.*--max-input 9"),
        ((1, 8, 9, "--prompt-tokens 8", "--steps 9"), (r"--prompt-tokens 8 \+ --steps 9 = 17 tokens exceed .*"
                                                      r"max_seq 16.*--max-seq 17")),
    ]:
        with pytest.raises(UserError, match=message):
            limits.check_run(*args)


@pytest.mark.parametrize("engine", [{}, {"limits": {"max_batch": 1, "max_input": 8}},
                                    {"limits": {"max_batch": "x", "max_input": 8, "max_seq": 16}}])
def test_damaged_engine_limits_are_one_line_errors(engine):
    with pytest.raises(UserError, match="out/x: the engine section records no usable limits"):
        ProfileLimits.from_engine(engine, "out/x")
    assert ProfileLimits.from_engine({"limits": {"max_batch": 2, "max_input": 8, "max_seq": 16}}, "x") == \
        ProfileLimits(2, 8, 16)
