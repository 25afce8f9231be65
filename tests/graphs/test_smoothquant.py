"""SmoothQuant's math: the smoothing factors (graphs/calibration.smoothing_factors) and where the streamed weight
transform puts them (graphs/quantize.WeightTransform).

The properties come from the method, not from the code: with s_j = max|X_j|^α / max|W_j|^(1−α), α = 1 moves all
of an input channel's range into the weights (every smoothed activation channel peaks at 1), α = 0 none of it
(every weight column peaks at 1), α = ½ balances the two (max|X_j / s_j| = max|W_j · s_j|); and dividing a linear's
input by s while multiplying the weight's columns by s leaves X·Wᵀ unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llama_export.config import ModelArgs
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.graphs.calibration import Calibration, smoothing_factors, smoothing_groups
from llama_export.graphs.quantize import (
    Q_MAX,
    SCALE_SUFFIX,
    WEIGHT_SUFFIX,
    QuantOptions,
    WeightTransform,
    block_linears,
)
from llama_export.model import Transformer

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


def random_model(args: ModelArgs = ARGS) -> Transformer:
    model = Transformer(args)
    model.load_state_dict(RandomCheckpoint(args, seed=1).state_dict())
    return model.eval()


def in_features(model: Transformer, linear: str) -> int:
    return dict(model.named_parameters())[linear].shape[1]


def outlier_amax(model: Transformer, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-input-channel activation ranges for every block linear (as calibration.collect_input_amax gives), with
    a few 100x outlier channels (what SmoothQuant is for); the members of a group get different ranges, as if
    their hooks had seen different data."""
    rng = np.random.default_rng(seed)
    amax = {}
    for name in block_linears(model.args):
        x = rng.uniform(0.5, 2.0, in_features(model, name)).astype(np.float32)
        x[rng.choice(x.size, 3, replace=False)] *= 100
        amax[name] = x
    return amax


def column_amax(model: Transformer, name: str) -> np.ndarray:
    return dict(model.named_parameters())[name].detach().abs().amax(0).numpy()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_factors_balance_activation_and_weight_ranges(alpha):
    model = random_model()
    input_amax = outlier_amax(model)
    factors = smoothing_factors(model, input_amax, alpha)
    groups = smoothing_groups(ARGS.n_layers)
    assert set(factors) == {name for _, linears in groups for name in linears}
    assert not any(".attention.wo." in name for name in factors)  # wo's input is not smoothed (calibration.py)
    for _, linears in groups:
        s = factors[linears[0]]
        for name in linears:  # one input, one s: every linear reading it is scaled alike
            np.testing.assert_array_equal(factors[name], s)
        assert s.dtype == np.float32 and s.shape == (in_features(model, linears[0]),) and (s > 0).all()
        smoothed_x = np.max([input_amax[name] for name in linears], axis=0) / s
        smoothed_w = np.max([column_amax(model, name) for name in linears], axis=0) * s
        if alpha == 1.0:
            np.testing.assert_allclose(smoothed_x, 1.0, rtol=1e-6)
        elif alpha == 0.0:
            np.testing.assert_allclose(smoothed_w, 1.0, rtol=1e-6)
        else:
            np.testing.assert_allclose(smoothed_x, smoothed_w, rtol=1e-5)


def test_half_alpha_takes_the_square_root_of_the_outliers():
    """At α = ½ an activation channel 100x the others ends up ~10x them (before: 100x), the point of smoothing."""
    model = random_model()
    input_amax = outlier_amax(model)
    factors = smoothing_factors(model, input_amax, 0.5)
    name = "layers.0.feed_forward.w2.weight"  # a group of one: its own input's ranges
    before = input_amax[name].max() / np.median(input_amax[name])
    after = (input_amax[name] / factors[name]).max() / np.median(input_amax[name] / factors[name])
    assert before > 50 and after < before / 5


def test_calibration_reports_the_smoothed_activation_range():
    model = random_model()
    input_amax = outlier_amax(model)
    factors = smoothing_factors(model, input_amax, 1.0)
    calibration = Calibration(1.0, "test", "0" * 64, 1, 1, input_amax, factors)
    name = "layers.1.attention.wq.weight"
    assert calibration.activation_amax(name) == pytest.approx(float((input_amax[name] / factors[name]).max()))
    wo = "layers.1.attention.wo.weight"
    assert calibration.activation_amax(wo) == input_amax[wo].max()  # not smoothed: the raw range
    assert calibration.manifest()["smoothed"] == ["w1", "w2", "w3", "wk", "wq", "wv"]


