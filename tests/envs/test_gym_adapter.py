"""The gymnasium adapter: API conformance, sampling from exact dynamics, rewards, seeding, registration."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mavrl_ppl.envs import TabularEnv, make_chain, make_grid, register_tabular_envs

RIGHT, UP, LEFT, DOWN, STAY = range(5)


@pytest.mark.parametrize("render_mode", [None, "ansi"])
@pytest.mark.parametrize("terminate_at_goal", [False, True])
def test_check_env_passes(render_mode: str | None, terminate_at_goal: bool) -> None:
    # pytest turns every gymnasium checker warning into an error, so passing means no warnings at all.
    env = TabularEnv(make_grid("trap", 5, p_rand=0.1), render_mode=render_mode, terminate_at_goal=terminate_at_goal)
    check_env(env)
    check_env(TabularEnv(make_chain(4), render_mode=render_mode))


def test_registered_ids_make_and_pass_check_env() -> None:
    ids = register_tabular_envs()
    assert register_tabular_envs() == ids  # idempotent (re-registering would warn, i.e. fail here)
    assert "mavrl_ppl/grid_trap-v0" in ids and "mavrl_ppl/chain-v0" in ids
    env = gymnasium.make("mavrl_ppl/grid_trap-v0", p_rand=0.1)
    check_env(env.unwrapped)
    assert env.unwrapped.mdp.settings == {"size": 10, "p_rand": 0.1, "gamma": 0.95}
    assert env.observation_space == gymnasium.spaces.Discrete(100)
    assert env.action_space == gymnasium.spaces.Discrete(5)
    # The registered limit is gymnasium's TimeLimit, and it can be overridden at make time.
    env = gymnasium.make("mavrl_ppl/grid_sparse-v0", max_episode_steps=7)
    env.reset(seed=0)
    for t in range(7):
        _, _, terminated, truncated, _ = env.step(STAY)
        assert not terminated
        assert truncated == (t == 6)


def test_reset_samples_initial_and_step_returns_true_reward() -> None:
    mdp = make_grid("cliff", 4, p_rand=0.5)
    env = TabularEnv(mdp)
    obs, info = env.reset(seed=0)
    assert obs == 0 and info == {}  # the paper's grids start at (0, 0) with probability one
    rng = np.random.default_rng(0)
    state = int(obs)
    for _ in range(500):
        action = int(rng.integers(5))
        next_state, reward, terminated, truncated, _ = env.step(action)
        assert reward == mdp.rewards[state, action, next_state]
        assert mdp.transitions[state, action, next_state] > 0
        assert not terminated
        state = int(next_state)
        if truncated:
            state = int(env.reset()[0])


def test_reset_draws_from_a_non_degenerate_initial_distribution() -> None:
    base = make_chain(3)
    initial = np.array([0.2, 0.5, 0.3])
    mdp = type(base)(**{**base.__dict__, "initial": initial})
    env = TabularEnv(mdp)
    env.reset(seed=1)
    n = 6000
    starts = np.array([env.reset()[0] for _ in range(n)])
    freq = np.bincount(starts, minlength=3) / n
    # Binomial sd <= sqrt(0.25 / 6000) = 0.0065; 5 sd = 0.032.
    np.testing.assert_allclose(freq, initial, atol=5 * np.sqrt(0.25 / n))


def test_step_honours_p_rand() -> None:
    # From the top-left corner of a 3x3 grid with p_rand = 0.4 and action RIGHT: the intended move (to
    # state 1) w.p. 0.6, DOWN (to 3) w.p. 0.1, and UP / LEFT / STAY keep the agent in place: 0.3.
    p_rand = 0.4
    env = TabularEnv(make_grid("sparse", 3, p_rand=p_rand))
    n = 20_000
    env.reset(seed=123)
    outcomes = np.empty(n, dtype=int)
    for i in range(n):
        env.reset(options={"state": 0})
        outcomes[i] = env.step(RIGHT)[0]
    freq = np.bincount(outcomes, minlength=9) / n
    expected = np.zeros(9)
    expected[[1, 3, 0]] = [1 - p_rand, p_rand / 4, 3 * p_rand / 4]
    # Binomial proportions from 20000 draws: sd = sqrt(p(1-p)/n) <= 0.0035; a 5 sd bound fails w.p. ~6e-7.
    sd = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 5 * sd)
    assert freq[[2, 4, 5, 6, 7, 8]].sum() == 0  # unreachable in one step


def test_seeding_is_reproducible() -> None:
    def rollout(seed: int) -> list[tuple[int, float]]:
        env = TabularEnv(make_grid("trap", 5, p_rand=0.3), max_episode_steps=50)
        obs, _ = env.reset(seed=seed)
        out = [(int(obs), 0.0)]
        for t in range(50):
            obs, reward, _, _, _ = env.step(t % 5)
            out.append((int(obs), reward))
        return out

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)  # p_rand = 0.3 over 50 steps: identical paths are practically impossible


def test_truncation_and_goal_termination() -> None:
    mdp = make_grid("sparse", 2)  # states 0 1 / 2 3, goal 3
    env = TabularEnv(mdp, max_episode_steps=3)
    env.reset(seed=0)
    assert env.step(RIGHT)[2:4] == (False, False)
    assert env.step(DOWN)[2:4] == (False, False)  # enters the goal: no termination by default
    assert env.step(STAY)[2:4] == (False, True)  # third step: truncated
    env = TabularEnv(mdp, terminate_at_goal=True, max_episode_steps=None)
    env.reset(seed=0)
    assert env.step(RIGHT)[2] is False
    state, reward, terminated, truncated, _ = env.step(DOWN)
    assert (state, terminated, truncated) == (3, True, False)
    assert reward == mdp.rewards[1, DOWN, 3] == -0.1  # the reward of the state being left


def test_ansi_render_shows_agent_and_goal() -> None:
    env = TabularEnv(make_grid("trap", 5), render_mode="ansi")
    env.reset(seed=0)
    env.step(DOWN)
    # trap_map(5): -4 blocks at rows/cols {1, 2} and {3, 4} (round(0.2 * 5), round(0.6 * 5)), goal +1 at
    # (4, 4); one DOWN from (0, 0) puts the agent at (1, 0).
    assert env.render() == ".....\nAxxxx\n.xxxx\n.xxxx\n.xxxG\n"
    assert TabularEnv(make_grid("trap", 5)).render() is None


def test_invalid_inputs() -> None:
    env = TabularEnv(make_grid("sparse", 3))
    with pytest.raises(RuntimeError):
        env.step(0)
    env.reset(seed=0)
    for bad_action in (5, -1, 1.5):
        with pytest.raises(ValueError):
            env.step(bad_action)
    assert env.step(np.int64(1))[0] in range(9)  # numpy integers are fine (SB3 passes them)
    for bad_state in (9, 0.5):
        with pytest.raises(ValueError):
            env.reset(options={"state": bad_state})
    with pytest.raises(ValueError):
        TabularEnv(make_grid("sparse", 3), render_mode="human")
