"""The perturbed envs of the transfer experiment: gymnasium's checker, and the dynamics change exactly as stated."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mavrl_ppl.envs.grids import GRID_ACTIONS, make_tabular
from mavrl_ppl.envs.perturbed import (
    ACROBOT_ID,
    LANDER_ID,
    make_perturbed_env,
    perturbed_env,
    perturbed_grid,
    register_perturbed_envs,
)

# Box2D's SWIG module warns on import (builtin types without __module__); turned into an error inside the extension's
# init, that warning crashes the interpreter, so LunarLander needs it ignored (as in tests/experiments/test_experts.py).
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


@pytest.mark.parametrize(("env", "level"), [("grid_trap", 0.3), ("Acrobot-v1", 1.5), ("LunarLander-v3", 10.0)])
def test_env_checker(env: str, level: float) -> None:
    made = make_perturbed_env(env, level)
    check_env(made.unwrapped, skip_render_check=True)
    made.close()


def test_p_rand_zero_is_the_base_grid_exactly() -> None:
    base = make_tabular("grid_trap")
    assert np.array_equal(perturbed_grid("grid_trap", 0.0).transitions, base.transitions)
    assert np.array_equal(perturbed_grid("grid_trap", 0.0).rewards, base.rewards)


def test_p_rand_rows_have_the_stated_probabilities() -> None:
    assert GRID_ACTIONS == ("RIGHT", "UP", "LEFT", "DOWN", "STAY")  # the published R, U, L, D, Stay
    p = 0.4
    base, noisy = make_tabular("grid_trap").transitions, perturbed_grid("grid_trap", p).transitions
    # From an inner cell every action leads to its own neighbour: each row is 1 - p on the intended move's target
    # and p / 4 on each other move's.
    s = 5 * 10 + 5
    targets = base[s].argmax(-1)
    assert len(set(targets)) == 5
    expected = np.full((5, 5), p / 4)
    np.fill_diagonal(expected, 1 - p)
    assert np.allclose(noisy[s][:, targets], expected, atol=1e-15)
    assert np.allclose(noisy.sum(-1), 1.0)
    # In a corner, off-grid moves stay: the start (0, 0) stays w.p. UP + LEFT + STAY mass
    assert noisy[0, 0, 0] == pytest.approx(3 * p / 4)
    # At p_rand 0.8 the executed action is uniformly random whatever is intended: every action's row is the same
    uniform = perturbed_grid("grid_trap", 0.8).transitions
    assert np.allclose(uniform, uniform[:, :1, :], atol=1e-15)
    # The gymnasium id samples from the same tensor
    env = make_perturbed_env("grid_trap", p)
    assert np.array_equal(env.unwrapped.mdp.transitions, noisy)


def test_bad_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="p_rand"):
        perturbed_grid("grid_trap", 1.5)
    with pytest.raises(ValueError, match="asymmetry"):
        perturbed_env("Acrobot-v1", 0.0)
    with pytest.raises(ValueError, match="no perturbation"):
        perturbed_env("CartPole-v1", 0.1)
    with pytest.raises(ValueError, match="gravity"):
        perturbed_env("LunarLander-v3", 5.0, gravity=-13.0)


def _trajectory(env: gym.Env, seed: int, actions: np.ndarray) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:  # env steps: inherent
        obs, _, terminated, truncated, _ = env.step(int(a))
        out.append(obs)
        if terminated or truncated:
            break
    env.close()
    return np.array(out)


def test_acrobot_asymmetry_one_is_stock_and_two_is_not() -> None:
    actions = np.random.default_rng(0).integers(3, size=300)
    stock = _trajectory(gym.make("Acrobot-v1"), 7, actions)
    same = _trajectory(make_perturbed_env("Acrobot-v1", 1.0), 7, actions)
    assert np.array_equal(stock, same)  # bit for bit, every step
    other = _trajectory(make_perturbed_env("Acrobot-v1", 2.0), 7, actions)
    n = min(len(stock), len(other))
    assert np.array_equal(stock[0], other[0]) and not np.allclose(stock[:n], other[:n])
    heavy = make_perturbed_env("Acrobot-v1", 2.0).unwrapped
    assert (heavy.LINK_LENGTH_2, heavy.LINK_MASS_2, heavy.LINK_COM_POS_2) == (2.0, 2.0, 1.0)
    assert (heavy.LINK_MOI_1, heavy.LINK_MOI_2) == (1.0, 8.0)


def test_lander_wind_and_gravity_reach_the_env() -> None:
    register_perturbed_envs()
    env = make_perturbed_env("LunarLander-v3", 15.0, gravity=-11.0)
    inner = env.unwrapped
    assert env.spec.id == LANDER_ID and inner.enable_wind
    assert (inner.wind_power, inner.gravity) == (15.0, -11.0)
    env.reset(seed=0)
    assert tuple(inner.world.gravity) == pytest.approx((0.0, -11.0))
    env.close()
    # ... and through the vector envs PPO retraining and evaluation use
    vec = gym.make_vec(LANDER_ID, num_envs=2, vectorization_mode="sync", **perturbed_env("LunarLander-v3", 5.0).kwargs)
    assert [e.unwrapped.wind_power for e in vec.envs] == [5.0, 5.0]
    vec.close()
    assert gym.spec(ACROBOT_ID).max_episode_steps == gym.spec("Acrobot-v1").max_episode_steps
