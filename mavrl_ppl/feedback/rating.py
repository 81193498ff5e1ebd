"""Ordinal ratings of one segment under an ordered logit on its mean reward (REFERENCE §1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from array_api_compat import array_namespace

from mavrl_ppl.feedback.base import FeedbackType, Latents, Nuisance, VariableSpec, register
from mavrl_ppl.feedback.ops import align_batch, log1m_exp, log_sigmoid, masked_mean, pick
from mavrl_ppl.feedback.segments import segment_dataset, segment_means
from mavrl_ppl.feedback.teachers import Teacher


def ordered_cutpoints(z):
    """Unconstrained ``z`` (last axis, K-1 entries) -> increasing cutpoints: the first free, then ``exp`` increments."""
    xp = array_namespace(z)
    steps = xp.concat([z[..., :1], xp.exp(z[..., 1:])], axis=-1)
    return xp.cumulative_sum(steps, axis=-1)


def log_likelihood(batch, latents: Latents, params):
    """``log(sigmoid(s*(theta_k - u)) - sigmoid(s*(theta_{k-1} - u)))`` with ``u`` the mean valid reward, ``s`` the
    data set's ``scale`` attribute (1 in the reference model), theta_0 = -inf and theta_K = +inf.

    Written as ``log sigmoid(a) + log sigmoid(-b) + log(1 - e^(b - a))`` so it stays finite in the tails."""
    xp = array_namespace(latents.reward)
    u = masked_mean(latents.reward, batch["valid"])[..., None]  # (..., item, 1)
    theta = align_batch(params["cutpoints"], u.ndim, event_ndim=1)
    scale = batch.get("scale", 1.0)
    k = batch["rating"]
    num_cut = theta.shape[-1]
    eta = scale * (theta - u)  # (..., item, K-1)
    is_bottom, is_top = k == 0, k == num_cut
    upper = pick(eta, xp.clip(k, 0, num_cut - 1))  # eta_k (valid unless top)
    lower = pick(eta, xp.clip(k - 1, 0, num_cut - 1))  # eta_{k-1} (valid unless bottom)
    middle = ~(is_bottom | is_top)
    gap = xp.where(middle, lower - upper, -xp.ones_like(upper))  # < 0 for ordered cutpoints
    zero = xp.zeros_like(upper)
    return (
        xp.where(is_top, zero, log_sigmoid(upper))
        + xp.where(is_bottom, zero, log_sigmoid(-lower))
        + xp.where(middle, log1m_exp(gap), zero)
    )


def simulate(
    teacher: Teacher,
    count: int,
    rng: np.random.Generator,
    *,
    num_categories: int = 5,
    segment_length: int = 10,
    scale: float = 1.0,
    cutpoints: Sequence[float] | None = None,
    noise_sd: float = 0.0,
):
    """Ratings of ``count`` behaviour segments under the ordered logit with ``scale``.

    The teacher judges ``u + e / scale`` (``u`` the true mean reward over VALID steps, ``e`` standard logistic) and
    reports its bin. By default the cutpoints sit at the ``1/K .. (K-1)/K`` quantiles of these judgements, so the
    categories are balanced. (Quantiles of the noise-free ``u`` leave categories empty on the paper grids, where many
    segments tie: measured 49/0/0/0/51 % on grid_sparse.) ``cutpoints`` (``K - 1`` increasing values) sets them
    instead, e.g. to a draw from the model's prior (simulation-based calibration, where cutpoints that depend on the
    reward would tell the model about the reward beyond its likelihood). The labels follow exactly the likelihood of
    :func:`log_likelihood`; the cutpoints used are the data set's ``true_cutpoints`` attribute.

    ``noise_sd > 0`` makes a teacher the model does not describe (REFERENCE_EXPERIMENTS §1, rating misspecification):
    Gaussian noise of that sd is added to each judgement *after* the cutpoints are set on the clean judgements and
    before thresholding, so the categories stay those of the noise-free teacher while labels cross them at random.
    It is drawn last, so with the same generator the segments, clean judgements and cutpoints equal those of the
    noise-free teacher; the data set then records ``noise_sd`` (absent when 0).
    """
    if num_categories < 2:
        raise ValueError(f"num_categories must be at least 2, got {num_categories}")
    if not noise_sd >= 0:
        raise ValueError(f"noise_sd must be >= 0, got {noise_sd}")
    if cutpoints is not None:
        cutpoints = np.asarray(cutpoints, dtype=np.float64)
        if cutpoints.shape != (num_categories - 1,) or not np.all(np.diff(cutpoints) > 0):
            raise ValueError(f"cutpoints must be {num_categories - 1} increasing values, got {cutpoints.tolist()}")
    segments = teacher.segments((count,), segment_length, rng)
    u = segment_means(teacher.reward(segments), segments["valid"])
    judged = u + rng.logistic(size=count) / scale
    if cutpoints is None:
        cutpoints = np.quantile(judged, np.arange(1, num_categories) / num_categories)
    attrs = {**teacher.attrs, "num_categories": num_categories, "scale": scale, "true_cutpoints": cutpoints}
    if noise_sd > 0:  # no draw at 0: the noise-free teacher's stream (and data) stay as they always were
        judged = judged + noise_sd * rng.standard_normal(count)
        attrs["noise_sd"] = float(noise_sd)
    ratings = (judged[:, None] > cutpoints[None, :]).sum(-1)
    return segment_dataset(segments, ("item", "step"), {"rating": (("item",), ratings)}, attrs)


def _cutpoint_prior_loc(attrs) -> np.ndarray:
    k = int(attrs["num_categories"])
    loc = np.zeros(k - 1)
    loc[0] = -(k - 2) / 2.0  # centres the prior cutpoints on 0 with unit spacing
    return loc


def _check(dataset):
    k = dataset.attrs.get("num_categories")
    if k is None:
        return [("num_categories", -1, "attribute 'num_categories' is missing")]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        return [("num_categories", -1, f"attribute num_categories must be an integer >= 2, got {k!r}")]
    r = dataset["rating"].values
    bad = np.flatnonzero((r < 0) | (r > k - 1))
    return [("rating", int(i), f"rating {r[i]} is outside 0..{k - 1}") for i in bad]


RATING = register(
    FeedbackType(
        name="rating",
        label="rating",
        segment_dims=("item", "step"),
        variables={"rating": VariableSpec(("item",), "int")},
        needs=frozenset({"reward"}),
        nuisance=(Nuisance("cutpoints", loc=_cutpoint_prior_loc, scale=2.0, transform=ordered_cutpoints,
                           dims=("cutpoint",)),),
        log_likelihood=log_likelihood,
        simulate=simulate,
        check=_check,
        defaults={"num_categories": 5, "segment_length": 10, "scale": 1.0},
        attrs=("scale",),
    )
)
