"""How good is a learned reward on a tabular MDP (REFERENCE §2): normalised score, regret, EPIC distance.

numpy only: the metrics run on posterior means or draws from either inference backend without torch or JAX.

Definitions used here:

* ``discounted_value``: the exact discounted value of a policy from the MDP's initial distribution, by one
  linear solve, under the TRUE reward unless told otherwise.
* ``normalized_score = 100 (v - v_uniform) / (v_optimal - v_uniform)`` with ``v`` the true value of the greedy
  policy for the learned reward; ``regret = v_optimal - v``.
* ``epic_distance`` (Gleave et al. 2021): canonicalise each reward with the uniform distribution over states
  (for ``S`` and ``S'``) and actions (for ``A``),
  ``C(s, a, s') = R(s, a, s') + gamma E[R(s', A, S')] - E[R(s, A, S')] - gamma E[R(S, A, S')]``,
  then the Pearson distance ``sqrt((1 - rho) / 2)`` with ``rho`` the correlation of ``C1`` and ``C2`` over all
  ``S * A * S`` transitions weighted uniformly (impossible transitions included, as in Gleave et al.'s
  gridworld oracle, which this reproduces).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mavrl_ppl.envs.tabular import TabularMDP, uniform_policy
from mavrl_ppl.planning import greedy_policy, policy_evaluation, value_iteration

__all__ = [
    "canonicalize_reward",
    "discounted_value",
    "epic_distance",
    "evaluate_reward",
    "greedy_policy_for",
    "normalization_constants",
]


def _check_rewards(mdp: TabularMDP, rewards: np.ndarray, what: str) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.shape != mdp.transitions.shape:
        raise ValueError(
            f"{what} must be an (S, A, S) = {mdp.transitions.shape} reward array, got shape {rewards.shape}"
            " (broadcast group rewards with mdp.with_group_rewards)"
        )
    if not np.all(np.isfinite(rewards)):
        raise ValueError(f"{what} holds NaN or inf")
    return rewards


def discounted_value(mdp: TabularMDP, policy: np.ndarray, rewards: np.ndarray | None = None) -> float:
    """Exact discounted value of ``policy`` from the MDP's initial distribution.

    Args:
        mdp: the MDP (its dynamics, discount and initial distribution are used).
        policy: ``(S, A)`` action probabilities per state.
        rewards: ``(S, A, S)`` reward to evaluate under; default the MDP's true reward.

    Returns:
        ``sum_s initial[s] V^pi(s)`` with ``V^pi`` from one linear solve.
    """
    rewards = mdp.rewards if rewards is None else _check_rewards(mdp, rewards, "rewards")
    policy = np.asarray(policy, dtype=np.float64)
    if policy.shape != (mdp.num_states, mdp.num_actions):
        raise ValueError(f"policy must have shape {(mdp.num_states, mdp.num_actions)}, got {policy.shape}")
    return float(mdp.initial @ policy_evaluation(mdp.transitions, rewards, mdp.gamma, policy))


def greedy_policy_for(mdp: TabularMDP, rewards: np.ndarray) -> np.ndarray:
    """The deterministic policy that is greedy in ``Q*`` of ``rewards`` (ties: the first maximising action).

    Args:
        mdp: the MDP whose dynamics and discount define ``Q*``.
        rewards: ``(S, A, S)`` reward, e.g. a posterior mean.

    Returns:
        ``(S, A)`` one-hot policy.
    """
    rewards = _check_rewards(mdp, rewards, "rewards")
    return greedy_policy(value_iteration(mdp.transitions, rewards, mdp.gamma))


def normalization_constants(mdp: TabularMDP) -> tuple[float, float]:
    """``(v_optimal, v_uniform)``: true start values of the optimal and of the uniform random policy.

    Args:
        mdp: the MDP with its true reward.
    """
    v_optimal = discounted_value(mdp, greedy_policy_for(mdp, mdp.rewards))
    v_uniform = discounted_value(mdp, uniform_policy(mdp))
    return v_optimal, v_uniform


def canonicalize_reward(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """EPIC canonicalisation with uniform state and action distributions.

    Args:
        rewards: ``(..., S, A, S)`` rewards; leading dims are batch dims.
        gamma: discount factor.

    Returns:
        ``C(s, a, s') = R(s, a, s') + gamma m(s') - m(s) - gamma M`` with ``m(s) = E[R(s, A, S')]`` and
        ``M = E[R(S, A, S')]`` (uniform expectations); the same shape as ``rewards``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim < 3 or rewards.shape[-3] != rewards.shape[-1]:
        raise ValueError(f"rewards must have shape (..., S, A, S), got {rewards.shape}")
    m = rewards.mean(axis=(-2, -1))  # (..., S)
    big_m = m.mean(axis=-1)[..., None, None, None]
    return rewards + gamma * m[..., None, None, :] - m[..., :, None, None] - gamma * big_m


def epic_distance(r1: np.ndarray, r2: np.ndarray, gamma: float) -> float | np.ndarray:
    """EPIC pseudometric between rewards (Gleave et al. 2021), uniform coverage over ``(s, a, s')``.

    Args:
        r1: ``(S, A, S)`` reward (or ``(..., S, A, S)``, broadcast against ``r2``).
        r2: ``(..., S, A, S)`` reward; leading dims (e.g. posterior draws) give one distance each.
        gamma: discount factor used by the canonicalisation.

    Returns:
        ``sqrt((1 - rho) / 2)`` in [0, 1]: a float for unbatched inputs, else an array of the batch shape.
        A reward that is constant after canonicalisation (e.g. a constant, or a pure potential shaping) has no
        defined correlation: its distance is ``nan``.
    """
    c1 = canonicalize_reward(r1, gamma)
    c2 = canonicalize_reward(r2, gamma)
    if c1.shape[-3:] != c2.shape[-3:]:
        raise ValueError(f"rewards must have the same (S, A, S) shape, got {c1.shape} and {c2.shape}")
    c1 = c1.reshape(*c1.shape[:-3], -1)
    c2 = c2.reshape(*c2.shape[:-3], -1)
    # The uniform mean of C is zero in exact arithmetic; centring again removes the round-off.
    c1 = c1 - c1.mean(-1, keepdims=True)
    c2 = c2 - c2.mean(-1, keepdims=True)
    n1 = np.sqrt(np.sum(c1 * c1, axis=-1))
    n2 = np.sqrt(np.sum(c2 * c2, axis=-1))
    # Zero-variance test relative to the reward's own scale: canonicalising a constant leaves only round-off.
    scale1 = np.sqrt(c1.shape[-1]) * np.max(np.abs(np.asarray(r1, dtype=np.float64)), axis=(-3, -2, -1))
    scale2 = np.sqrt(c2.shape[-1]) * np.max(np.abs(np.asarray(r2, dtype=np.float64)), axis=(-3, -2, -1))
    degenerate = (n1 <= 1e-12 * scale1) | (n2 <= 1e-12 * scale2)
    # sqrt((1 - rho) / 2) == ||c1/|c1| - c2/|c2||| / 2; the norm form keeps equal rewards at exactly 0, where
    # 1 - rho keeps ~1e-13 of round-off (10x10 grid) that the square root blows up to ~3e-7.
    with np.errstate(invalid="ignore", divide="ignore"):
        u1 = c1 / n1[..., None]
        u2 = c2 / n2[..., None]
        distance = 0.5 * np.sqrt(np.sum((u1 - u2) ** 2, axis=-1))
    distance = np.where(degenerate, np.nan, np.minimum(distance, 1.0))
    return float(distance) if distance.ndim == 0 else distance


def evaluate_reward(mdp: TabularMDP, learned_rewards: np.ndarray) -> dict[str, float]:
    """The REFERENCE §2 metrics of a learned reward.

    Args:
        mdp: the MDP with its true reward and discount.
        learned_rewards: ``(S, A, S)`` learned reward (e.g. ``mdp.with_group_rewards(posterior_mean)``).

    Returns:
        ``normalized_score`` (percent; 100 = optimal, 0 = uniform random), ``regret`` (``v_optimal - v``),
        ``discounted_value`` (``v``: true value of the greedy policy for the learned reward) and ``epic``
        (EPIC distance to the true reward with the MDP's gamma; ``nan`` if the learned reward is constant
        after canonicalisation).
    """
    learned_rewards = _check_rewards(mdp, learned_rewards, "learned_rewards")
    v_optimal, v_uniform = normalization_constants(mdp)
    if not v_optimal > v_uniform:
        raise ValueError(
            f"the normalised score is undefined: v_optimal = {v_optimal} is not above v_uniform = {v_uniform}"
        )
    v = discounted_value(mdp, greedy_policy_for(mdp, learned_rewards))
    return {
        "normalized_score": 100.0 * (v - v_uniform) / (v_optimal - v_uniform),
        "regret": v_optimal - v,
        "discounted_value": v,
        "epic": epic_distance(mdp.rewards, learned_rewards, mdp.gamma),
    }


def posterior_mean(idata: Any) -> np.ndarray:
    """Posterior mean of ``reward`` over chains and draws (an InferenceData or its ``posterior`` Dataset)."""
    posterior = idata.posterior if hasattr(idata, "posterior") else idata
    return posterior["reward"].mean(("chain", "draw")).values


def learned_reward(mdp: TabularMDP, mean: np.ndarray) -> np.ndarray:
    """The ``(S, A, S)`` reward a posterior mean stands for: one value per reward group (the grids: per state), or per
    state-action pair (``R(s, a, s') = r(s, a)``).

    Raises:
        ValueError: a shape that fits neither.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if mean.shape == (mdp.num_groups,):
        return mdp.with_group_rewards(mean)
    if mean.shape == (mdp.num_states, mdp.num_actions):
        return np.broadcast_to(mean[:, :, None], mdp.transitions.shape)
    raise ValueError(f"posterior mean of shape {mean.shape} fits neither {mdp.num_groups} groups nor "
                     f"({mdp.num_states}, {mdp.num_actions}) state-actions of {mdp.name}")
