"""Metrics and gate logic on hand-made numbers."""

import math

import numpy as np
import pytest

from llama_export.validate import gate, metrics
from llama_export.validate.compare import first_divergence


def test_identical_logits_have_zero_error():
    logits = np.random.default_rng(0).standard_normal((6, 50))
    m = metrics.logit_metrics(logits, logits.copy())
    assert m["max_abs"] == 0 and m["max_rel"] == 0 and m["kl"] == 0
    assert m["top1"] == 1 and m["top5_overlap"] == 1 and m["cosine_min"] == pytest.approx(1)


def test_kl_matches_closed_form():
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.5, 0.3, 0.2])
    expected = float(np.sum(p * np.log(p / q)))
    assert metrics.kl_divergence(np.log(p)[None], np.log(q)[None]) == pytest.approx(expected, rel=1e-12)
    assert metrics.kl_divergence(np.log(p)[None] + 5.0, np.log(q)[None]) == pytest.approx(expected)  # shift-free


def test_perplexity_of_uniform_logits_is_vocab_size():
    assert metrics.perplexity(np.zeros((4, 37)), np.array([1, 2, 3, 4])) == pytest.approx(37)
    confident = np.full((2, 10), -50.0)
    confident[[0, 1], [3, 7]] = 50.0
    assert metrics.perplexity(confident, np.array([3, 7])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.perplexity(np.zeros((3, 5)), np.array([1, 2]))


def test_top1_and_topk():
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    cand = np.array([[4.0, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert metrics.top1_agreement(ref, cand) == 0.5
    assert metrics.topk_overlap(ref, cand, k=2) == 1.0
    assert metrics.topk_overlap(ref, ref[:, ::-1], k=2) == 0.0


def test_relative_error_ignores_near_zero_references():
    ref = np.array([[100.0, 1e-9]])
    cand = np.array([[100.1, 1e-3]])
    assert metrics.max_rel_error(ref, cand) == pytest.approx(1e-3 / 0.1, rel=1e-5)  # 2nd: floor 1e-3 × 100


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2


def test_first_bad_layer_finds_the_jump_not_the_first_lossy_layer():
    limits = [1e-3] * 5
    assert gate.first_bad_layer([1e-7, 1e-7, 1e-7, 1e-7, 1e-7], limits) is None
    assert gate.first_bad_layer([1e-7, 0.3, 0.4, 0.5, 0.5], limits) == 1
    # uniformly lossy (every layer over the limit) with a big jump at layer 3
    assert gate.first_bad_layer([2e-3, 3e-3, 4e-3, 0.2, 0.25], limits) == 3


def test_gate_limits_scale_with_the_noise_floor():
    overall = {"max_abs": 1.0, "kl": 4e-3, "top1": 0.9}
    noise = {"kl": 1e-3, "top1": 0.93}
    checks = {c.name: c for c in gate.gate_checks("fp16", overall, noise, 0.01, 0.004)}
    assert "max_abs" not in checks  # absolute logit error is no criterion for fp16
    assert checks["kl"].limit == pytest.approx(5e-3) and checks["kl"].passed
    assert checks["top1"].limit == pytest.approx(0.91) and not checks["top1"].passed
    assert checks["ppl_delta"].limit == pytest.approx(0.02) and checks["ppl_delta"].passed
    fp32 = {c.name: c for c in gate.gate_checks("fp32", {"max_abs": 2e-4, "kl": 0.0, "top1": 1.0}, None, 0.0, None)}
    assert not fp32["max_abs"].passed and fp32["kl"].passed


def test_one_table_covers_every_precision():
    from llama_export.exporter.options import ALL_PRECISIONS

    # every precision the exporter accepts has a gate (int4-wo was once exportable with no limits of its own)
    assert set(gate.TOLERANCES) == set(ALL_PRECISIONS)
    assert all(math.isfinite(v) for t in gate.tolerance_table().values() for v in t.values() if v is not None)
    with pytest.raises(KeyError):
        gate.tolerance_for("fp8")
