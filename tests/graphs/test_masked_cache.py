"""The batched KV loop (validate/batching.py) pads the cache and relies on attention_mask alone to hide the padding.

Each target's graph must ignore masked cache slots wherever they sit (left, middle, right, scattered): a decode
step over a cache whose masked slots hold large garbage gives the logits of the unpadded batch-1 step, to float
rounding. Zeros in the masked slots would not show a leak (a zero key still scores 0), hence the garbage.
"""

from __future__ import annotations

import numpy as np
import pytest
from graph_helpers import TINY_GQA, exported, save, torch_model

from llama_export import io_spec
from llama_export.graphs import apply_target
from llama_export.validate.runners import KVSession, OrtRunner, TorchRunner

PROMPT_LEN, PAD = 7, 5
LAYOUTS = {  # which of PROMPT_LEN + PAD cache columns hold the real prompt
    "left": np.r_[PAD:PROMPT_LEN + PAD],
    "right": np.r_[0:PROMPT_LEN],
    "middle": np.r_[0:3, 3 + PAD:PROMPT_LEN + PAD],
    "scattered": np.r_[1:3, 4:6, 7:9, 11],
}


def _masked_step_error(runner) -> dict[str, float]:
    """Max |logits - batch-1 logits| of one decode step per layout, both rows of a 2-row batch."""
    prompt = np.random.default_rng(1).integers(1, 100, size=(1, PROMPT_LEN))
    session = KVSession(runner)
    session.prefill(prompt)
    past = session.past
    reference = session.step(np.array([5]))[0, -1]
    garbage = np.random.default_rng(2)
    errors = {}
    for layout, columns in LAYOUTS.items():
        width = PROMPT_LEN + PAD
        feeds = {}
        for name, value in past.items():
            cache = garbage.normal(0, 50, size=(2, value.shape[1], width, value.shape[3])).astype(value.dtype)
            cache[:, :, columns] = value[0]
            feeds[name] = cache
        mask = np.zeros((2, width + 1), dtype=np.int64)
        mask[:, columns] = 1
        mask[:, -1] = 1
        feeds |= {io_spec.INPUT_IDS: np.array([[5], [5]]), io_spec.POSITION_IDS: np.array([[PROMPT_LEN]] * 2),
                  io_spec.ATTENTION_MASK: mask}
        logits = runner.run(feeds)[io_spec.LOGITS][:, -1]
        errors[layout] = float(np.abs(logits - reference).max())
    return errors


@pytest.mark.parametrize("target", ["none", "onnx", "ort", "plugin"])
def test_masked_cache_slots_are_ignored(tmp_path, target):
    args = TINY_GQA
    model, _ = apply_target(exported(args), args, target)
    errors = _masked_step_error(OrtRunner(save(model, tmp_path / "model.onnx"), args))
    # Measured ~1e-7 (batch-2 vs batch-1 GEMM rounding); a leak of std-50 garbage would be orders larger.
    assert max(errors.values()) < 1e-5, errors


def test_reference_model_ignores_masked_cache_slots():
    errors = _masked_step_error(TorchRunner(torch_model(TINY_GQA)))
    assert max(errors.values()) < 1e-5, errors
