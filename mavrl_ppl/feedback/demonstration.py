"""Demonstrations: Boltzmann-rational actions under Q (REFERENCE §1)."""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from mavrl_ppl.feedback.base import FeedbackType, Latents, VariableSpec, rationality, register
from mavrl_ppl.feedback.ops import align_batch, log_softmax, masked_sum, pick
from mavrl_ppl.feedback.segments import segment_dataset
from mavrl_ppl.feedback.teachers import Teacher


def log_likelihood(batch, latents: Latents, params):
    """Sum over an episode's valid steps of ``log_softmax(beta * Q(s_t, .))[a_t]`` (one item = one episode)."""
    xp = array_namespace(latents.q)
    # Padded steps may hold anything (inf, NaN): zero them BEFORE the softmax, or its gradient is NaN there.
    q = xp.where(batch["valid"][..., None], latents.q, xp.zeros_like(latents.q))
    logp = pick(log_softmax(align_batch(params["beta"], q.ndim) * q), batch["action"])
    return masked_sum(logp, batch["valid"])


def simulate(teacher: Teacher, count: int, rng: np.random.Generator, *, beta: float = 10.0):
    """``count`` whole expert episodes from the start to the goal, acting with ``softmax(beta * Q*)``."""
    episodes = teacher.episodes(count, beta, rng)
    return segment_dataset(episodes, ("item", "step"), {}, {**teacher.attrs, "beta": beta})


DEMONSTRATION = register(
    FeedbackType(
        name="demo",
        label="action",
        segment_dims=("item", "step"),
        variables={"action": VariableSpec(("item", "step"), "int")},
        needs=frozenset({"q"}),
        nuisance=(rationality(),),
        log_likelihood=log_likelihood,
        simulate=simulate,
        defaults={"beta": 10.0},
    )
)
