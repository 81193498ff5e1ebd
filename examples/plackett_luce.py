"""A feedback type defined outside mavrl_ppl: rankings of k segments under Plackett-Luce.

A teacher sees ``k`` segments and orders them best first. With ``u_m`` the mean reward of segment ``m`` over its
valid steps and ``s_j`` the ``u`` of the segment ranked ``j``-th, ``P(ranking) = prod_j exp(beta s_j) /
sum_{l >= j} exp(beta s_l)``. With ``k = 2`` this is the Bradley-Terry preference.

Register it by importing this module (``import plackett_luce`` or ``python -m mavrl_ppl.fit --plugin
examples/plackett_luce.py --feedback ranking=64,...``); it then works with validation, simulation, SVI and NUTS.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from mavrl_ppl.feedback import (
    FeedbackType,
    Latents,
    VariableSpec,
    align_batch,
    logsumexp,
    masked_mean,
    pick,
    rationality,
    register,
    segment_dataset,
    segment_means,
)


def log_likelihood(batch, latents: Latents, params):
    """Per-item log-probability of the observed ranking (array API: runs on torch and on JAX)."""
    xp = array_namespace(latents.reward)
    means = masked_mean(latents.reward, batch["valid"])  # (..., item, slot): mean reward over the valid steps
    k = means.shape[-1]
    # ordered[..., j] = mean reward of the segment ranked j-th (batch["ranking"][item, j] is its slot)
    ordered = pick(means[..., None, :], batch["ranking"])
    x = align_batch(params["beta"], ordered.ndim) * ordered
    # log sum_{l >= j} exp(x_l) for every j: leave out the segments ranked above j with -inf
    later = xp.arange(k)[None, :] >= xp.arange(k)[:, None]  # later[j, l] = l >= j
    tails = logsumexp(xp.where(later, x[..., None, :], xp.full_like(x[..., None, :], -xp.inf)), axis=-1)
    return xp.sum(x - tails, axis=-1)


def simulate(teacher, count: int, rng: np.random.Generator, *, k: int = 3, beta: float = 5.0,
             segment_length: int = 10):
    """``count`` rankings of ``k`` behaviour segments: the Gumbel-max trick samples Plackett-Luce exactly."""
    segments = teacher.segments((count, k), segment_length, rng)
    means = segment_means(teacher.reward(segments), segments["valid"])
    ranking = np.argsort(-(beta * means + rng.gumbel(size=means.shape)), axis=-1)
    return segment_dataset(segments, ("item", "slot", "step"), {"ranking": (("item", "slot"), ranking)},
                           {**teacher.attrs, "beta": beta, "k": k})


def check(dataset):
    """Every ranking must be a permutation of 0..k-1."""
    ranking = dataset["ranking"].values
    k = ranking.shape[-1]
    bad = np.flatnonzero((np.sort(ranking, axis=-1) != np.arange(k)).any(-1))
    return [("ranking", int(i), f"ranking {ranking[i].tolist()} is not a permutation of 0..{k - 1}") for i in bad]


RANKING = register(
    FeedbackType(
        name="ranking",
        label="ranking",
        segment_dims=("item", "slot", "step"),
        variables={"ranking": VariableSpec(("item", "slot"), "int")},
        needs=frozenset({"reward"}),
        nuisance=(rationality(),),
        log_likelihood=log_likelihood,
        simulate=simulate,
        check=check,
        defaults={"k": 3, "beta": 5.0, "segment_length": 10},
    ),
    overwrite=True,  # re-importing the module (e.g. in a notebook) replaces the type instead of failing
)
