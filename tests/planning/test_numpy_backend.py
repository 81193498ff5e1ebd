"""The numpy solvers: exact ``q_star`` and ``value_iteration`` against hand-derived values and the Bellman optimality
equation, ``policy_evaluation`` against iteration, the policies built from action values."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.envs import make_grid
from mavrl_ppl.planning import (
    boltzmann_policy,
    greedy_policy,
    policy_evaluation,
    q_star,
    sparse_transitions,
    value_iteration,
)


def random_mdp(rng: np.random.Generator, states: int = 6, actions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet transition rows (some sparse) and one reward group per ``(s, a, s')``."""
    transitions = rng.dirichlet(np.full(states, 0.5), size=(states, actions))
    transitions[0, 0] = np.eye(states)[2]  # a deterministic row among the stochastic ones
    groups = np.arange(transitions.size).reshape(transitions.shape)
    return transitions, groups


def bellman_residual(transitions, groups, gamma, theta, q) -> float:
    """``max |Q - (r + gamma P max_a Q)|`` for one reward vector."""
    rewards = theta[groups]
    backup = np.einsum("sat,sat->sa", transitions, rewards + gamma * q.max(-1)[None, None, :])
    return float(np.abs(q - backup).max())


def test_q_star_single_state_three_self_loops() -> None:
    # One state, actions with rewards 1, 2, 3 that all loop back: V* = 3 / (1 - 0.9) = 30 and
    # Q*(a) = r_a + 0.9 * 30 = 28, 29, 30.
    transitions = np.ones((1, 3, 1))
    rewards = np.array([1.0, 2.0, 3.0])
    groups = np.arange(3).reshape(1, 3, 1)
    q = value_iteration(transitions, rewards[groups], 0.9)
    # value_iteration stops within tol = 1e-10 of the fixed point.
    np.testing.assert_allclose(q, [[28.0, 29.0, 30.0]], atol=1e-8)
    np.testing.assert_array_equal(greedy_policy(q), [[0.0, 0.0, 1.0]])
    # q_star is exact: round-off only.
    np.testing.assert_allclose(q_star(transitions, groups, 0.9, rewards), [[28.0, 29.0, 30.0]], rtol=0, atol=1e-12)


def test_q_star_two_state_cycle() -> None:
    # 0 -> 1 -> 0 with one action; reward 1 for leaving state 0, 2 for leaving state 1.
    # V0 = 1 + 0.9 V1, V1 = 2 + 0.9 V0  =>  V0 = 2.8 / 0.19 = 14.7368..., V1 = 2.9 / 0.19 = 15.2632...
    transitions = np.array([[[0.0, 1.0]], [[1.0, 0.0]]])
    groups = np.array([[[0, 0]], [[1, 1]]])
    rewards = np.array([1.0, 2.0])
    q = value_iteration(transitions, rewards[groups], 0.9)
    np.testing.assert_allclose(q[:, 0], [2.8 / 0.19, 2.9 / 0.19], atol=1e-8)
    np.testing.assert_allclose(q[:, 0], [14.7368, 15.2632], atol=1e-4)  # the brief's rounded values
    np.testing.assert_allclose(q_star(transitions, groups, 0.9, rewards)[:, 0], [2.8 / 0.19, 2.9 / 0.19], atol=1e-12)


def test_q_star_by_hand_with_a_stochastic_choice() -> None:
    # State 0: action 0 stays (reward 0 per step); action 1 moves to the absorbing state 1 with probability 0.5 (reward
    # 1 on that transition) and stays otherwise (reward 0). State 1 pays 2 per step forever: V1 = 2 / (1 - 0.5) = 4.
    # Taking action 1 forever: V0 = 0.5 (1 + 0.5 * 4) + 0.5 (0 + 0.5 V0)  =>  V0 = 1.5 / 0.75 = 2.
    # Q(0, 0) = 0 + 0.5 V0 = 1, Q(0, 1) = V0 = 2, and in state 1 both actions are worth 4.
    transitions = np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.0, 1.0]]])
    groups = np.array([[[0, 0], [0, 1]], [[2, 2], [2, 2]]])
    q = q_star(transitions, groups, 0.5, np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(q, [[1.0, 2.0], [4.0, 4.0]], rtol=0, atol=1e-14)


def test_q_star_is_the_bellman_fixed_point_on_random_mdps() -> None:
    rng = np.random.default_rng(5)
    transitions, groups = random_mdp(rng)
    thetas = rng.normal(size=(7, groups.size))
    for gamma in (0.0, 0.5, 0.95, 0.99):
        q = q_star(transitions, groups, gamma, thetas)
        for theta, q_one in zip(thetas, q, strict=True):
            assert bellman_residual(transitions, groups, gamma, theta, q_one) < 1e-12 / (1 - gamma)


def test_q_star_batches_over_leading_dimensions() -> None:
    mdp = make_grid("trap", 5, p_rand=0.2)
    thetas = np.random.default_rng(0).normal(size=(2, 3, mdp.num_groups))
    q = q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, thetas)
    assert q.shape == (2, 3, 25, 5) and q.dtype == np.float64
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(
                q[i, j], q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, thetas[i, j]), rtol=0, atol=1e-12
            )


def test_q_star_does_not_depend_on_the_warm_start() -> None:
    mdp = make_grid("cliff", 6, p_rand=0.1)
    thetas = 3.0 * np.random.default_rng(1).normal(size=(20, mdp.num_groups))
    cold = q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, thetas, warm_sweeps=0)
    warm = q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, thetas, warm_sweeps=200)
    np.testing.assert_allclose(cold, warm, rtol=0, atol=1e-11)


