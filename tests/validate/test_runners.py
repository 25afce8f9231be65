"""The KV loop must reproduce a full forward pass, and left padding must not change real tokens' logits."""

import numpy as np
import pytest
import torch

from llama_export.config import ModelArgs
from llama_export.exporter.checkpoints import load_model
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.validate.runners import KVSession, TorchRunner, left_padded_position_ids

CONFIGS = {
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=97, multiple_of=32),
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32),
}


@pytest.fixture(params=sorted(CONFIGS))
def runner(request):
    torch.manual_seed(0)
    return TorchRunner(load_model(RandomCheckpoint(CONFIGS[request.param], seed=3)))


def test_prefill_then_decode_equals_full_forward(runner):
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, 12))
    full = KVSession(runner).prefill(tokens)
    session = KVSession(runner)
    stepped = [session.prefill(tokens[:, :5])]
    for t in range(5, 12):
        stepped.append(session.step(tokens[:, t]))
    stepped = np.concatenate(stepped, axis=1)
    np.testing.assert_allclose(stepped, full, atol=2e-5, rtol=0)


def test_left_padded_rows_match_unpadded_runs(runner):
    rng = np.random.default_rng(1)
    long_row, short_row = rng.integers(0, 97, size=7), rng.integers(0, 97, size=4)
    batch = np.stack([long_row, np.concatenate([[0, 0, 0], short_row])])
    mask = np.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    session = KVSession(runner)
    padded = session.prefill(batch, mask)
    next_tokens = np.array([5, 9])
    padded_step = session.step(next_tokens)

    alone = KVSession(runner)
    unpadded = alone.prefill(short_row[None])
    unpadded_step = alone.step(next_tokens[1:])
    np.testing.assert_allclose(padded[1, 3:], unpadded[0], atol=2e-5, rtol=0)
    np.testing.assert_allclose(padded_step[1], unpadded_step[0], atol=2e-5, rtol=0)
    assert np.isfinite(padded).all()


def test_position_ids_skip_padding():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert left_padded_position_ids(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
