"""Which queries to ask next: the expected information gain (BALD) about the reward of candidate queries of every
feedback type with discrete labels, from the current posterior draws, and a greedy batch by gain per unit cost.

Generic over feedback types: a query's label distribution at each posterior draw is the type's own log-likelihood
evaluated at every possible label (:func:`mavrl_ppl.analysis.predictive.evaluate_feedback` with
``label_log_probs=True``; the label space is read off the type's schema and ``check``), so a user's registered type
(e.g. the Plackett-Luce rankings of ``examples/plackett_luce.py``) gets its gain with no extra code.

BALD (Houlsby et al. 2011). With posterior draws ``theta_1..theta_D`` (the posterior taken as their empirical measure)
and ``p_d(y)`` the label distribution of a query at draw ``d``, the information a label ``y`` brings about the reward is

    I(theta; y) = H[mean_d p_d] - mean_d H[p_d] = mean_d KL(p_d || mean_d' p_d'),

in nats. It is computed in the second form (a mean of non-negative divergences, each from log-probabilities: no
difference of two nearly equal entropies), which is exactly 0 when every draw gives the same distribution (the
divergences are then 0 term by term) and when the label is certain.

About what. The draws are joint draws of the reward and the nuisance parameters the posterior carries (an inferred
preference rationality, rating cutpoints): the gain is the information about all of them together, not the reward
alone. A query that would only pin down the rating cutpoints scores too (measured: reward draws spread by 1e-3 and
cutpoints spread by 2 gave rating gains up to 0.39 nats; the same with equal cutpoints, 1e-7). The gain about the
reward alone needs each reward draw's label distribution averaged over the nuisance given that reward, which the
draws do not give; passing nuisance draws that are all equal (e.g. the posterior mean) gives the plug-in gain about
the reward at those values.

Units and items. Types with one label per item (preferences, ratings, stop times, rankings) have one unit per item.
A label per step (demonstrations' actions) is scored one valid step at a time; the EIG of the whole item (an
episode's states, whose actions the person would give) is NOT the sum of its steps' EIGs in general. Under the
models here the steps' labels are conditionally independent given the reward (and the nuisance draws), so
``I(theta; y_1..y_T) = H[y_1..y_T] - sum_t E H[y_t | theta] <= sum_t I(theta; y_t)``: the sum is an upper bound,
reached only when the labels are also independent under the posterior predictive (they are not: they share
``theta``; with 80 draws on the 4x4 grid the sum over an episode's steps came to 5.5-8.3 nats, beyond the
``log 80 = 4.4`` nats that any query can tell about 80 draws, while the joint gain was 3.1-3.3).
:func:`joint_information_gain` estimates the joint gain (exact over the draws, Monte Carlo over the label sequences)
and is what :func:`query_information_gain` uses; :func:`item_information_gain` sums, and says so: the sum over-rates
long episodes against one-label queries.

What a demonstration query is. A pool episode's states were visited by the simulated expert (acting on the true
``Q*``); its gain is that of the actions at those states. A person asked for a new demonstration chooses the states
too, so the gain of "ask for a demonstration" would average over the episodes they might give; that is not computed.

Batches. :func:`select_queries` takes the ``k`` best gains per unit cost, each query once (the pool holds no two
identical queries): it ignores what different queries share. :func:`select_batch` scores each pick given the ones
already in the batch (BatchBALD), so a second query about the same states scores only what it adds.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from mavrl_ppl.analysis.predictive import evaluate_feedback, label_space
from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.feedback import get_feedback_type, simulate_feedback
from mavrl_ppl.feedback.ops import logsumexp

__all__ = [
    "JOINT_ELEMENTS",
    "ROUND_OFF",
    "TARGETS",
    "BatchChoice",
    "CandidatePool",
    "DecisionTargets",
    "InformationGain",
    "JointInformationGain",
    "QueryGain",
    "Selection",
    "candidate_queries",
    "choose_queries",
    "greedy_action_targets",
    "information_gain",
    "item_information_gain",
    "joint_information_gain",
    "parse_costs",
    "query_information_gain",
    "select_batch",
    "select_queries",
    "thinned_draws",
    "unit_items",
]

#: A gain below zero by at most this much is round-off and is set to 0; lower raises. Measured (300 random inputs of
#: 1-64 draws x 1-39 units x 2-32 labels, logits of scale 0.01-100, a third with draws equal to 1e-9; the 4x4
#: grid_trap pool of 166 queries of the four types at posterior spreads 0.7, 1e-3, 1e-8): the unclipped gain was
#: never below -1.2e-15 (random, near-equal draws) and -1.9e-16 (grid, spread 1e-8); equal draws give exactly 0.
ROUND_OFF = 1e-12

#: What :func:`choose_queries`' gain can be about.
TARGETS = ("reward", "policy")


class InformationGain(NamedTuple):
    """What :func:`information_gain` returns, per unit, in nats.

    Attributes:
        eig: ``(unit,)`` the expected information gain ``H[mean p] - mean H[p]`` (>= 0).
        predictive_entropy: ``(unit,)`` ``H[mean_d p_d]``, the entropy of the posterior predictive label.
        expected_entropy: ``(unit,)`` ``mean_d H[p_d]``, the label's noise that no reward would remove.
    """

    eig: np.ndarray
    predictive_entropy: np.ndarray
    expected_entropy: np.ndarray


def _normalised(label_log_probs: np.ndarray) -> np.ndarray:
    """``(draw, unit, K)`` log-probabilities, each draw's normalised over the candidates (inputs checked)."""
    logp = np.asarray(label_log_probs, dtype=np.float64)
    if logp.ndim == 4:
        logp = logp.reshape(-1, *logp.shape[2:])
    if logp.ndim != 3:
        raise ValueError(f"label_log_probs must be (chain, draw, unit, K) or (draw, unit, K), not {logp.shape}")
    if np.isnan(logp).any() or np.isposinf(logp).any():
        raise ValueError("label_log_probs holds NaN or +inf")
    if not np.isfinite(logp.max(axis=-1)).all():
        raise ValueError("some unit has no possible label at some draw (every candidate at -inf)")
    return logp - logsumexp(logp, axis=-1)[..., None]


