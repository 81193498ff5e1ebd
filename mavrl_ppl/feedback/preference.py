"""Pairwise preferences under Bradley-Terry on mean segment rewards (REFERENCE §1)."""

from __future__ import annotations

import numpy as np

from mavrl_ppl.feedback.base import FeedbackType, Latents, VariableSpec, rationality, register
from mavrl_ppl.feedback.ops import align_batch, log_sigmoid, masked_mean
from mavrl_ppl.feedback.segments import segment_dataset, segment_means
from mavrl_ppl.feedback.teachers import Teacher


def log_likelihood(batch, latents: Latents, params):
    """``y log sigmoid(d) + (1 - y) log sigmoid(-d)``, ``d = beta * (mean r(first) - mean r(second))``;
    soft labels ``y`` in [0, 1] give the expected log-likelihood."""
    means = masked_mean(latents.reward, batch["valid"])  # (..., item, side)
    diff = means[..., 0] - means[..., 1]  # (..., item)
    d = align_batch(params["beta"], diff.ndim) * diff
    y = batch["preference"]
    return y * log_sigmoid(d) + (1.0 - y) * log_sigmoid(-d)


def simulate(
    teacher: Teacher, count: int, rng: np.random.Generator, *, beta: float = 5.0, segment_length: int = 10
):
    """``count`` pairs of behaviour segments labelled by a Boltzmann-rational teacher with rationality ``beta``."""
    segments = teacher.segments((count, 2), segment_length, rng)
    means = segment_means(teacher.reward(segments), segments["valid"])
    p_first = 1.0 / (1.0 + np.exp(-beta * (means[:, 0] - means[:, 1])))
    labels = (rng.random(count) < p_first).astype(np.float32)
    return segment_dataset(
        segments, ("item", "side", "step"), {"preference": (("item",), labels)}, {**teacher.attrs, "beta": beta}
    )


def _check(dataset):
    y = dataset["preference"].values
    bad = np.flatnonzero(~((y >= 0) & (y <= 1)))
    return [("preference", int(i), f"label {y[i]!r} is outside [0, 1]") for i in bad]


PREFERENCE = register(
    FeedbackType(
        name="pref",
        label="preference",
        segment_dims=("item", "side", "step"),
        variables={"preference": VariableSpec(("item",), "float")},
        needs=frozenset({"reward"}),
        nuisance=(rationality(),),
        log_likelihood=log_likelihood,
        simulate=simulate,
        check=_check,
        defaults={"beta": 5.0, "segment_length": 10},
    )
)
