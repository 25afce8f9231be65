import numpy as np

from llama_export.validate.generation import Sampling, choose_token


def test_greedy_picks_argmax():
    logits = np.array([0.1, 3.0, -2.0, 2.9])
    assert choose_token(logits, Sampling(), np.random.default_rng(0)) == 1


def test_top_p_never_samples_outside_the_nucleus():
    # probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two only
    logits = np.log(np.array([0.64, 0.24, 0.09, 0.03]))
    rng = np.random.default_rng(0)
    picks = {choose_token(logits, Sampling(temperature=1.0, top_p=0.8), rng) for _ in range(500)}
    assert picks == {0, 1}


def test_temperature_sampling_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.3]))
    rng = np.random.default_rng(0)
    picks = [choose_token(logits, Sampling(temperature=1.0), rng) for _ in range(4000)]
    assert abs(np.mean(np.array(picks) == 0) - 0.7) < 0.03