def information_gain(label_log_probs: np.ndarray) -> InformationGain:
    """The BALD expected information gain of each unit's label about the reward, from its candidate labels'
    log-probabilities at every posterior draw.

    Each draw's probabilities are renormalised over the candidates first (the enumerated labels' probabilities sum to
    one within :data:`~mavrl_ppl.analysis.predictive.SUM_TOLERANCE`, the stop hazard's floor moving them by ~1e-7);
    ``-inf`` is probability 0 and contributes ``0 log 0 = 0``.

    Args:
        label_log_probs: ``(chain, draw, unit, K)`` or ``(draw, unit, K)`` log-probability of candidate label ``k``
            of unit ``u`` at each posterior draw (as :func:`~mavrl_ppl.analysis.predictive.evaluate_feedback`
            returns with ``label_log_probs=True``); ``-inf`` where impossible. Every (draw, unit) needs a possible
            label; NaN and ``+inf`` are refused.

    Returns:
        :class:`InformationGain`, each field ``(unit,)``.

    Raises:
        ValueError: a wrong number of dims, NaN or ``+inf``, a (draw, unit) with no possible label, or a gain below
            ``-ROUND_OFF`` (a bug, not round-off).
    """
    logp = _normalised(label_log_probs)
    possible = np.isfinite(logp)
    p = np.exp(logp)
    # log of the posterior predictive mean_d p_d, shifted by the largest draw: D equal draws give it exactly
    peak = logp.max(axis=0)
    finite_peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        log_mean = finite_peak + np.log(np.exp(logp - finite_peak).mean(axis=0))  # (unit, K)
    # 0 log 0 = 0: terms where the probability is 0 are left out, never computed as 0 * -inf (a label possible at
    # some draw has a finite log_mean)
    logp = np.where(possible, logp, 0.0)
    finite_mean = np.isfinite(log_mean)
    log_mean_safe = np.where(finite_mean, log_mean, 0.0)
    kl = np.where(possible, p * (logp - log_mean_safe), 0.0).sum(axis=-1)  # (draw, unit)
    eig = kl.mean(axis=0)
    if eig.size and eig.min() < -ROUND_OFF:
        raise ValueError(f"negative information gain {eig.min():.3g} beyond round-off")
    eig = np.maximum(eig, 0.0)
    predictive = -np.where(finite_mean, np.exp(log_mean_safe) * log_mean_safe, 0.0).sum(axis=-1)
    expected = -np.where(possible, p * logp, 0.0).sum(axis=-1).mean(axis=0)
    return InformationGain(eig, predictive, expected)


def unit_items(feedback_type: str, dataset: xr.Dataset) -> np.ndarray | str:
    """The item of each unit of a data set's ``label_log_probs`` (the units :func:`evaluate_feedback` scores), or why
    the type's labels cannot be enumerated.

    Args:
        feedback_type: the registered type's name.
        dataset: its data set (candidate queries or observed feedback).

    Returns:
        ``(unit,)`` item index of each unit: the items with some possible label, or (a label per step) the valid
        steps of each item in ``item * num_steps + step`` order.
    """
    space = label_space(get_feedback_type(feedback_type), dataset)
    if isinstance(space, str):
        return space
    active = np.flatnonzero(space.allowed.any(axis=0))
    return active // dataset.sizes["step"] if space.per_step else active


