"""The pass/fail gate: one table of tolerances per precision, and the checks it implies.

fp32 must match the reference almost bit for bit, so its limits are absolute. Reduced precisions cannot: their
limits scale with the *noise floor*, the distance between the Torch reference in fp32 and the same Torch model
in the candidate's dtype on the same inputs. A candidate may be `k` times as far from fp32 as Torch itself is
in that dtype (different kernels accumulate differently), and never has to beat an absolute floor. For int8
the noise floor only covers the activation dtype, not quantization, so the absolute floors carry the weight; int4-wo
(16 levels per block instead of 255 per channel) gets int8 W8A8's floors, measured in docs/BENCHMARKS.md (INT4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None  # max |logit error|; only meaningful when the candidate should equal the reference
    kl_abs: float  # KL(ref ‖ cand) limit = max(kl_abs, kl_k × noise KL)
    kl_k: float
    top1_min: float  # top-1 agreement limit = min(top1_min, noise top-1 − top1_slack)
    top1_slack: float
    ppl_abs: float  # |ppl_cand / ppl_ref − 1| limit = max(ppl_abs, ppl_k × noise |Δppl|)
    ppl_k: float
    layer_abs: float  # per-layer relative RMS error limit = max(layer_abs, layer_k × noise) (bisection only)
    layer_k: float


# fmt: off
TOLERANCES: dict[str, Tolerance] = {
    #                   max_abs  kl_abs  kl_k  top1_min slack  ppl_abs ppl_k  layer_abs layer_k
    "fp32":    Tolerance(1e-4,   1e-6,   0.0,  0.98,    0.0,   1e-4,   0.0,   1e-5,     0.0),
    "fp16":    Tolerance(None,   5e-4,   5.0,  0.95,    0.02,  5e-3,   5.0,   5e-3,     5.0),
    "bf16":    Tolerance(None,   2e-3,   5.0,  0.90,    0.03,  1e-2,   5.0,   2e-2,     5.0),
    "int8-wo": Tolerance(None,   2e-2,   5.0,  0.85,    0.05,  3e-2,   5.0,   5e-2,     5.0),
    "int8":    Tolerance(None,   5e-2,   5.0,  0.80,    0.05,  5e-2,   5.0,   1e-1,     5.0),
    "int4-wo": Tolerance(None,   5e-2,   5.0,  0.80,    0.05,  5e-2,   5.0,   1e-1,     5.0),
}
# fmt: on


def tolerance_for(precision: str) -> Tolerance:
    if precision not in TOLERANCES:
        raise KeyError(f"no gate for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[precision]


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    passed: bool
    rule: str  # how the limit was derived, for the report

    def to_dict(self) -> dict:
        return asdict(self)


def _at_most(name: str, value: float, limit: float, rule: str) -> Check:
    return Check(name, value, limit, bool(value <= limit), rule)


def gate_checks(precision: str, overall: dict, noise: dict | None, ppl_delta: float,
                noise_ppl_delta: float | None) -> list[Check]:
    """The checks for one comparison. `overall`/`noise`: logit_metrics over all steps (candidate, noise floor);
    ppl deltas are |ppl_x / ppl_ref − 1| on the text."""
    tol = tolerance_for(precision)
    noise_kl = noise["kl"] if noise else 0.0
    noise_top1 = noise["top1"] if noise else 1.0
    noise_ppl = noise_ppl_delta or 0.0
    checks = []
    if tol.max_abs is not None:
        checks.append(_at_most("max_abs", overall["max_abs"], tol.max_abs, f"≤ {tol.max_abs:g}"))
    checks.append(_at_most("kl", overall["kl"], max(tol.kl_abs, tol.kl_k * noise_kl),
                           f"≤ max({tol.kl_abs:g}, {tol.kl_k:g} × noise KL {noise_kl:.3g})"))
    top1_limit = min(tol.top1_min, noise_top1 - tol.top1_slack)
    checks.append(Check("top1", overall["top1"], top1_limit, bool(overall["top1"] >= top1_limit),
                        f"≥ min({tol.top1_min:g}, noise top-1 {noise_top1:.3g} − {tol.top1_slack:g})"))
    checks.append(_at_most("ppl_delta", ppl_delta, max(tol.ppl_abs, tol.ppl_k * noise_ppl),
                           f"≤ max({tol.ppl_abs:g}, {tol.ppl_k:g} × noise Δppl {noise_ppl:.3g})"))
    return checks


def layer_limits(precision: str, noise_errors: list[float] | None, n_layers: int) -> list[float]:
    tol = tolerance_for(precision)
    noise_errors = noise_errors or [0.0] * n_layers
    return [max(tol.layer_abs, tol.layer_k * e) for e in noise_errors]


def first_bad_layer(errors: list[float], limits: list[float]) -> int | None:
    """The layer where the error *jumps*: among layers over their limit, the one whose error grew most from
    the previous layer's (an error introduced in layer i is carried by every later layer, so "the first one over
    the limit" alone would blame layer 0 for a uniformly lossy model; the jump finds where the damage is done)."""
    best, best_growth = None, 0.0
    previous = 0.0
    for i, (error, limit) in enumerate(zip(errors, limits)):
        growth = error / max(previous, limit, 1e-30)
        if error > limit and growth > best_growth * 1.5:  # a later layer must grow clearly more to take over
            best, best_growth = i, growth
        previous = error
    return best


def tolerance_table() -> dict[str, dict]:
    return {name: asdict(tol) for name, tol in TOLERANCES.items()}


__all__ = ["TOLERANCES", "Check", "Tolerance", "first_bad_layer", "gate_checks", "layer_limits",
           "tolerance_for", "tolerance_table"]
