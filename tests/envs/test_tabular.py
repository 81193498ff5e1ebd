"""Grid/chain builders, start values and vectorised rollouts against hand-derived or published values (the solvers
themselves: tests/planning)."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.envs import (
    grid_from_rewards,
    make_chain,
    make_grid,
    make_tabular,
    sample_paths,
    start_value,
    uniform_policy,
)
from mavrl_ppl.planning import greedy_policy, value_iteration

RIGHT, UP, LEFT, DOWN, STAY = range(5)

# REFERENCE §2: start-state values at gamma 0.95 on the 10x10 paper grids (optimal, uniform random policy).
NORMALISERS = {
    "grid_cliff": (31.77714547665743, -4.454407537119193),
    "grid_sparse": (6.7387150060807945, -1.9949247171253233),
    "grid_trap": (7.944286369164358, -6.7852527416065485),
}


@pytest.mark.parametrize("name", sorted(NORMALISERS))
def test_normalisation_constants_match_reference(name: str) -> None:
    mdp = make_tabular(name)
    v_opt_ref, v_unif_ref = NORMALISERS[name]
    q = value_iteration(mdp.transitions, mdp.rewards, mdp.gamma)
    # REFERENCE §2 states these to 1e-6 for a correct implementation; value iteration converges to 1e-10.
    assert start_value(mdp, greedy_policy(q)) == pytest.approx(v_opt_ref, abs=1e-6)
    assert start_value(mdp, uniform_policy(mdp)) == pytest.approx(v_unif_ref, abs=1e-6)


def test_p_rand_rows_on_a_corner_by_hand() -> None:
    # 3x3 grid, p_rand = 0.2: intended move 0.8, each other move 0.05. State 0 is the top-left corner:
    # UP and LEFT run off the grid and stay, STAY stays, RIGHT -> 1, DOWN -> 3.
    P = make_grid("sparse", 3, p_rand=0.2).transitions
    expected = {
        RIGHT: {1: 0.8, 0: 0.05 * 3, 3: 0.05},  # stays: UP, LEFT, STAY
        DOWN: {3: 0.8, 0: 0.05 * 3, 1: 0.05},
        UP: {0: 0.8 + 0.05 * 2, 1: 0.05, 3: 0.05},  # intended UP stays; LEFT and STAY stay too
        LEFT: {0: 0.8 + 0.05 * 2, 1: 0.05, 3: 0.05},
        STAY: {0: 0.8 + 0.05 * 2, 1: 0.05, 3: 0.05},
    }
    for action, row in expected.items():
        want = np.zeros(9)
        for state, p in row.items():
            want[state] = p
        np.testing.assert_allclose(P[0, action], want, atol=1e-12)
    # The centre state 4 never stays unless it chooses to: each move has its own target.
    np.testing.assert_allclose(P[4, UP], np.bincount([1, 5, 3, 7, 4], [0.8, 0.05, 0.05, 0.05, 0.05], 9))


def test_deterministic_moves_and_row_sums() -> None:
    mdp = make_grid("trap", 10)
    P = mdp.transitions
    np.testing.assert_allclose(P.sum(-1), 1.0)
    assert set(np.unique(P)) == {0.0, 1.0}
    s = 3 * 10 + 4  # row 3, col 4
    assert np.argmax(P[s, RIGHT]) == 3 * 10 + 5
    assert np.argmax(P[s, UP]) == 2 * 10 + 4
    assert np.argmax(P[s, LEFT]) == 3 * 10 + 3
    assert np.argmax(P[s, DOWN]) == 4 * 10 + 4
    assert np.argmax(P[s, STAY]) == s
    assert np.argmax(P[99, DOWN]) == 99 and np.argmax(P[9, RIGHT]) == 9  # off-grid stays


def test_paper_maps() -> None:
    cliff = make_grid("cliff").group_rewards.reshape(10, 10)
    assert np.all(cliff[0, 1:] == -1.0) and cliff[0, 0] == 0.0
    assert np.all(cliff[9, :9] == -4.0) and cliff[9, 9] == 4.0
    assert np.all(cliff[1:9] == 0.0)
    trap = make_grid("trap").group_rewards.reshape(10, 10)
    blocks = np.zeros((10, 10), dtype=bool)
    for r in (2, 3, 6, 7):
        for c in (2, 3, 6, 7):
            blocks[r, c] = True
    assert np.all(trap[blocks] == -4.0) and trap[9, 9] == 1.0
    assert np.count_nonzero(trap) == 16 + 1
    sparse = make_grid("sparse").group_rewards.reshape(10, 10)
    assert sparse[9, 9] == 1.0 and np.all(np.delete(sparse.reshape(-1), 99) == -0.1)


def test_grid_from_user_rewards() -> None:
    reward_map = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0], [1.0, 0.25, 4.0]])
    mdp = grid_from_rewards(reward_map, p_rand=0.1, gamma=0.9, name="mine")
    assert mdp.name == "mine" and mdp.gamma == 0.9 and mdp.grid_shape == (3, 3)
    assert mdp.start_state == 0 and mdp.goal_states == (8,)
    # R(s, a, s') = reward of the state being left, s = row * 3 + col.
    for s in range(9):
        np.testing.assert_array_equal(mdp.rewards[s], np.full((5, 9), reward_map[s // 3, s % 3]))
    np.testing.assert_array_equal(mdp.with_group_rewards(mdp.group_rewards), mdp.rewards)
    np.testing.assert_allclose(mdp.transitions, make_grid("sparse", 3, p_rand=0.1).transitions)
    with pytest.raises(ValueError, match="square"):
        grid_from_rewards(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        grid_from_rewards(np.array([[0.0, np.nan], [0.0, 0.0]]))


def test_chain() -> None:
    n, gamma = 5, 0.9
    mdp = make_chain(n, gamma=gamma)
    forward, stay = 0, 1
    for s in range(n):
        assert mdp.transitions[s, forward, min(s + 1, n - 1)] == 1.0
        assert mdp.transitions[s, stay, s] == 1.0
    # Only leaving the last state pays 1: V*(k) = gamma^(n-1-k) / (1 - gamma), reached by moving forward.
    q = value_iteration(mdp.transitions, mdp.rewards, gamma)
    v_star = gamma ** (n - 1 - np.arange(n)) / (1 - gamma)
    np.testing.assert_allclose(q.max(-1), v_star, atol=1e-8)
    assert np.all(np.argmax(q[:-1], -1) == forward)
    with pytest.raises(ValueError):
        make_chain(1)


def test_sample_paths_frequencies_match_dynamics_and_policy() -> None:
    mdp = make_grid("trap", 4, p_rand=0.3)
    rng = np.random.default_rng(3)
    # Stochastic and clearly non-uniform (a wrong policy would show), yet every action keeps enough mass.
    policy = rng.dirichlet(np.full(mdp.num_actions, 3.0), size=mdp.num_states)
    n_paths, n_steps = 4000, 20
    starts = rng.integers(0, mdp.num_states, size=n_paths)
    states, actions = sample_paths(mdp.transitions, policy, starts, n_steps, rng)
    assert states.shape == actions.shape == (n_paths, n_steps + 1)
    np.testing.assert_array_equal(states[:, 0], starts)
    S, A = mdp.num_states, mdp.num_actions
    # Transition counts n(s, a, s') from every (s_t, a_t, s_{t+1}).
    flat = (states[:, :-1] * A + actions[:, :-1]) * S + states[:, 1:]
    counts = np.bincount(flat.ravel(), minlength=S * A * S).reshape(S, A, S).astype(float)
    n_sa = counts.sum(-1)
    visited = n_sa >= 100
    assert visited.sum() >= 0.9 * S * A  # the test must actually cover most pairs
    p = mdp.transitions[visited]
    freq = counts[visited] / n_sa[visited][:, None]
    # Each frequency is a binomial proportion given n(s, a): |f - p| <= 5 sd (+ a 1/n continuity margin) fails
    # with probability ~6e-7 per cell, ~1e-3 over all ~2000 cells; the seed is fixed anyway.
    sd = np.sqrt(p * (1 - p) / n_sa[visited][:, None])
    assert np.all(np.abs(freq - p) <= 5 * sd + 1.0 / n_sa[visited][:, None])
    # Impossible transitions never occur.
    assert np.all(counts[mdp.transitions == 0] == 0)
    # Actions: a_t | s_t ~ policy[s_t], the same binomial bound.
    action_counts = np.bincount((states * A + actions).ravel(), minlength=S * A).reshape(S, A).astype(float)
    n_s = action_counts.sum(-1)
    assert np.all(n_s >= 500)
    freq_a = action_counts / n_s[:, None]
    sd_a = np.sqrt(policy * (1 - policy) / n_s[:, None])
    assert np.all(np.abs(freq_a - policy) <= 5 * sd_a + 1.0 / n_s[:, None])


def test_sample_paths_follows_deterministic_policy_exactly() -> None:
    # Deterministic dynamics and policy: the path is fixed; from (0, 0) the greedy path on the sparse 3x3 grid
    # reaches the goal in 4 moves and stays there.
    mdp = make_grid("sparse", 3)
    policy = greedy_policy(value_iteration(mdp.transitions, mdp.rewards, mdp.gamma))
    states, _ = sample_paths(mdp.transitions, policy, np.zeros(3, dtype=int), 6, np.random.default_rng(4))
    assert np.all(states[:, 4:] == 8)
    assert np.all(np.diff(states[:, :5], axis=1) > 0)  # every move is RIGHT (+1) or DOWN (+3)


@pytest.mark.parametrize("entries", [1, 1200, 1 << 30])  # 1 path, 2 paths (6 steps x 100 states each), all
def test_sample_paths_in_chunks_draws_the_same_paths(monkeypatch, entries) -> None:
    """Chunking bounds memory only: one path per chunk, a few per chunk and all at once give the same paths."""
    from mavrl_ppl.envs import rollouts

    mdp = make_tabular("grid_trap")
    policy = np.random.default_rng(1).dirichlet(np.ones(mdp.num_actions), size=mdp.num_states)
    starts = np.random.default_rng(2).integers(mdp.num_states, size=9)
    whole = sample_paths(mdp.transitions, policy, starts, 5, np.random.default_rng(3))
    monkeypatch.setattr(rollouts, "CHUNK_ENTRIES", entries)
    chunked = sample_paths(mdp.transitions, policy, starts, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
