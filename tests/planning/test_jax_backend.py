"""Q* in JAX (the NUTS model's planner): exact against numpy value iteration, its gradient against finite
differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.planning import jax_backend as planning
from mavrl_ppl.planning import value_iteration

# (env, p_rand): deterministic grids use pointer doubling, p_rand > 0 the dense linear solve; the chain has
# another action set and discount.
CASES = [("grid_trap", 0.0), ("grid_cliff", 0.0), ("grid_trap", 0.2), ("grid_sparse", 0.05), ("chain", 0.0)]


@pytest.fixture(autouse=True)
def _x64(x64):
    """Every test here runs JAX in float64."""


def setup(env: str, p_rand: float, size: int | None = None):
    mdp = make_tabular(env, p_rand=p_rand, size=size) if env != "chain" else make_tabular("chain", size=6)
    dynamics = planning.make_dynamics(mdp.transitions)
    groups = planning.successor_groups(dynamics, mdp.reward_groups)
    return mdp, dynamics, groups


@pytest.mark.parametrize(("env", "p_rand"), CASES)
def test_exact_q_star_matches_numpy_value_iteration(env, p_rand):
    mdp, dynamics, groups = setup(env, p_rand, size=6)
    q_fn = jax.jit(lambda t: planning.q_star_exact(planning.expected_reward(t, dynamics, groups), dynamics, mdp.gamma))
    rng = np.random.default_rng(0)
    # Standard-normal rewards (the prior), a scaled-up one, the true reward, and an all-equal one (all actions tie).
    thetas = [*rng.normal(size=(4, mdp.num_groups)), 5.0 * rng.normal(size=mdp.num_groups), mdp.group_rewards]
    thetas.append(np.full(mdp.num_groups, 0.3))
    for theta in thetas:
        expected = value_iteration(mdp.transitions, theta[mdp.reward_groups], mdp.gamma, tol=1e-13)
        # Both are float64 solutions of the same fixed point; 1e-8 leaves 1e5 x room over the measured 2e-13.
        np.testing.assert_allclose(np.asarray(q_fn(jnp.asarray(theta))), expected, rtol=0, atol=1e-8)


def test_expected_reward_is_the_transition_average():
    mdp, dynamics, groups = setup("grid_trap", 0.2, size=5)
    theta = np.random.default_rng(1).normal(size=mdp.num_groups)
    expected = np.einsum("sat,sat->sa", mdp.transitions, theta[mdp.reward_groups])
    np.testing.assert_allclose(
        np.asarray(planning.expected_reward(jnp.asarray(theta), dynamics, groups)), expected, atol=1e-14
    )


@pytest.mark.parametrize(("env", "p_rand"), [("grid_trap", 0.0), ("grid_trap", 0.2)])
def test_sweeps_scheme_is_within_its_bound(env, p_rand):
    mdp, dynamics, groups = setup(env, p_rand, size=5)
    tol = 1e-6
    sweeps = planning.sweeps_for_tolerance(mdp.gamma, tol, reward_bound=5.0)
    theta = np.random.default_rng(2).normal(size=mdp.num_groups)  # |theta| < 5 for this seed
    assert np.abs(theta).max() < 5.0
    q = planning.q_star_sweeps(
        planning.expected_reward(jnp.asarray(theta), dynamics, groups), dynamics, mdp.gamma, sweeps
    )
    expected = value_iteration(mdp.transitions, theta[mdp.reward_groups], mdp.gamma, tol=1e-13)
    assert np.abs(np.asarray(q) - expected).max() <= tol


@pytest.mark.parametrize(("env", "p_rand"), [("grid_trap", 0.0), ("grid_trap", 0.2), ("chain", 0.0)])
def test_gradient_of_q_star_matches_finite_differences(env, p_rand):
    """Q* is piecewise linear in the reward, so central differences are exact up to round-off unless a step crosses
    a policy switch; with eps = 1e-6 and N(0, 1) rewards none does (the optimal policy at theta +- eps is checked)."""
    mdp, dynamics, groups = setup(env, p_rand, size=5)
    rng = np.random.default_rng(3)
    weights = jnp.asarray(rng.normal(size=(mdp.num_states, mdp.num_actions)))

    def objective(theta):
        q = planning.q_star_exact(planning.expected_reward(theta, dynamics, groups), dynamics, mdp.gamma)
        return jnp.sum(weights * q) + 0.1 * jnp.sum(q**2)  # a nonlinear read-out, as the likelihoods are

    value_and_grad = jax.jit(jax.value_and_grad(objective))
    f = jax.jit(objective)
    policy = jax.jit(
        lambda t: planning.optimal_policy(planning.expected_reward(t, dynamics, groups), dynamics, mdp.gamma)[0]
    )
    theta = jnp.asarray(rng.normal(size=mdp.num_groups))
    _, grad = value_and_grad(theta)
    eps = 1e-6
    basis = np.eye(mdp.num_groups)
    fd = np.empty(mdp.num_groups)
    for i in range(mdp.num_groups):
        up, down = theta + eps * basis[i], theta - eps * basis[i]
        assert np.array_equal(policy(up), policy(down)), "a finite-difference step crossed a policy switch"
        fd[i] = (float(f(up)) - float(f(down))) / (2 * eps)
    # Round-off of the difference quotient: ~1e-16 * |f| / eps, |f| < 1e4 here -> ~1e-6; allow 1e-5 relative.
    scale = max(1.0, float(np.abs(fd).max()))
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=0, atol=1e-5 * scale)


def test_doubling_horizon_reaches_round_off():
    for gamma in (0.5, 0.9, 0.95, 0.99, 0.999):
        steps = planning.doubling_steps(gamma)
        assert gamma ** (2**steps) < 1e-17
        assert steps == 0 or gamma ** (2 ** (steps - 1)) >= 1e-17  # and not more steps than needed


def test_policy_iteration_stops_on_ties():
    """An all-zero reward makes every action optimal everywhere: policy iteration must not cycle."""
    mdp, dynamics, _ = setup("grid_trap", 0.2, size=4)
    policy, rounds = planning.optimal_policy(jnp.zeros((mdp.num_states, mdp.num_actions)), dynamics, mdp.gamma)
    assert int(rounds) == 1
    assert policy.shape == (mdp.num_states,)
