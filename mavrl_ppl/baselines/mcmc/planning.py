"""Optimal action values ``Q*`` of a tabular MDP as a differentiable JAX function of the reward (float64).

Two schemes, both usable inside a NumPyro model:

- :func:`q_star_sweeps`: ``num_sweeps`` hard-max value-iteration sweeps as a ``lax.scan`` (reverse-differentiable;
  exact only in the limit, error ``<= gamma^K * |Q*|``).
- :func:`q_star_exact`: ``Q*`` is piecewise linear in the reward: on the region where a policy ``pi`` is greedy,
  ``Q* = r + gamma P (I - gamma P_pi)^-1 r_pi``. So we find an optimal policy with a forward-only policy iteration on
  ``stop_gradient(reward)`` (a ``lax.while_loop``, which JAX cannot reverse-differentiate but need not here), then
  evaluate it with ONE differentiable linear solve. The value is exact (to round-off) and so is the gradient wherever
  the optimal policy is unique (almost everywhere); at ties it returns the gradient of one optimal policy's region.

``benchmarks/RESULTS.md`` (NUTS section) records the measurement that made :func:`q_star_exact` the model's default.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

#: Policy iteration keeps the current action unless another beats it by more than this (relative to the value
#: scale): floating-point ties then cannot make it cycle between equally good policies.
SWITCH_TOL = 1e-12

#: Value-iteration sweeps (cheap, forward only) before policy iteration: on the 10x10 grids they cut the exact
#: evaluations from ~10 to 1-3 and the time of :func:`optimal_policy` from 1.0 to 0.5 ms (measured, 2-core CPU).
WARM_SWEEPS = 50


def expected_reward_matrix(transitions, reward_groups, num_groups: int):
    """``W[s, a, g] = sum_s' P[s, a, s'] [reward_groups[s, a, s'] == g]``, so that ``r(s, a) = W @ theta``.

    Args:
        transitions: ``P[s, a, s']`` (numpy or JAX).
        reward_groups: ``(S, A, S)`` integer group index of each transition.
        num_groups: number of reward parameters ``G``.
    """
    one_hot = jax.nn.one_hot(jnp.asarray(reward_groups), num_groups, dtype=jnp.float64)
    return jnp.einsum("sat,satg->sag", jnp.asarray(transitions, dtype=jnp.float64), one_hot)


def bellman_backup(r_sa, transitions, gamma: float, values):
    """``Q(s, a) = r(s, a) + gamma * sum_s' P[s, a, s'] V(s')``."""
    return r_sa + gamma * jnp.einsum("sat,t->sa", transitions, values)


def q_star_sweeps(r_sa, transitions, gamma: float, num_sweeps: int):
    """``Q*`` by ``num_sweeps`` value-iteration sweeps from ``Q = 0`` (differentiable through ``lax.scan``).

    Args:
        r_sa: expected reward ``r(s, a)``, shape ``(S, A)``.
        transitions: ``P[s, a, s']``.
        gamma: discount factor.
        num_sweeps: number of Bellman backups; see :func:`sweeps_for_tolerance`.
    """

    def sweep(q, _):
        return bellman_backup(r_sa, transitions, gamma, q.max(-1)), None

    q, _ = lax.scan(sweep, jnp.zeros_like(r_sa), None, length=num_sweeps)
    return q


def sweeps_for_tolerance(gamma: float, tol: float, reward_bound: float) -> int:
    """Sweeps from zero after which ``|Q - Q*| <= tol`` for every reward with ``|r| <= reward_bound``."""
    q_bound = reward_bound / (1.0 - gamma)
    return max(1, math.ceil(math.log(tol / q_bound) / math.log(gamma)))


def policy_values(r_sa, transitions, gamma: float, policy):
    """Exact ``V^pi`` of a deterministic policy (``policy[s]`` = action) by one linear solve (differentiable in
    ``r_sa``; the policy is an integer array and carries no gradient)."""
    S = r_sa.shape[0]
    rows = jnp.arange(S)
    p_pi = transitions[rows, policy]  # (S, S)
    r_pi = r_sa[rows, policy]
    return jnp.linalg.solve(jnp.eye(S, dtype=r_sa.dtype) - gamma * p_pi, r_pi)


def optimal_policy(r_sa, transitions, gamma: float, warm_sweeps: int = WARM_SWEEPS, max_iter: int = 1000):
    """An optimal deterministic policy by policy iteration (forward only: call it on a stop-gradient reward).

    Starts from the greedy policy of ``warm_sweeps`` value-iteration sweeps; each round evaluates the policy exactly
    and switches a state's action only if another action beats it by more than :data:`SWITCH_TOL` times the value
    scale. Policy iteration reaches an optimal policy in finitely many rounds; ``max_iter`` only guards against a
    pathological input.

    Returns:
        ``(policy, rounds)``: the ``(S,)`` integer policy and the number of evaluation rounds used.
    """
    def improve(state):
        policy, _, rounds = state
        q = bellman_backup(r_sa, transitions, gamma, policy_values(r_sa, transitions, gamma, policy))
        current = jnp.take_along_axis(q, policy[:, None], axis=-1)[:, 0]
        tol = SWITCH_TOL * (1.0 + jnp.max(jnp.abs(q)))
        better = q.max(-1) > current + tol
        new_policy = jnp.where(better, jnp.argmax(q, -1), policy)
        return new_policy, jnp.any(better), rounds + 1

    def not_done(state):
        _, changed, rounds = state
        return changed & (rounds < max_iter)

    warm = q_star_sweeps(r_sa, transitions, gamma, warm_sweeps) if warm_sweeps > 0 else r_sa
    start = (jnp.argmax(warm, -1), jnp.array(True), jnp.array(0))
    policy, _, rounds = lax.while_loop(not_done, improve, start)
    return policy, rounds


def q_star_exact(r_sa, transitions, gamma: float):
    """Exact ``Q*`` with an exact gradient almost everywhere (see the module docstring).

    Args:
        r_sa: expected reward ``r(s, a)``, shape ``(S, A)``, float64.
        transitions: ``P[s, a, s']``.
        gamma: discount factor.
    """
    policy, _ = optimal_policy(lax.stop_gradient(r_sa), transitions, gamma)
    policy = lax.stop_gradient(policy)
    return bellman_backup(r_sa, transitions, gamma, policy_values(r_sa, transitions, gamma, policy))
