"""Accuracy metrics between a reference and a candidate's logits. Pure numpy, one small function each.

Logits are [positions, vocab] (any leading dims are flattened). Everything is computed in float64: the
quantities compared against the gate (KL around 1e-7 for fp32) are below float32's resolution of a log-softmax.
"""

from __future__ import annotations

import numpy as np

TOP_K = 5


def _rows(logits: np.ndarray) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    return array.reshape(-1, array.shape[-1])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    rows = _rows(logits)
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.max(np.abs(_rows(candidate) - _rows(reference)), initial=0.0))


def max_rel_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest |c - r| / |r| where |r| is not tiny; the scale floor (1e-3 of the row's largest logit) keeps
    near-zero reference logits, whose relative error means nothing, from dominating."""
    ref, cand = _rows(reference), _rows(candidate)
    floor = 1e-3 * np.abs(ref).max(axis=-1, keepdims=True) + 1e-12
    return float(np.max(np.abs(cand - ref) / np.maximum(np.abs(ref), floor), initial=0.0))


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Smallest per-position cosine similarity (the worst position, not the mean)."""
    ref, cand = _rows(reference), _rows(candidate)
    dot = (ref * cand).sum(axis=-1)
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
    return float(np.min(dot / np.maximum(norms, 1e-300)))


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of positions whose argmax token is the same."""
    return float(np.mean(_rows(reference).argmax(-1) == _rows(candidate).argmax(-1)))


def topk_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = TOP_K) -> float:
    """Mean |top-k(ref) ∩ top-k(cand)| / k over positions."""
    ref, cand = _rows(reference), _rows(candidate)
    k = min(k, ref.shape[-1])
    ref_top = np.argpartition(-ref, k - 1, axis=-1)[:, :k]
    cand_top = np.argpartition(-cand, k - 1, axis=-1)[:, :k]
    shared = [len(np.intersect1d(a, b)) for a, b in zip(ref_top, cand_top)]
    return float(np.mean(shared) / k)


def kl_per_position(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) ‖ softmax(cand)) in nats, one value per position."""
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    return np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=-1), 0.0)  # clamp float rounding below 0


def kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(reference ‖ candidate) over positions, in nats."""
    return float(np.mean(kl_per_position(reference, candidate)))


def abs_error_per_position(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    return np.abs(_rows(candidate) - _rows(reference)).max(axis=-1)


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    """exp(mean negative log-likelihood): logits [n, vocab] where row i predicts targets[i] (token level)."""
    log_probs = log_softmax(logits)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(targets) != len(log_probs):
        raise ValueError(f"{len(log_probs)} logit rows for {len(targets)} targets")
    return float(np.exp(-np.mean(log_probs[np.arange(len(targets)), targets])))


def relative_rms_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """‖c - r‖ / ‖r‖ over a whole tensor: the layer-bisection measure (scale-free across layers)."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return float(np.linalg.norm(cand - ref) / max(np.linalg.norm(ref), 1e-300))


def logit_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Every logit metric for one step (or for all steps concatenated)."""
    return {
        "max_abs": max_abs_error(reference, candidate),
        "max_rel": max_rel_error(reference, candidate),
        "cosine_min": cosine_similarity(reference, candidate),
        "top1": top1_agreement(reference, candidate),
        f"top{TOP_K}_overlap": topk_overlap(reference, candidate),
        "kl": kl_divergence(reference, candidate),
        "kl_max": float(np.max(kl_per_position(reference, candidate))),
    }


__all__ = ["TOP_K", "abs_error_per_position", "cosine_similarity", "kl_divergence", "kl_per_position",
           "log_softmax", "logit_metrics", "max_abs_error", "max_rel_error", "perplexity", "relative_rms_error",
           "top1_agreement", "topk_overlap"]
