"""Optimal action values ``Q*`` of a tabular MDP as a differentiable JAX function of the reward (float64).

Two schemes, both usable inside a NumPyro model:

- :func:`q_star_sweeps`: ``num_sweeps`` hard-max value-iteration sweeps as a ``lax.scan`` (reverse-differentiable;
  exact only in the limit, error ``<= gamma^K * |Q*|``).
- :func:`q_star_exact`: ``Q*`` is piecewise linear in the reward: on the region where a policy ``pi`` is greedy,
  ``Q* = r + gamma P V_pi`` with ``V_pi = (I - gamma P_pi)^-1 r_pi``. So we find an optimal policy with a forward-only
  policy iteration on ``stop_gradient(reward)`` (a ``lax.while_loop``, which JAX cannot reverse-differentiate but need
  not here), then evaluate that policy once more, differentiably. The value is exact (to round-off) and so is the
  gradient wherever the optimal policy is unique (almost everywhere); at ties it is the gradient of one optimal
  policy's linear piece. :func:`make_q_star` wraps it as a function of the group rewards (the
  :mod:`mavrl_ppl.planning` contract).

Dynamics are held sparse (:class:`Dynamics`: the successors of each ``(s, a)`` and their probabilities). A policy is
evaluated exactly by one dense linear solve, or, when every move is deterministic (the paper grids), by pointer
doubling: ``V = sum_{t < 2^L} gamma^t r_pi(s_t)`` in ``L`` gather-and-add steps, with ``L`` chosen so that the
truncated tail ``gamma^(2^L) |V|`` is below float64 round-off. ``benchmarks/RESULTS.md`` (NUTS section) records the
measurements behind these choices.

Everything here assumes JAX runs in float64, and importing this module does NOT switch it on (no process-wide side
effect on import): the caller does, before :func:`make_dynamics` (e.g. with
:func:`~mavrl_ppl.baselines.mcmc.devices.enable_x64`). Without it the arrays silently become float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mavrl_ppl.planning.numpy_backend import SWITCH_TOL, WARM_SWEEPS, sparse_transitions


class Dynamics(NamedTuple):
    """Sparse ``P[s, a, s']``: ``P[s, a, successors[s, a, k]] = probs[s, a, k]`` (padding has probability 0).

    Attributes:
        successors: ``(S, A, K)`` integer next states, ``K`` = the largest number of successors of any ``(s, a)``.
        probs: ``(S, A, K)`` their probabilities (float64).
        dense: ``(S, A, S)`` the full array (used by the linear-solve evaluation when ``K > 1``).
    """

    successors: jax.Array
    probs: jax.Array
    dense: jax.Array

    @property
    def deterministic(self) -> bool:
        return self.successors.shape[-1] == 1


def make_dynamics(transitions: np.ndarray) -> Dynamics:
    """The sparse form of ``P[s, a, s']`` (numpy in, JAX arrays out; see
    :func:`~mavrl_ppl.planning.numpy_backend.sparse_transitions`)."""
    transitions = np.asarray(transitions, dtype=np.float64)
    order, probs = sparse_transitions(transitions)
    return Dynamics(jnp.asarray(order), jnp.asarray(probs), jnp.asarray(transitions))


def successor_groups(dynamics: Dynamics, reward_groups: np.ndarray) -> jax.Array:
    """``(S, A, K)`` reward-group index of each ``(s, a, successors[s, a, k])`` transition, so that the expected
    reward is :func:`expected_reward` (a gather: a dense ``(S, A, G)`` product costs ten times more on a CPU)."""
    S, A, K = dynamics.successors.shape
    s, a, _ = np.indices((S, A, K))
    return jnp.asarray(np.asarray(reward_groups)[s, a, np.asarray(dynamics.successors)])


def expected_reward(theta, dynamics: Dynamics, groups):
    """``r(s, a) = sum_s' P[s, a, s'] theta[reward_groups[s, a, s']]`` from group rewards ``theta``.

    Args:
        theta: ``(G,)`` group rewards.
        dynamics: the MDP's :class:`Dynamics`.
        groups: :func:`successor_groups` of the MDP.
    """
    return jnp.sum(dynamics.probs * theta[groups], axis=-1)


def bellman_backup(r_sa, dynamics: Dynamics, gamma: float, values):
    """``Q(s, a) = r(s, a) + gamma * sum_s' P[s, a, s'] V(s')``."""
    return r_sa + gamma * jnp.sum(dynamics.probs * values[dynamics.successors], axis=-1)


def q_star_sweeps(r_sa, dynamics: Dynamics, gamma: float, num_sweeps: int):
    """``Q*`` by ``num_sweeps`` value-iteration sweeps from ``Q = 0`` (differentiable through ``lax.scan``).

    Args:
        r_sa: expected reward ``r(s, a)``, shape ``(S, A)``.
        dynamics: the MDP's :class:`Dynamics`.
        gamma: discount factor.
        num_sweeps: number of Bellman backups; see :func:`sweeps_for_tolerance`.
    """

    def sweep(q, _):
        return bellman_backup(r_sa, dynamics, gamma, q.max(-1)), None

    q, _ = lax.scan(sweep, jnp.zeros_like(r_sa), None, length=num_sweeps)
    return q


def sweeps_for_tolerance(gamma: float, tol: float, reward_bound: float) -> int:
    """Sweeps from zero after which ``|Q - Q*| <= tol`` for every reward with ``|r| <= reward_bound``."""
    q_bound = reward_bound / (1.0 - gamma)
    return max(1, math.ceil(math.log(tol / q_bound) / math.log(gamma)))


def doubling_steps(gamma: float) -> int:
    """``L`` such that ``gamma^(2^L) < 1e-17``: a horizon of ``2^L`` steps leaves a tail below float64 round-off."""
    if gamma <= 0.0:
        return 0
    return max(0, math.ceil(math.log2(math.log(1e-17) / math.log(gamma))))


def policy_values(r_sa, dynamics: Dynamics, gamma: float, policy):
    """Exact ``V^pi`` of a deterministic policy (``policy[s]`` = action), differentiable in ``r_sa`` (the policy is an
    integer array and carries no gradient).

    Deterministic dynamics: pointer doubling (``acc <- acc + gamma^(2^k) acc[next]``, ``next <- next[next]``);
    otherwise one dense linear solve ``(I - gamma P_pi) V = r_pi``.
    """
    S = r_sa.shape[0]
    rows = jnp.arange(S)
    r_pi = r_sa[rows, policy]
    if not dynamics.deterministic:
        p_pi = dynamics.dense[rows, policy]
        return jnp.linalg.solve(jnp.eye(S, dtype=r_sa.dtype) - gamma * p_pi, r_pi)
    nxt = dynamics.successors[rows, policy, 0]
    steps = doubling_steps(gamma)
    discounts = jnp.asarray([gamma ** (2**k) for k in range(steps)], dtype=r_sa.dtype)

    def double(carry, discount):
        acc, nxt = carry
        return (acc + discount * acc[nxt], nxt[nxt]), None

    # A scan, not an unrolled Python loop: XLA fuses an unrolled chain of gathers into whatever gathers V next, and
    # recomputes the chain for every gathered element (Q* gathered at the 2560 stop steps cost 0.33 ms instead of
    # 0.11 ms per gradient; benchmarks/RESULTS.md, NUTS notes). A scan materialises each step.
    (acc, _), _ = lax.scan(double, (r_pi, nxt), discounts)
    return acc


def optimal_policy(r_sa, dynamics: Dynamics, gamma: float, warm_sweeps: int = WARM_SWEEPS, max_iter: int = 1000):
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
        q = bellman_backup(r_sa, dynamics, gamma, policy_values(r_sa, dynamics, gamma, policy))
        current = jnp.take_along_axis(q, policy[:, None], axis=-1)[:, 0]
        tol = SWITCH_TOL * (1.0 + jnp.max(jnp.abs(q)))
        better = q.max(-1) > current + tol
        new_policy = jnp.where(better, jnp.argmax(q, -1), policy)
        return new_policy, jnp.any(better), rounds + 1

    def not_done(state):
        _, changed, rounds = state
        return changed & (rounds < max_iter)

    warm = q_star_sweeps(r_sa, dynamics, gamma, warm_sweeps) if warm_sweeps > 0 else r_sa
    start = (jnp.argmax(warm, -1), jnp.array(True), jnp.array(0))
    policy, _, rounds = lax.while_loop(not_done, improve, start)
    return policy, rounds


def q_star_exact(r_sa, dynamics: Dynamics, gamma: float, warm_sweeps: int = WARM_SWEEPS):
    """Exact ``Q*`` with an exact gradient almost everywhere (see the module docstring).

    Args:
        r_sa: expected reward ``r(s, a)``, shape ``(S, A)``, float64.
        dynamics: the MDP's :class:`Dynamics`.
        gamma: discount factor.
        warm_sweeps: value-iteration sweeps before policy iteration (speed only; the result does not depend on it).
    """
    policy, _ = optimal_policy(lax.stop_gradient(r_sa), dynamics, gamma, warm_sweeps)
    policy = lax.stop_gradient(policy)
    return bellman_backup(r_sa, dynamics, gamma, policy_values(r_sa, dynamics, gamma, policy))


def make_q_star(transitions: np.ndarray, reward_groups: np.ndarray, gamma: float) -> Callable[[jax.Array], jax.Array]:
    """The :mod:`mavrl_ppl.planning` contract in JAX: ``group_rewards (G,) -> Q* (S, A)`` by :func:`q_star_exact`.

    The returned function can be traced (``jax.jit``, ``jax.grad``; ``jax.vmap`` for a batch of reward vectors).
    Float64 must be on before this is called (see the module docstring).

    Args:
        transitions: ``(S, A, S)`` transition probabilities.
        reward_groups: ``(S, A, S)`` integer index of the group reward behind each transition.
        gamma: discount in [0, 1).
    """
    dynamics = make_dynamics(transitions)
    groups = successor_groups(dynamics, reward_groups)
    num_groups = int(np.asarray(reward_groups).max()) + 1

    def q_star(group_rewards: jax.Array) -> jax.Array:
        if group_rewards.shape != (num_groups,):
            raise ValueError(f"expected {num_groups} group rewards, got shape {tuple(group_rewards.shape)}")
        return q_star_exact(expected_reward(group_rewards, dynamics, groups), dynamics, gamma)

    return q_star