def item_information_gain(unit_gain: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Unit gains summed back to items (a one-label type's units are its items: unchanged).

    For a label per step this sum is an UPPER bound of the item's joint gain (module docstring): the steps' labels
    are conditionally independent given the reward, not independent.

    Args:
        unit_gain: ``(unit,)`` gains (e.g. :attr:`InformationGain.eig`).
        items: ``(unit,)`` item of each unit (:func:`unit_items`).
        num_items: number of items of the data set (items without a unit get 0).

    Returns:
        ``(num_items,)`` summed gains.
    """
    return np.bincount(np.asarray(items), weights=np.asarray(unit_gain, dtype=np.float64), minlength=num_items)


class JointInformationGain(NamedTuple):
    """What :func:`joint_information_gain` returns, per item, in nats.

    Attributes:
        eig: ``(item,)`` the Monte Carlo estimate of ``I(theta; y_1..y_T)``, clipped to its known range
            ``[0, min(sum_t I(theta; y_t), log D)]``.
        standard_error: ``(item,)`` the estimate's Monte Carlo standard error (before clipping).
        unit_sum: ``(item,)`` the sum of the units' gains (the upper bound).
    """

    eig: np.ndarray
    standard_error: np.ndarray
    unit_sum: np.ndarray


#: Largest ``(draw, sample, unit)`` array :func:`joint_information_gain` builds at once (float64 numbers: 32 MB).
JOINT_ELEMENTS = 1 << 22


def _sequence_log_probs(logp: np.ndarray, draw: np.ndarray, starts: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """``(D, n, item)``: for each ``draw[j]``, labels of every unit drawn from that draw's distributions, and the
    log-probability of each item's labels (its units' from ``starts`` on, summed) under every draw."""
    num_units = logp.shape[1]
    cdf = np.cumsum(np.exp(logp[draw]), axis=-1)  # (n, unit, K)
    u = (1.0 - rng.random((len(draw), num_units, 1))) * cdf[..., -1:]  # in (0, total]: never a label of probability 0
    label = np.minimum((cdf < u).sum(axis=-1), logp.shape[-1] - 1)  # (n, unit)
    per_unit = logp[:, np.arange(num_units)[None, :], label]  # (draw, n, unit)
    return np.add.reduceat(per_unit, starts, axis=2) if num_units else per_unit


def joint_information_gain(
    label_log_probs: np.ndarray,
    items: np.ndarray,
    num_items: int,
    rng: np.random.Generator,
    samples: int = 1024,
) -> JointInformationGain:
    """The information gain of all of an item's units' labels together (a demonstration's actions at its states),
    by Monte Carlo, for labels conditionally independent given the draw (as the models here make them).

    With the posterior the empirical measure of the ``D`` draws, ``I(theta; Y) = E_d E_{Y ~ p_d} [log p_d(Y) - log
    mean_d' p_d'(Y)]`` with ``p_d(Y) = prod_t p_d(y_t)``: exact in the inner mean (all draws), Monte Carlo in the
    outer one (``samples`` label sequences, each from a uniformly drawn draw). Equal draws give exactly 0.

    Args:
        label_log_probs: ``(chain, draw, unit, K)`` or ``(draw, unit, K)`` candidate log-probabilities.
        items: ``(unit,)`` item of each unit, non-decreasing (:func:`unit_items`).
        num_items: number of items (items without a unit get 0).
        rng: the Monte Carlo's randomness.
        samples: label sequences drawn per item.

    Returns:
        :class:`JointInformationGain`.
    """
    logp = _normalised(label_log_probs)
    items = np.asarray(items)
    if items.shape != logp.shape[1:2] or np.any(np.diff(items) < 0):
        raise ValueError("items must give the item of every unit, in non-decreasing order")
    num_draws, num_units, _ = logp.shape
    present, starts = np.unique(items, return_index=True)
    unit_sum = item_information_gain(information_gain(logp).eig, items, num_items)
    terms = np.empty((samples, len(present)))
    chunk = max(1, JOINT_ELEMENTS // max(1, num_draws * num_units))
    for first in range(0, samples, chunk):  # chunks of samples (memory), not a loop over draws or items
        n = min(chunk, samples - first)
        draw = rng.integers(num_draws, size=n)
        sequence = _sequence_log_probs(logp, draw, starts, rng)  # (draw, n, item)
        own = sequence[draw, np.arange(n)]  # (n, item): the log-probability under the draw that made it
        top = sequence.max(axis=0)
        log_mix = top + np.log(np.exp(sequence - top).mean(axis=0))
        terms[first:first + n] = own - log_mix
    estimate = terms.mean(axis=0) if samples else np.zeros(len(present))
    error = terms.std(axis=0, ddof=1) / np.sqrt(samples) if samples > 1 else np.full(len(present), np.inf)
    eig = np.zeros(num_items)
    eig[present] = np.clip(estimate, 0.0, np.minimum(unit_sum[present], np.log(num_draws)))
    standard_error = np.zeros(num_items)
    standard_error[present] = error
    return JointInformationGain(eig, standard_error, unit_sum)


class CandidatePool(NamedTuple):
    """What :func:`candidate_queries` returns.

    Attributes:
        queries: type name -> data set of unlabelled-in-spirit queries (the simulated labels are placeholders that the
            gain never reads, except as a start for the label range of an ``int`` label), identical queries removed.
        duplicates: type name -> how many identical queries were removed.
    """

    queries: dict[str, xr.Dataset]
    duplicates: dict[str, int]


def _query_keys(dataset: xr.Dataset, label: str) -> np.ndarray:
    """``(item,)`` one bytes key per item: every per-item variable but the label, padded steps zeroed. A label of
    actions (demonstrations) also leaves out ``next_action``, the same actions one step on."""
    ignored = {label, "next_action"} if label == "action" else {label}
    valid = dataset["valid"] if "valid" in dataset else None
    rows = []
    for name in sorted(dataset.data_vars):
        var = dataset[name]
        if name in ignored or var.dims[:1] != ("item",) or var.ndim < 2:
            continue
        if valid is not None and set(valid.dims) <= set(var.dims):
            var = var.where(valid, 0).astype(var.dtype)
        values = np.ascontiguousarray(var.transpose("item", ...).values.reshape(var.shape[0], -1))
        rows.append(values.view(np.uint8).reshape(var.shape[0], -1))
    if not rows:
        return np.arange(dataset.sizes["item"]).astype(bytes)
    joined = np.ascontiguousarray(np.concatenate(rows, axis=1))
    return joined.view(np.dtype((np.void, joined.shape[1]))).ravel()


def candidate_queries(
    teacher: Any,
    counts: Mapping[str, int],
    rng: np.random.Generator,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    like: Mapping[str, xr.Dataset] | None = None,
) -> CandidatePool:
    """A pool of candidate queries per type, each built by the type's own simulator (:func:`simulate_feedback`):
    preference pairs, rating and stop segments from the behaviour policy, demonstration episodes (their states), a
    user type's items. Any registered type with a simulator works.

    Identical queries (every segment variable equal on the valid steps; the label ignored, and for a label of actions
    ``next_action`` too) are kept once. A demonstration pool at a high
    ``beta`` repeats the same episode often; distinct sides in another order (``(A, B)`` and ``(B, A)``) are kept,
    as the generic code does not know a type's symmetries.

    Args:
        teacher: what the simulators query (e.g. :class:`~mavrl_ppl.feedback.TabularTeacher`): its behaviour policy
            makes the segments; its labels are not used by the gain.
        counts: type name -> number of candidates to simulate (before duplicates are removed).
        rng: the only source of randomness.
        settings: type name -> simulator settings (as :func:`simulate_feedback`).
        like: type name -> the observed feedback's data set: the candidates of that type take its attributes (the
            fixed ``beta``, the stop ``lambda``, ...), so that a query is scored under the model the posterior was
            fitted with, not the simulator's (which may calibrate on the true reward, as the stop ``lambda`` does).

    Returns:
        :class:`CandidatePool`.
    """
    simulated = simulate_feedback(teacher, counts, rng, settings)
    queries, duplicates = {}, {}
    for name, dataset in simulated.items():
        _, first = np.unique(_query_keys(dataset, get_feedback_type(name).label), return_index=True)
        kept = dataset.isel(item=np.sort(first))
        if like is not None and name in like:
            kept.attrs = dict(like[name].attrs)
        queries[name] = kept
        duplicates[name] = dataset.sizes["item"] - kept.sizes["item"]
    return CandidatePool(queries, duplicates)


class QueryGain(NamedTuple):
    """What :func:`query_information_gain` returns.

    Attributes:
        eig: type name -> ``(item,)`` expected information gain of each candidate query in nats: exact for one label
            per item; for a label per step the joint gain of the item's steps (:func:`joint_information_gain`, Monte
            Carlo) or, with ``per_step="sum"``, the sum over its steps (an upper bound).
        standard_error: type name -> ``(item,)`` Monte Carlo standard error of ``eig`` (0 where exact).
        units: type name -> the per-unit :class:`InformationGain`.
        skipped: type name -> why it has no gain (labels that cannot be enumerated, a likelihood that does not
            normalise over them).
    """

    eig: dict[str, np.ndarray]
    standard_error: dict[str, np.ndarray]
    units: dict[str, InformationGain]
    skipped: dict[str, str]


def query_information_gain(
    mdp: TabularMDP,
    reward: np.ndarray,
    reward_dims: Sequence[str],
    nuisance: Mapping[str, np.ndarray],
    queries: Mapping[str, xr.Dataset],
    *,
    seed: int = 0,
    per_step: str = "joint",
    samples: int = 1024,
) -> QueryGain:
    """The expected information gain of every candidate query at the current posterior draws.

    Args:
        mdp: the tabular env.
        reward: posterior reward draws ``(chain, draw, *reward_dims)``.
        reward_dims: ``("state",)``, ``("state", "action")`` or ``("group",)``.
        nuisance: nuisance draws by site (``<type>_<param>``), ``(chain, draw, ...)``, as in the posterior.
        queries: type name -> candidate queries (:attr:`CandidatePool.queries`).
        seed: seeds :func:`evaluate_feedback`'s predictive draws and the joint gain's Monte Carlo.
        per_step: an item of a label per step: ``"joint"`` (its steps' labels together, Monte Carlo) or ``"sum"``
            (the sum of its steps' gains: an upper bound, which over-rates long episodes).
        samples: Monte Carlo label sequences per item for ``"joint"``.

    Returns:
        :class:`QueryGain`.
    """
    if per_step not in ("joint", "sum"):
        raise ValueError(f"per_step must be 'joint' or 'sum', not {per_step!r}")
    evaluation = evaluate_feedback(mdp, reward, reward_dims, nuisance, queries, seed=seed, log_likelihood=False,
                                   label_log_probs=True)
    eig, error, units, skipped = {}, {}, {}, dict(evaluation.skipped)
    for name, logp in evaluation.label_log_probs.items():
        items = unit_items(name, queries[name])
        if isinstance(items, str):  # cannot happen: evaluate_feedback enumerated them
            skipped[name] = items
            continue
        num_items = queries[name].sizes["item"]
        units[name] = information_gain(logp)
        if per_step == "joint" and "step" in queries[name][get_feedback_type(name).label].dims:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()), 1)))
            joint = joint_information_gain(logp, items, num_items, rng, samples)
            eig[name], error[name] = joint.eig, joint.standard_error
        else:
            eig[name] = item_information_gain(units[name].eig, items, num_items)
            error[name] = np.zeros(num_items)
    return QueryGain(eig, error, units, skipped)


class Selection(NamedTuple):
    """What :func:`select_queries` returns: the batch, best first.

    Attributes:
        type: ``(k,)`` type name of each query.
        item: ``(k,)`` its item index in that type's pool.
        eig: ``(k,)`` its expected information gain (nats).
        cost: ``(k,)`` its cost.
        score: ``(k,)`` gain per unit cost.
    """

    type: np.ndarray
    item: np.ndarray
    eig: np.ndarray
    cost: np.ndarray
    score: np.ndarray


def parse_costs(text: str) -> dict[str, float]:
    """``"pref=1,demo=10"`` -> ``{"pref": 1.0, "demo": 10.0}`` (the ``--costs`` syntax).

    Args:
        text: comma-separated ``type=cost`` pairs, costs positive and finite.

    Raises:
        ValueError: a malformed pair, a repeated type, or a cost that is not positive and finite.
    """
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"costs: expected TYPE=COST, got {part!r}")
        if name in out:
            raise ValueError(f"costs: {name!r} given twice")
        try:
            cost = float(value)
        except ValueError:
            raise ValueError(f"costs: {name}={value!r} is not a number") from None
        if not (np.isfinite(cost) and cost > 0):
            raise ValueError(f"costs: {name}={value} must be positive and finite")
        out[name] = cost
    return out


def _check_costs(names: Sequence[str], costs: Mapping[str, float]) -> None:
    missing = [name for name in names if name not in costs]
    if missing:
        raise ValueError(f"no cost for feedback type(s) {missing}")
    for name in names:
        if not (np.isfinite(costs[name]) and costs[name] > 0):
            raise ValueError(f"cost of {name!r} must be positive and finite, got {costs[name]}")


def select_queries(eig_by_type: Mapping[str, np.ndarray], costs: Mapping[str, float], k: int) -> Selection:
    """A batch of ``k`` queries, greedily by expected information gain per unit cost across types.

    What the batch accounts for: each pool query at most once (and :func:`candidate_queries` has removed identical
    queries, so no two picks ask the same thing); costs per type. What it does NOT account for: the information two
    different queries share about the reward. The gains are each query's alone at the current posterior, so the
    batch's joint gain is at most (not equal to) the sum of its queries' gains; two near-identical segments that
    probe the same states are both picked if both score high. :func:`select_batch` scores each pick given the ones
    before it instead; between rounds the posterior is refitted and the gains recomputed.

    Ties (equal gain per cost) go to the type listed first in ``eig_by_type``, then to the lower item index.

    Args:
        eig_by_type: type name -> ``(item,)`` expected information gain of each candidate (NaN: not selectable).
        costs: type name -> cost of one query of that type (positive, finite); every type in ``eig_by_type``.
        k: batch size (>= 0); fewer when the pools hold fewer selectable queries.

    Returns:
        :class:`Selection`, best first.

    Raises:
        ValueError: a type without a cost, a cost that is not positive and finite, a negative ``k``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    names = list(eig_by_type)
    _check_costs(names, costs)
    gains = [np.asarray(eig_by_type[n], dtype=np.float64).reshape(-1) for n in names]
    type_index = np.concatenate([np.full(len(g), i) for i, g in enumerate(gains)]).astype(int) if gains else \
        np.zeros(0, int)
    item = np.concatenate([np.arange(len(g)) for g in gains]).astype(int) if gains else np.zeros(0, int)
    eig = np.concatenate(gains) if gains else np.zeros(0)
    cost = np.asarray([float(costs[n]) for n in names])[type_index] if gains else np.zeros(0)
    score = eig / cost
    keep = ~np.isnan(score)
    order = np.flatnonzero(keep)[np.lexsort((item[keep], type_index[keep], -score[keep]))][:k]
    return Selection(np.asarray(names, dtype=object)[type_index[order]] if names else np.zeros(0, object),
                     item[order], eig[order], cost[order], score[order])


def select_batch(
    label_log_probs: Mapping[str, np.ndarray],
    items: Mapping[str, np.ndarray],
    costs: Mapping[str, float],
    k: int,
    rng: np.random.Generator,
    samples: int = 1024,
    budget: float | None = None,
    targets: DecisionTargets | None = None,
) -> Selection:
    """A batch of ``k`` queries chosen greedily by the gain of each query GIVEN the queries already in the batch, per
    unit cost (BatchBALD, Kirsch et al. 2019): redundancy between different queries is accounted for.

    Step ``j`` adds the query ``c`` maximising ``[I(theta; Y_batch, y_c) - I(theta; Y_batch)] / cost_c``. The joint
    gains are estimated as in :func:`joint_information_gain` (labels conditionally independent given the draw; exact
    over the draws, Monte Carlo over ``samples`` label sequences drawn once, common to every step and candidate, so
    the comparisons between candidates share their noise). Two queries about the same states then share their gain:
    the second one scores only what it adds. Greedy is within ``1 - 1/e`` of the best batch of its size for equal
    costs (the joint gain is submodular for conditionally independent labels); with unequal costs it is a heuristic.
    What it does not account for: gains are about the reward and nuisance draws together (module docstring), and
    the Monte Carlo noise (see :attr:`JointInformationGain.standard_error`): conditional gains below it are noise.

    Memory and time: ``draws x samples x candidate items`` float64 numbers (40 draws x 1024 x 200 items: 66 MB),
    ``k`` passes over them. With ``targets``, also ``columns x samples x candidate items`` for the pooled
    sums (one column per target value present: at most targets x actions; measured on the 10x10 grids
    with 100 draws and 128 candidates: 8-16 s a round of 8 picks).

    Args:
        label_log_probs: type name -> ``(chain, draw, unit, K)`` or ``(draw, unit, K)`` candidate log-probabilities
            (:attr:`~mavrl_ppl.analysis.predictive.FeedbackEvaluation.label_log_probs`), the same draws for every
            type.
        items: type name -> ``(unit,)`` item of each unit, non-decreasing (:func:`unit_items`).
        costs: type name -> cost of one query of that type (positive, finite).
        k: batch size (>= 0); fewer when there are fewer candidate items.
        rng: the Monte Carlo's randomness.
        samples: label sequences drawn per draw-sample.
        budget: the batch's total cost at most this (``None``: no limit): a step picks only among the candidates
            whose cost fits in what is left, and the batch ends early when none does.
        targets: what the gain is about (``None``: the draws themselves, i.e. the reward and nuisance parameters;
            :func:`greedy_action_targets`: the best action in the states good policies visit). With targets the
            gain is ``sum_v weight_v I(target_v; labels)``, each term estimated like the draws' gain with the
            draws pooled by their value of ``target_v``.

    Returns:
        :class:`Selection` in the order picked; ``eig`` is each query's gain given the ones before it (Monte Carlo,
        clipped at 0), ``score`` that per unit cost.

    Raises:
        ValueError: a negative ``k``, missing or invalid costs, types with different numbers of draws.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    names = list(label_log_probs)
    _check_costs(names, costs)
    normalised = {name: _normalised(label_log_probs[name]) for name in names}
    if len({v.shape[0] for v in normalised.values()}) > 1:
        raise ValueError("every type's label log-probabilities must come from the same draws")
    if not names:
        return Selection(np.zeros(0, object), np.zeros(0, int), np.zeros(0), np.zeros(0), np.zeros(0))
    num_draws = next(iter(normalised.values())).shape[0]
    draw = rng.integers(num_draws, size=samples)
    blocks, kinds, item_ids = [], [], []
    for index, name in enumerate(names):
        unit_item = np.asarray(items[name])
        if unit_item.shape != normalised[name].shape[1:2] or np.any(np.diff(unit_item) < 0):
            raise ValueError(f"{name}: items must give the item of every unit, in non-decreasing order")
        present, starts = np.unique(unit_item, return_index=True)
        blocks.append(_sequence_log_probs(normalised[name], draw, starts, rng))  # (draw, samples, item)
        kinds.append(np.full(len(present), index))
        item_ids.append(present)
    candidates = np.concatenate(blocks, axis=2)  # (draw, samples, candidate)
    kind, item = np.concatenate(kinds), np.concatenate(item_ids)
    cost = np.asarray([float(costs[n]) for n in names])[kind]
    batch = np.zeros((num_draws, samples))  # log p_d(labels of the batch so far), each sample's
    current = 0.0
    taken = np.zeros(len(item), dtype=bool)
    picked, gains = [], []
    left = np.inf if budget is None else float(budget)
    pooled = None if targets is None else _pooling(targets, num_draws, draw)
    for _ in range(min(k, len(item))):  # the greedy steps; each is vectorised over draws, samples and candidates
        open_ = ~taken & (cost <= left + 1e-9)
        if not open_.any():
            break
        total = batch[:, :, None] + candidates
        joint = _joint_gain(total, draw, pooled)  # (candidate,)
        gain = np.where(open_, joint - current, -np.inf)
        score = gain / cost
        best = int(np.flatnonzero(score == score.max())[0])  # ties: the type listed first, then the lower item
        picked.append(best)
        gains.append(max(float(gain[best]), 0.0))
        taken[best] = True
        left -= cost[best]
        batch = batch + candidates[:, :, best]
        current = float(joint[best])
    order = np.asarray(picked, dtype=int)
    eig = np.asarray(gains)
    return Selection(np.asarray(names, dtype=object)[kind[order]], item[order], eig, cost[order], eig / cost[order])


class DecisionTargets(NamedTuple):
    """Discrete quantities of each posterior draw that a gain can be about instead of the draw itself.

    Attributes:
        values: ``(V, D)`` integer value of target ``v`` at draw ``d`` (e.g. the best action in a state).
        weights: ``(V,)`` non-negative weight of each target in the gain.
        states: ``(V,)`` the state each target is about, where there is one (:func:`greedy_action_targets`).
    """

    values: np.ndarray
    weights: np.ndarray
    states: np.ndarray | None = None


def greedy_action_targets(mdp: TabularMDP, reward: np.ndarray, reward_dims: Sequence[str],
                          min_weight: float = 1e-3) -> DecisionTargets:
    """The best action of each state under each reward draw, weighted by how much good policies visit the state.

    Target ``s`` is ``argmax_a Q*_d(s, a)`` (exact ``Q*`` of draw ``d``); its weight is the mean over draws of the
    normalised discounted occupancy of state ``s`` under draw ``d``'s greedy policy from the env's start
    distribution. The score of a fitted reward is the return of its greedy policy from that start, so this is the
    information about the decisions that make the score, where they are made (an information-directed choice in the
    spirit of IDRL, Lindner et al. 2021, with the plausible optimal policies' states in place of its policy pairs).
    States every draw agrees on carry no information and are dropped, as are states of weight below ``min_weight``.

    Args:
        mdp: the tabular env.
        reward: reward draws ``(..., *reward_dims)`` (leading dims flattened into draws).
        reward_dims: as :func:`mavrl_ppl.analysis.predictive.reward_groups` takes them.
        min_weight: the smallest weight kept.
    """
    from mavrl_ppl.analysis.predictive import reward_groups
    from mavrl_ppl.planning import q_star

    groups = reward_groups(mdp, reward_dims)
    theta = np.asarray(reward, dtype=np.float64).reshape(-1, int(groups.max()) + 1)
    q = q_star(mdp.transitions, groups, mdp.gamma, theta)  # (D, S, A)
    best = q.argmax(axis=-1)  # (D, S)
    num_draws, num_states = best.shape
    p_pi = np.take_along_axis(mdp.transitions[None], best[:, :, None, None], axis=2)[:, :, 0]  # (D, S, S')
    # occupancy^T = (1 - gamma) mu^T (I - gamma P_pi)^-1: solve (I - gamma P_pi)^T x = (1 - gamma) mu
    system = np.eye(num_states)[None] - mdp.gamma * p_pi
    occupancy = np.linalg.solve(np.swapaxes(system, 1, 2), np.broadcast_to((1 - mdp.gamma) * mdp.initial,
                                                                             (num_draws, num_states))[..., None])
    weight = occupancy[..., 0].mean(axis=0)
    keep = (weight >= min_weight) & (best != best[:1]).any(axis=0)
    return DecisionTargets(best[:, keep].T.copy(), weight[keep], np.flatnonzero(keep))


class _Pooling(NamedTuple):
    membership: np.ndarray  # (D, columns): draw d counts in column (target v, value a), divided by its count
    column: np.ndarray  # (V, samples): each sample's column for each target (its draw's value)
    weights: np.ndarray  # (V,)


def _pooling(targets: DecisionTargets, num_draws: int, draw: np.ndarray) -> _Pooling:
    values = np.asarray(targets.values)
    if values.ndim != 2 or values.shape[1] != num_draws:
        raise ValueError(f"targets must give a value per draw: shape (V, {num_draws}), got {values.shape}")
    # one column per (target, value) present: renumber the values per target
    offsets, columns = 0, np.empty_like(values)
    for v in range(len(values)):  # targets, not draws or items: a few dozen states
        _, columns[v] = np.unique(values[v], return_inverse=True)
        columns[v] += offsets
        offsets = int(columns[v].max()) + 1
    membership = np.zeros((num_draws, offsets))
    np.add.at(membership, (np.tile(np.arange(num_draws), len(values)), columns.reshape(-1)), 1.0)
    membership /= membership.sum(axis=0, keepdims=True)
    return _Pooling(membership, columns[:, draw], np.asarray(targets.weights, dtype=np.float64))


def _joint_gain(total: np.ndarray, draw: np.ndarray, pooled: _Pooling | None) -> np.ndarray:
    """``(candidate,)`` Monte Carlo joint gain of labels whose log-probabilities under every draw are ``total``
    ``(D, samples, candidate)`` (sample ``j`` drawn from draw ``draw[j]``): about the draws themselves, or the
    weighted sum over targets of the gain about each (the draws pooled by their value of it)."""
    samples = total.shape[1]
    top = total.max(axis=0)
    scaled = np.exp(total - top)  # (D, samples, candidate)
    marginal = np.log(scaled.mean(axis=0))  # log p(Y_j) - top
    if pooled is None:
        own = total[draw, np.arange(samples)] - top  # log p_{d_j}(Y_j) - top
        return (own - marginal).mean(axis=0)
    by_column = np.tensordot(pooled.membership, scaled, axes=([0], [0]))  # (columns, samples, candidate)
    conditional = np.log(by_column[pooled.column, np.arange(samples)])  # (V, samples, candidate)
    return np.tensordot(pooled.weights, (conditional - marginal).mean(axis=1), axes=1)


def thinned_draws(posterior: xr.Dataset, draws: int) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray]]:
    """``draws`` evenly spaced draws over all chains of a posterior group (``reward`` plus nuisance sites).

    Returns:
        reward ``(1, n, *reward_dims)``, its ``reward_dims``, nuisance site -> ``(1, n, ...)``.
    """
    reward = posterior["reward"]
    total = reward.sizes["chain"] * reward.sizes["draw"]
    pick = np.unique(np.linspace(0, total - 1, min(draws, total)).round().astype(int))

    def thinned(values: np.ndarray) -> np.ndarray:
        return values.reshape(total, *values.shape[2:])[pick][None]

    nuisance = {name: thinned(posterior[name].values) for name in posterior.data_vars if name != "reward"}
    return thinned(reward.values), tuple(reward.dims[2:]), nuisance


class BatchChoice(NamedTuple):
    """What :func:`choose_queries` returns.

    Attributes:
        selection: the batch in the order picked (:func:`select_batch`).
        skipped: type name -> why its candidates were not scored (labels that cannot be enumerated).
        draws: posterior draws the gains were computed at.
    """

    selection: Selection
    skipped: dict[str, str]
    draws: int


def choose_queries(
    mdp: TabularMDP,
    posterior: xr.Dataset,
    queries: Mapping[str, xr.Dataset],
    costs: Mapping[str, float],
    k: int,
    *,
    draws: int = 100,
    seed: int = 0,
    budget: float | None = None,
    target: str = "reward",
) -> BatchChoice:
    """The next ``k`` queries from candidate pools at a fitted posterior: label probabilities at ``draws`` evenly
    spaced draws (:func:`thinned_draws`, :func:`~mavrl_ppl.analysis.predictive.evaluate_feedback`), then BatchBALD
    per unit cost (:func:`select_batch`). The one rule of both the simulated loop and ``active suggest``.

    Args:
        mdp: the tabular env.
        posterior: a posterior group (``reward`` and nuisance sites, ``(chain, draw, ...)``).
        queries: type name -> candidate queries (:attr:`CandidatePool.queries`); every type needs a cost.
        costs: type name -> cost of one query (positive, finite).
        k: batch size (>= 0).
        draws: posterior draws the gains are computed at.
        seed: seeds the predictive draws and the Monte Carlo.
        budget: the batch's total cost at most this (``None``: no limit).
        target: what the gain is about: ``"reward"`` (the draws: BALD) or ``"policy"`` (the best actions in the
            states good policies visit, :func:`greedy_action_targets`).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    reward, dims, nuisance = thinned_draws(posterior, draws)
    evaluation = evaluate_feedback(mdp, reward, dims, nuisance, queries, seed=seed, log_likelihood=False,
                                   label_log_probs=True)
    scored = [name for name in queries if name in evaluation.label_log_probs]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(b"select")]))
    selection = select_batch({name: evaluation.label_log_probs[name] for name in scored},
                             {name: unit_items(name, queries[name]) for name in scored},
                             {name: costs[name] for name in scored}, k, rng, budget=budget,
                             targets=greedy_action_targets(mdp, reward, dims) if target == "policy" else None)
    return BatchChoice(selection, dict(evaluation.skipped), reward.shape[1])
