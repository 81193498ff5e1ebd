"""Stop signals: a discrete-time hazard on cumulative regret (REFERENCE §1), optionally with a lapse rate.

The reference hazard is ``h_t = 1 - exp(-lambda C_t)``. A data set's ``lapse`` attribute ``epsilon`` (absent = 0,
the reference model) mixes in stops that ignore the regret: ``h_t = epsilon + (1 - epsilon) (1 - exp(-lambda C_t))``.
Real people press "stop" by mistake now and then, and a stop where the sampled reward sees no regret then costs
``log epsilon`` instead of ``-inf``. The reference likelihood is a log barrier at zero regret
(``log h ~ log(lambda C)``), whose unbounded curvature is where NUTS's divergent transitions come from
(``benchmarks/RESULTS.md``, NUTS notes). The simulator's default is :data:`LAPSE` (0: the paper's teacher and model);
simulated data carry their lapse and are modelled with it.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

from mavrl_ppl.feedback.base import FeedbackType, Latents, VariableSpec, register
from mavrl_ppl.feedback.ops import log1m_exp, masked_sum, pick, zero
from mavrl_ppl.feedback.segments import segment_dataset
from mavrl_ppl.feedback.teachers import Teacher

#: The default stop lapse: 0, the paper's model. Issue 19 asks for the smallest of 0.001, 0.003 and 0.01 with which
#: NUTS has no divergent transition on the three paper grids x seeds 0-4; none qualified on grid_cliff (each left a
#: run with one divergence: ``benchmarks/RESULTS.md``, "Stop lapse and NUTS divergences"), so the default stays.
LAPSE = 0.0

#: Floor on the log-hazard argument ``lambda * C_t``: a stop where the model sees zero regret keeps a tiny, finite
#: probability (``~1e-8``) instead of -inf, so one confident Q-network cannot produce a NaN gradient.
MIN_HAZARD = 1e-8


def discount_matrix(length: int, rho: float, xp, dtype) -> object:
    """``L[t, s] = rho^(t - s)`` for ``s <= t``, else 0: ``C = g @ L.T`` is ``C_t = rho * C_{t-1} + g_t``."""
    t = xp.arange(length, dtype=dtype)
    lags = t[:, None] - t[None, :]
    return xp.where(lags >= 0, rho ** xp.where(lags >= 0, lags, xp.zeros_like(lags)), xp.zeros_like(lags))


def cumulative_regret(q, action, valid, rho: float):
    """Instant regret ``g_t = max_a Q(s_t, a) - Q(s_t, a_t)`` (0 on invalid steps) and ``C_t = sum rho^(t-s) g_s``."""
    xp = array_namespace(q)
    # Padded steps may hold anything (inf, NaN): zero them BEFORE max/pick, or their gradients are NaN there.
    q = xp.where(valid[..., None], q, zero(q))
    g = xp.max(q, axis=-1) - pick(q, action)
    g = xp.where(valid, g, zero(g))
    lower = discount_matrix(g.shape[-1], rho, xp, g.dtype)
    return g @ xp.permute_dims(lower, (1, 0))


def log_likelihood(batch, latents: Latents, params):
    """``log h_tau + sum_{t<tau} log(1 - h_t)`` (or ``sum_t log(1 - h_t)`` if censored, ``tau = -1``), with
    ``h_t = epsilon + (1 - epsilon) (1 - exp(-lambda C_t))`` (``epsilon`` = the ``lapse`` attribute, default 0) and zero
    hazard on invalid steps."""
    xp = array_namespace(latents.q)
    valid = batch["valid"]
    lapse = float(batch.get("lapse", 0.0))
    x = batch["lambda"] * cumulative_regret(latents.q, batch["action"], valid, batch["rho"])  # lambda * C_t
    tau = batch["stop_time"][..., None]
    steps = xp.arange(x.shape[-1])
    keep = math.log1p(-lapse) - x  # log(1 - h_t)
    survive = masked_sum(keep, valid & (steps < tau))  # censored items: tau = -1 -> sum over all valid steps
    survive = xp.where(tau[..., 0] < 0, masked_sum(keep, valid), survive)
    # The hazard term at the stop step only: one log1m_exp per item, not per step (10x fewer float64 transcendentals;
    # its own speed-up was within timing noise on a loaded machine). Censored items have no stop step and add 0.
    at_stop = steps == tau
    x_stop = masked_sum(x, at_stop)
    log_hazard = log1m_exp(-xp.maximum(x_stop, xp.full_like(x_stop, MIN_HAZARD)))
    if lapse > 0.0:
        log_hazard = xp.logaddexp(xp.full_like(log_hazard, math.log(lapse)), math.log1p(-lapse) + log_hazard)
    # Zero hazard on invalid steps (REFERENCE §1): a stop there has probability 0 (validation rejects such data).
    stop_is_valid = xp.any(at_stop & valid, axis=-1)
    log_hazard = xp.where(stop_is_valid, log_hazard, xp.full_like(log_hazard, -math.inf))
    stopped = xp.where(tau[..., 0] < 0, xp.zeros_like(log_hazard), log_hazard)
    return survive + stopped


def simulate(
    teacher: Teacher,
    count: int,
    rng: np.random.Generator,
    *,
    rho: float = 0.1,
    c: float = 2.0,
    segment_length: int = 10,
    lapse: float = LAPSE,
    lam: float | None = None,
):
    """Stop times for ``count`` behaviour segments; ``lambda = c / median(max_t C_t)`` (the paper's calibration), or
    ``lam`` when given (a lambda that does not depend on the true reward, as simulation-based calibration needs: the
    model reads lambda as a known constant), and on every valid step a stop with probability ``lapse`` whatever the
    regret (0: the paper's teacher)."""
    if not 0.0 <= lapse < 1.0:
        raise ValueError(f"lapse must lie in [0, 1), got {lapse}")
    if lam is not None and not lam > 0:
        raise ValueError(f"lam must be positive, got {lam}")
    segments = teacher.segments((count,), segment_length, rng)
    cum = cumulative_regret(teacher.q(segments), segments["action"], segments["valid"], rho)
    if lam is None:
        median_peak = float(np.median(cum.max(-1)))
        if not median_peak > 0:
            raise ValueError("cannot calibrate lambda: the median segment has zero regret under the behaviour policy")
        lam = c / median_peak
    hazard = np.where(segments["valid"], lapse + (1.0 - lapse) * -np.expm1(-lam * cum), 0.0)
    stops = rng.random(hazard.shape) < hazard
    stop_time = np.where(stops.any(-1), stops.argmax(-1), -1)
    attrs = {**teacher.attrs, "rho": rho, "lambda": lam, "c": c, "lapse": lapse}
    return segment_dataset(segments, ("item", "step"), {"stop_time": (("item",), stop_time)}, attrs)


def _check(dataset):
    tau = dataset["stop_time"].values
    valid = dataset["valid"].values
    length = valid.shape[-1]
    problems = [("stop_time", int(i), f"stop time {tau[i]} is outside -1..{length - 1}")
                for i in np.flatnonzero((tau < -1) | (tau >= length))]
    inside = np.flatnonzero((tau >= 0) & (tau < length))
    at_invalid = inside[~valid[inside, tau[inside]]]
    problems += [("stop_time", int(i), f"stop time {tau[i]} falls on an invalid (padded) step") for i in at_invalid]
    for name in ("rho", "lambda"):
        if name not in dataset.attrs:
            problems.append((name, -1, f"attribute {name!r} is missing"))
    lapse = dataset.attrs.get("lapse", 0.0)
    try:
        in_range = 0.0 <= float(lapse) < 1.0
    except (TypeError, ValueError):
        in_range = False
    if not in_range:
        problems.append(("lapse", -1, f"attribute lapse must lie in [0, 1), got {lapse!r}"))
    return problems


STOP = register(
    FeedbackType(
        name="stop",
        label="stop_time",
        segment_dims=("item", "step"),
        variables={"stop_time": VariableSpec(("item",), "int")},
        needs=frozenset({"q"}),
        nuisance=(),
        log_likelihood=log_likelihood,
        simulate=simulate,
        check=_check,
        defaults={"rho": 0.1, "c": 2.0, "segment_length": 10, "lapse": LAPSE},
        attrs=("lambda", "rho", "lapse"),
    )
)