def test_q_star_ends_on_ties() -> None:
    """A constant reward makes every action optimal everywhere: policy iteration must stop, not cycle."""
    mdp = make_grid("trap", 4, p_rand=0.2)
    theta = np.full((2, mdp.num_groups), 0.7)
    theta[1] = 0.0
    q = q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, theta, warm_sweeps=0, max_iter=1)
    np.testing.assert_allclose(q[0], 0.7 / (1 - mdp.gamma), rtol=1e-13)
    np.testing.assert_array_equal(q[1], 0.0)


def test_q_star_rejects_bad_input() -> None:
    mdp = make_grid("sparse", 3)
    P, groups, gamma = mdp.transitions, mdp.reward_groups, mdp.gamma
    theta = np.zeros(mdp.num_groups)
    with pytest.raises(ValueError, match="group rewards"):
        q_star(P, groups, gamma, np.zeros(mdp.num_groups + 1))
    with pytest.raises(ValueError, match="group rewards"):
        q_star(P, groups, gamma, np.float64(0.0))
    with pytest.raises(ValueError, match="reward_groups"):
        q_star(P, groups[..., :-1], gamma, theta)
    with pytest.raises(ValueError, match="reward_groups"):
        q_star(P, groups.astype(float), gamma, theta)
    with pytest.raises(ValueError, match=r"\(S, A, S\)"):
        q_star(P[:, :, :-1], groups[:, :, :-1], gamma, theta)
    with pytest.raises(ValueError, match="gamma"):
        q_star(P, groups, 1.0, theta)
    # A round limit that is too small for a non-trivial reward is an error, not a silently wrong Q*.
    theta = np.random.default_rng(2).normal(size=mdp.num_groups)
    with pytest.raises(RuntimeError, match="did not settle"):
        q_star(P, groups, gamma, theta, warm_sweeps=0, max_iter=1)


def test_sparse_transitions_hold_every_row() -> None:
    mdp = make_grid("trap", 4, p_rand=0.3)
    successors, probs = sparse_transitions(mdp.transitions)
    assert successors.shape == (16, 5, 5)  # at most five distinct successors per (s, a)
    dense = np.zeros_like(mdp.transitions)
    s, a, _ = np.indices(successors.shape)
    np.add.at(dense, (s, a, successors), probs)
    np.testing.assert_array_equal(dense, mdp.transitions)
    successors, probs = sparse_transitions(make_grid("trap", 4).transitions)
    assert successors.shape == (16, 5, 1) and np.all(probs == 1.0)


def test_value_iteration_on_batched_rewards_equals_per_reward() -> None:
    mdp = make_grid("trap", 5, p_rand=0.2)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(3, *mdp.rewards.shape))
    batch = np.stack([mdp.rewards, *noise]).reshape(2, 2, *mdp.rewards.shape)
    q_batch = value_iteration(mdp.transitions, batch, mdp.gamma)
    assert q_batch.shape == (2, 2, 25, 5)
    for i in range(2):
        for j in range(2):
            q_one = value_iteration(mdp.transitions, batch[i, j], mdp.gamma)
            # Each result is within tol = 1e-10 of its own fixed point (the batch just iterates longer).
            np.testing.assert_allclose(q_batch[i, j], q_one, atol=1e-8)


def test_value_iteration_fixed_point() -> None:
    mdp = make_grid("cliff", 6, p_rand=0.1)
    q = value_iteration(mdp.transitions, mdp.rewards, mdp.gamma)
    backup = np.einsum("sat,sat->sa", mdp.transitions, mdp.rewards + mdp.gamma * q.max(-1)[None, None, :])
    np.testing.assert_allclose(q, backup, atol=1e-9)


def test_policy_evaluation_agrees_with_iterative_evaluation() -> None:
    mdp = make_grid("cliff", 6, p_rand=0.2)
    rng = np.random.default_rng(1)
    policy = rng.dirichlet(np.ones(5), size=mdp.num_states)
    v_exact = policy_evaluation(mdp.transitions, mdp.rewards, mdp.gamma, policy)
    # Independent iterative evaluation: 2000 sweeps contract the error by 0.95^2000 ~ 1e-45.
    p_pi = np.einsum("sa,sat->st", policy, mdp.transitions)
    r_pi = np.einsum("sa,sat,sat->s", policy, mdp.transitions, mdp.rewards)
    v = np.zeros(mdp.num_states)
    for _ in range(2000):
        v = r_pi + mdp.gamma * p_pi @ v
    np.testing.assert_allclose(v_exact, v, atol=1e-9)


def test_boltzmann_policy() -> None:
    q = np.random.default_rng(2).normal(size=(7, 5))
    np.testing.assert_allclose(boltzmann_policy(q, 0.0), np.full((7, 5), 0.2), atol=1e-15)
    p = boltzmann_policy(q, 2.0)
    np.testing.assert_allclose(p.sum(-1), 1.0)
    np.testing.assert_allclose(p, np.exp(2 * q) / np.exp(2 * q).sum(-1, keepdims=True), rtol=1e-12)
    # A very large beta is the greedy policy, with no overflow.
    np.testing.assert_allclose(boltzmann_policy(q, 1e6), greedy_policy(q), atol=1e-12)
