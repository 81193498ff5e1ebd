"""Evaluation by retraining: the learned-reward wrapper, PPO on it, true-return evaluation, and the control command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mavrl_ppl.analysis.retrain import LearnedRewardWrapper, evaluate_true_return, retrain_ppo

ROOT = Path(__file__).resolve().parents[2]


def linear_reward(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """A stand-in learned reward that depends on both the observation and the action."""
    return obs @ np.array([0.5, -1.0, 2.0, 0.25]) + 0.3 * action


class ConstantPolicy:
    def __init__(self, action: int) -> None:
        self.action = action

    def predict(self, obs, deterministic=True):
        return np.full(len(obs), self.action), None


# gymnasium's checker warns whenever the env it checks is a wrapper; here the wrapper is exactly what is checked.
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version:UserWarning")
# CartPole's own observation space has infinite bounds (velocities); the checker flags that, not our wrapper.
@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is.*infinity:UserWarning")
def test_wrapper_passes_the_env_checkers():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(LearnedRewardWrapper(gym.make("CartPole-v1").unwrapped, linear_reward), skip_render_check=True)
    sb3_check_env(LearnedRewardWrapper(gym.make("CartPole-v1"), linear_reward, offset=1.0), warn=True)


def test_wrapper_returns_the_learned_reward_of_the_state_acted_in():
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), linear_reward, offset=0.75)
    obs, _ = env.reset(seed=3)
    for action in [0, 1, 1, 0, 1]:
        expected = linear_reward(obs[None].astype(np.float32), np.array([action]))[0] - 0.75
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward == pytest.approx(expected, rel=1e-6)
        assert info["true_reward"] == 1.0  # CartPole's own reward stays visible for logging
        assert not (terminated or truncated)
    with pytest.raises(gym.error.ResetNeeded):
        LearnedRewardWrapper(gym.make("CartPole-v1"), linear_reward).step(0)


def test_true_return_evaluation_counts_episodes():
    returns = evaluate_true_return(ConstantPolicy(0), "CartPole-v1", 21, seed=0, num_envs=4)
    assert returns.shape == (21,)
    assert (returns >= 8).all() and (returns <= 12).all()  # always pushing left topples the pole in ~9 steps
    np.testing.assert_array_equal(returns, evaluate_true_return(ConstantPolicy(0), "CartPole-v1", 21, seed=0,
                                                                num_envs=4))


@pytest.mark.slow
def test_ppo_learns_the_learned_reward_not_the_true_one():
    """A learned reward that pays for falling fast: PPO must follow it (the true reward plays no part)."""
    def reward_fn(obs, action):
        return np.abs(obs[:, 2]) * 10.0 - 1.0  # big tilt good, every step costs

    model = retrain_ppo("CartPole-v1", reward_fn, 4096, seed=0)
    returns = evaluate_true_return(model, "CartPole-v1", 10, seed=1)
    assert returns.mean() < 30  # it learned to end episodes, the opposite of CartPole's true goal


def test_cartpole_command_end_to_end(tmp_path):
    """From the installed package (run outside the source tree) with the progress bars ON: SB3's PPO bar needs rich,
    which the README's install must bring (a fresh install once failed here with an ImportError)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mavrl_ppl.fit", "--env", "CartPole-v1", "--feedback",
           "pref=16,demo=1,rating=16,stop=16", "--max-steps", "20", "--eval-every", "10",
           "--ppo-timesteps", "2000", "--eval-episodes", "5", "--num-posterior-samples", "50",
           "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mean_return", "normalized_score", "ppo_timesteps", "simulate_seconds", "fit_seconds",
                "retrain_seconds", "evaluate_seconds", "total_seconds"):
        assert math.isfinite(metrics[key]), key
    assert metrics["ppo_timesteps"] == 2000 and metrics["env"] == "CartPole-v1"
    assert metrics["behaviour_beta"] == [0.0, 1.0]  # the env's query policies, read back from the simulated data
    assert 8 <= metrics["mean_return"] <= 500
    config = json.loads((out / "config.json").read_text())
    assert config["feedback"] == "pref=16,demo=1,rating=16,stop=16"
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["reward"].dims == ("chain", "draw", "point")
    assert idata.posterior["reward"].shape[:2] == (1, 50)
    assert np.isfinite(idata.posterior["reward"].values).all()
    assert (out / "feedback.nc").exists()
    # The learned reward is kept (reward_model.pt) and reloads as the function PPO was trained on
    from mavrl_ppl.runs import load_run

    loaded = load_run(out)
    obs = idata.points["obs"].values[:7]
    reward = loaded.reward_function()(obs, idata.points["action"].values[:7])
    assert reward.shape == (7,) and np.isfinite(reward).all()
    assert loaded.q_function()(obs).shape == (7, 2)


def test_control_command_rejects_bad_input(tmp_path):
    cmd = [sys.executable, "-m", "mavrl_ppl.fit", "--env", "CartPole-v1", "--encoder-input", "state",
           "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["error: control runs need encoder_input state_action, got state"]
    assert not (tmp_path / "run").exists() and not list(tmp_path.iterdir())  # no temporary directory left behind
