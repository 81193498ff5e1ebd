"""Metrics of a learned reward: EPIC against Gleave et al.'s oracle, normalised score and regret by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mavrl_ppl.analysis import (
    canonicalize_reward,
    discounted_value,
    epic_distance,
    evaluate_reward,
    greedy_policy_for,
    normalization_constants,
)
from mavrl_ppl.envs import TabularMDP, make_grid, make_tabular, shape_rewards, uniform_policy

# REFERENCE §2 / Gleave et al. (2021) Table A.2: EPIC on 3x3 gridworlds, gamma 0.99, to 4 decimals.
EPIC_ORACLE = [
    ("sparse", "dense", 0.0),
    ("sparse", "center", 0.75),
    ("sparse", "penalty", 1.0),
    ("sparse", "path", 0.1602),
    ("sparse", "cliff", 0.3676),
    ("center", "penalty", 0.6614),
    ("center", "path", 0.7071),
    ("center", "cliff", 0.6692),
    ("penalty", "path", 0.9871),
    ("penalty", "cliff", 0.9300),
    ("path", "cliff", 0.2672),
]

# REFERENCE §2 normalisers of grid_sparse (10x10, gamma 0.95): optimal and uniform-random start values.
SPARSE_V_OPT, SPARSE_V_UNIF = 6.7387150060807945, -1.9949247171253233


@pytest.mark.parametrize(("a", "b", "expected"), EPIC_ORACLE)
def test_epic_reproduces_gleave_table(a: str, b: str, expected: float) -> None:
    r_a = make_grid(a, 3, gamma=0.99).rewards
    r_b = make_grid(b, 3, gamma=0.99).rewards
    # The table is rounded to 4 decimals: a correct value lies within 5e-5; 1e-4 leaves room for nothing else.
    assert epic_distance(r_a, r_b, 0.99) == pytest.approx(expected, abs=1e-4)
    assert epic_distance(r_b, r_a, 0.99) == pytest.approx(expected, abs=1e-4)  # symmetric


def test_epic_closed_forms() -> None:
    # State-only rewards R(s) canonicalise to gamma (R(s') - mean R), so EPIC compares the state maps' Pearson
    # correlation. Two indicators of different cells among 9: rho = -1/8 -> sqrt(9/16) = 0.75 exactly;
    # centre vs minus-goal indicator: rho = +1/8 -> sqrt(7/16).
    r = {k: make_grid(k, 3, gamma=0.99).rewards for k in ("sparse", "center", "penalty")}
    assert epic_distance(r["sparse"], r["center"], 0.99) == pytest.approx(0.75, abs=1e-12)
    assert epic_distance(r["center"], r["penalty"], 0.99) == pytest.approx(np.sqrt(7 / 16), abs=1e-12)
    assert epic_distance(r["sparse"], -r["sparse"], 0.99) == pytest.approx(1.0, abs=1e-12)


def test_canonicalisation_by_hand() -> None:
    # A reward that depends only on s' (and is otherwise arbitrary) on S = 2, A = 1:
    # R(s, a, s') = x[s, s']; m(s) = mean_s' x[s, s']; M = mean_s m(s).
    x = np.array([[1.0, 3.0], [-2.0, 6.0]])
    gamma = 0.5
    m = x.mean(1)
    want = x + gamma * m[None, :] - m[:, None] - gamma * m.mean()
    np.testing.assert_allclose(canonicalize_reward(x[:, None, :], gamma)[:, 0, :], want, atol=1e-15)


def test_epic_invariant_to_shaping_and_positive_rescaling() -> None:
    mdp = make_grid("trap", 6, p_rand=0.1, gamma=0.9)
    rng = np.random.default_rng(0)
    learned = rng.normal(size=mdp.rewards.shape)
    base = epic_distance(mdp.rewards, learned, mdp.gamma)
    assert 0.1 < base < 0.9  # a random reward is neither equivalent nor opposite
    for _ in range(3):
        potential = rng.normal(scale=5.0, size=mdp.num_states)
        scale = rng.uniform(0.1, 10.0)
        shaped = scale * shape_rewards(mdp.rewards, potential, mdp.gamma)
        # Exact invariances: only float round-off remains (1e-12 is ~1e4 ulps of the [0, 1] result).
        assert epic_distance(mdp.rewards, shaped, mdp.gamma) == pytest.approx(0.0, abs=1e-12)
        assert epic_distance(shaped, learned, mdp.gamma) == pytest.approx(base, abs=1e-12)
    # A constant offset is a potential shaping too (phi = c / (gamma - 1)); a negative scale is no invariance.
    assert epic_distance(mdp.rewards, mdp.rewards + 3.0, mdp.gamma) == pytest.approx(0.0, abs=1e-12)
    assert epic_distance(mdp.rewards, -mdp.rewards, mdp.gamma) == pytest.approx(1.0, abs=1e-12)


def test_epic_batched_over_draws_equals_loop() -> None:
    mdp = make_grid("cliff", 4, gamma=0.95)
    draws = np.random.default_rng(1).normal(size=(2, 3, *mdp.rewards.shape)) + mdp.rewards
    batched = epic_distance(mdp.rewards, draws, mdp.gamma)
    assert batched.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = epic_distance(mdp.rewards, draws[i, j], mdp.gamma)
            assert batched[i, j] == pytest.approx(one, abs=1e-14)


def test_epic_of_a_constant_reward_is_undefined() -> None:
    mdp = make_grid("sparse", 3)
    assert np.isnan(epic_distance(mdp.rewards, np.full(mdp.rewards.shape, 2.0), mdp.gamma))
    assert np.isnan(evaluate_reward(mdp, np.zeros(mdp.rewards.shape))["epic"])


def _bandit(rewards: list[float], gamma: float) -> TabularMDP:
    """One state whose actions all loop back, paying ``rewards[a]``."""
    A = len(rewards)
    r = np.array(rewards, dtype=float).reshape(1, A, 1)
    return TabularMDP(
        name="bandit",
        transitions=np.ones((1, A, 1)),
        rewards=r,
        initial=np.ones(1),
        gamma=gamma,
        reward_groups=np.arange(A).reshape(1, A, 1),
        group_rewards=r.reshape(-1).copy(),
    )


def test_score_and_regret_on_a_bandit_by_hand() -> None:
    # Rewards 0, 1, 2 forever at gamma 0.9: v_opt = 2 / 0.1 = 20, v_uniform = 1 / 0.1 = 10.
    mdp = _bandit([0.0, 1.0, 2.0], 0.9)
    v_opt, v_unif = normalization_constants(mdp)
    assert (v_opt, v_unif) == pytest.approx((20.0, 10.0), abs=1e-9)
    true = evaluate_reward(mdp, mdp.rewards)
    assert true["normalized_score"] == pytest.approx(100.0, abs=1e-9)
    assert true["regret"] == pytest.approx(0.0, abs=1e-9)
    assert true["discounted_value"] == pytest.approx(20.0, abs=1e-9)
    # A learned reward preferring the middle action: v = 10 = v_uniform, so the score is exactly 0, regret 10.
    middle = evaluate_reward(mdp, np.array([0.0, 5.0, 1.0]).reshape(1, 3, 1))
    assert middle["normalized_score"] == pytest.approx(0.0, abs=1e-9)
    assert middle["regret"] == pytest.approx(10.0, abs=1e-9)
    # Preferring the worst action: v = 0 -> score 100 (0 - 10) / 10 = -100.
    worst = evaluate_reward(mdp, np.array([1.0, 0.0, 0.0]).reshape(1, 3, 1))
    assert worst["normalized_score"] == pytest.approx(-100.0, abs=1e-9)
    assert worst["regret"] == pytest.approx(20.0, abs=1e-9)


@pytest.mark.parametrize("name", ["grid_cliff", "grid_sparse", "grid_trap"])
def test_true_reward_scores_100_with_zero_regret(name: str) -> None:
    mdp = make_tabular(name)
    metrics = evaluate_reward(mdp, mdp.rewards)
    assert set(metrics) == {"normalized_score", "regret", "discounted_value", "epic"}
    assert metrics["normalized_score"] == pytest.approx(100.0, abs=1e-9)
    assert metrics["regret"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["epic"] == pytest.approx(0.0, abs=1e-12)
    # A positive rescaling of the posterior mean's group rewards changes nothing.
    scaled = mdp.with_group_rewards(3.0 * mdp.group_rewards + 1.0)
    assert evaluate_reward(mdp, scaled)["normalized_score"] == pytest.approx(100.0, abs=1e-9)


def test_score_of_staying_at_the_start_on_sparse() -> None:
    # A learned reward paying only at the start cell: its greedy policy stays at (0, 0) forever, which under
    # the true sparse reward (-0.1 per step) is worth -0.1 / (1 - 0.95) = -2 exactly. Normalise with
    # REFERENCE's values.
    mdp = make_tabular("grid_sparse")
    group = np.zeros(mdp.num_groups)
    group[0] = 1.0
    learned = mdp.with_group_rewards(group)
    policy = greedy_policy_for(mdp, learned)
    # UP, LEFT and STAY all keep the agent at the corner; whichever wins the tie, it stays.
    assert (policy[0] @ mdp.transitions[0])[0] == 1.0
    metrics = evaluate_reward(mdp, learned)
    v = -0.1 / (1 - 0.95)
    # REFERENCE's constants are good to 1e-6 (tested in tests/envs), which bounds the score error by ~1e-4 %.
    assert metrics["discounted_value"] == pytest.approx(v, abs=1e-9)
    assert metrics["regret"] == pytest.approx(SPARSE_V_OPT - v, abs=1e-6)
    expected_score = 100 * (v - SPARSE_V_UNIF) / (SPARSE_V_OPT - SPARSE_V_UNIF)
    assert metrics["normalized_score"] == pytest.approx(expected_score, abs=1e-4)


def test_discounted_value() -> None:
    mdp = make_tabular("grid_sparse")
    assert discounted_value(mdp, uniform_policy(mdp)) == pytest.approx(SPARSE_V_UNIF, abs=1e-6)
    # Under a reward of 1 everywhere any policy is worth 1 / (1 - gamma) = 20.
    ones = np.ones(mdp.rewards.shape)
    assert discounted_value(mdp, uniform_policy(mdp), ones) == pytest.approx(20.0, abs=1e-9)
    with pytest.raises(ValueError):
        discounted_value(mdp, np.ones((3, 5)) / 5)
    with pytest.raises(ValueError):
        evaluate_reward(mdp, mdp.group_rewards)  # group rewards must be broadcast first


def test_importing_analysis_does_not_import_torch_or_jax() -> None:
    code = "import sys, mavrl_ppl.analysis; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