def power_of_two(rng: np.random.Generator, n: int) -> np.ndarray:
    """Factors whose products and quotients are exact in floating point."""
    return (2.0 ** rng.integers(-3, 4, n)).astype(np.float32)


def grid_checkpoint(args: ModelArgs, smoothing: dict[str, np.ndarray], rows: dict[str, np.ndarray],
                    rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Weights built so that each linear, once smoothed, lies on its int8 grid: W·diag(s) = diag(c)·K with integer K
    (each row reaching ±127) and power-of-two row scales c. Quantization is then lossless, and any difference
    between the transformed and the original model is the smoothing's own."""
    state = RandomCheckpoint(args, seed=2).state_dict()
    for name, tensor in state.items():
        if tensor.dim() == 1:  # norm weights: random, so a division by s shows
            state[name] = torch.from_numpy(rng.uniform(0.5, 1.5, tensor.shape).astype(np.float32))
        elif name.startswith("layers."):
            out, inp = tensor.shape
            k = rng.integers(-126, 127, (out, inp)).astype(np.float32)
            k[np.arange(out), rng.integers(0, inp, out)] = Q_MAX * rng.choice([-1.0, 1.0], out)
            smoothed = k * power_of_two(rng, out)[:, None] / 64
            w = smoothed / smoothing.get(name, np.ones(inp, np.float32))[None, :]
            w = w * rows.get(name, np.ones(out, np.float32))[:, None]  # w3 also absorbs w2's 1/s per row
            state[name] = torch.from_numpy(w.astype(np.float32))
    return state


def transformed_state(transform: WeightTransform, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transform's output back in checkpoint layout: int8 [in, out] × scale [out] → float [out, in]."""
    out = {}
    for name, tensor in state.items():
        written = dict(transform(name, tensor))
        if name + WEIGHT_SUFFIX in written:
            q, scale = written[name + WEIGHT_SUFFIX], written[name + SCALE_SUFFIX]
            out[name] = (q.float() * scale.float()[None, :]).t().contiguous()
        else:
            (out[name],) = written.values()
    return out


def test_smoothing_leaves_every_block_output_unchanged():
    """Norms divided by s, the linears after them multiplied by s (columns), w3's rows divided by w2's s and w2's
    columns multiplied by it: the smoothed model computes the original model's logits (exact arithmetic up to
    float32 rounding), though its weights differ."""
    rng = np.random.default_rng(0)
    smoothing, rows = {}, {}
    probe = Transformer(ARGS)
    for absorber, linears in smoothing_groups(ARGS.n_layers):
        s = power_of_two(rng, in_features(probe, linears[0]))
        rows[absorber] = s
        smoothing.update({name: s for name in linears})
    state = grid_checkpoint(ARGS, smoothing, rows, rng)
    calibration = Calibration(0.5, "test", "0" * 64, 1, 1, {}, smoothing)
    transform = WeightTransform(ARGS, QuantOptions("int8", calibration=calibration), torch.float32)
    smoothed = transformed_state(transform, state)
    assert not torch.equal(smoothed["layers.0.attention_norm.weight"], state["layers.0.attention_norm.weight"])
    assert not torch.equal(smoothed["layers.1.feed_forward.w3.weight"], state["layers.1.feed_forward.w3.weight"])

    def logits(weights):
        model = Transformer(ARGS)
        model.load_state_dict(weights)
        ids = torch.from_numpy(rng.integers(0, ARGS.vocab_size, (2, 9)))
        with torch.no_grad():
            return model(ids, torch.arange(9).expand(2, 9), torch.ones_like(ids), *model.empty_cache(2))[0]

    rng_state = rng.bit_generator.state
    original = logits(state)
    rng.bit_generator.state = rng_state  # the same prompt for both
    np.testing.assert_allclose(logits(smoothed).numpy(), original.numpy(), atol=1e-5 * original.abs().max().item())


def test_int8_without_a_calibration_is_refused():
    with pytest.raises(ValueError, match="needs a Calibration"):
        WeightTransform(ARGS, QuantOptions("int8"), torch.float32)
