"""Evaluation by retraining: PPO on a learned reward, then the TRUE return of the final policy.

- :class:`LearnedRewardWrapper` replaces a gymnasium env's reward by a learned ``r(obs, action)`` (the posterior-mean
  reward); the true reward stays visible in ``info["true_reward"]`` for logging only.
- :func:`retrain_ppo` trains SB3 PPO on the wrapped env for a fixed budget and returns the FINAL policy: no checkpoint
  is ever chosen by the true reward (REFERENCE §5).
- :func:`evaluate_true_return` measures a policy's undiscounted true return over many episodes on a gymnasium vector
  env.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: PPO hyper-parameters per env: rl-baselines3-zoo's ``ppo.yml`` (linear schedules written out as callables in
#: :func:`_ppo_kwargs`), with the zoo's ``n_envs``. One documented set, never tuned on the true return.
PPO_SETTINGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                    "ent_coef": 0.0, "learning_rate": ("linear", 1e-3), "clip_range": ("linear", 0.2)},
    "Acrobot-v1": {"n_envs": 16, "n_steps": 256, "batch_size": 64, "gae_lambda": 0.94, "gamma": 0.99, "n_epochs": 4,
                   "ent_coef": 0.0, "learning_rate": 3e-4, "clip_range": 0.2},
    "LunarLander-v3": {"n_envs": 16, "n_steps": 1024, "batch_size": 64, "gae_lambda": 0.98, "gamma": 0.999,
                       "n_epochs": 4, "ent_coef": 0.01, "learning_rate": 3e-4, "clip_range": 0.2},
}


class LearnedRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A gymnasium env whose reward is a learned ``reward_fn(obs, action) - offset`` of the observation the action
    was taken in; everything else (observations, termination, truncation) is the env's own.

    Args:
        env: the env to wrap (discrete actions).
        reward_fn: ``(obs (N, obs_dim), action (N,)) -> (N,)`` learned reward, vectorised over rows.
        offset: subtracted from every reward. A learned reward is identified only up to a shift, but an episode's
            end is not shift-invariant; with ``offset`` = the learned reward of the absorbing state that an
            episode's end leads to, the episodic return differs from the continuing one by a constant, so PPO's
            optimum is that of the continuing task the reward was learned for (see ``envs.control``).
    """

    def __init__(self, env: gym.Env, reward_fn: RewardFn, offset: float = 0.0) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, reward_fn=reward_fn, offset=offset)
        gym.Wrapper.__init__(self, env)
        self.reward_fn = reward_fn
        self.offset = float(offset)
        self._last_obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = np.asarray(obs)
        return obs, info

    def step(self, action):
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        learned = self.reward_fn(self._last_obs[None].astype(np.float32), np.asarray([action], dtype=np.int64))
        self._last_obs = np.asarray(obs)
        info = {**info, "true_reward": float(true_reward)}
        return obs, float(np.asarray(learned).reshape(-1)[0]) - self.offset, terminated, truncated, info


def _schedule(value: Any) -> Any:
    if isinstance(value, tuple) and value[0] == "linear":
        start = float(value[1])
        return lambda progress_remaining: progress_remaining * start
    return value


def retrain_ppo(
    env_id: str,
    reward_fn: RewardFn,
    timesteps: int,
    seed: int,
    *,
    offset: float = 0.0,
    progress: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    settings_of: str | None = None,
):
    """Train SB3 PPO (MlpPolicy, :data:`PPO_SETTINGS`) on ``env_id`` with the learned reward; return the final model.

    Args:
        env_id: gymnasium id (one of :data:`PPO_SETTINGS`, or see ``settings_of``; other ids use SB3's PPO defaults
            with 8 envs).
        reward_fn: the learned reward, see :class:`LearnedRewardWrapper`.
        timesteps: PPO environment steps (summed over its envs).
        seed: seeds PPO and its envs.
        offset: see :class:`LearnedRewardWrapper`.
        progress: show SB3's progress bar.
        env_kwargs: keyword arguments of ``gymnasium.make(env_id)`` (e.g. a perturbed env's level).
        settings_of: the id whose :data:`PPO_SETTINGS` to use (default ``env_id``; a perturbed env uses its base
            env's, e.g. ``Acrobot-v1``).
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    settings = dict(PPO_SETTINGS.get(settings_of or env_id, {"n_envs": 8}))
    n_envs = settings.pop("n_envs")
    kwargs = {k: _schedule(v) for k, v in settings.items()}
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs,
                        wrapper_class=LearnedRewardWrapper, wrapper_kwargs={"reward_fn": reward_fn, "offset": offset})
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **kwargs)
    model.learn(total_timesteps=int(timesteps), progress_bar=progress)
    venv.close()
    return model


def evaluate_true_return(policy, env_id: str, episodes: int, seed: int, *, num_envs: int = 16,
                         env_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """Undiscounted TRUE returns of ``policy``'s deterministic actions over ``episodes`` complete episodes.

    Episodes run on a gymnasium vector env (same-step autoreset); env ``j`` contributes a fixed quota of episodes
    (``episodes // num_envs``, one more for the first ``episodes % num_envs``), so short episodes are not
    over-represented.

    Args:
        policy: anything with SB3's ``predict(obs_batch, deterministic=True) -> (actions, state)``.
        env_id: gymnasium id.
        episodes: number of episodes.
        seed: env ``j`` is reset with seed ``seed + j``; later episodes follow from its generator.
        num_envs: parallel envs (capped at ``episodes``).
        env_kwargs: keyword arguments of ``gymnasium.make(env_id)``.

    Returns:
        ``(episodes,)`` returns, ordered by env and then episode.
    """
    from gymnasium.vector import AutoresetMode

    n = max(1, min(num_envs, episodes))
    quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
    envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **(env_kwargs or {}))
    obs, _ = envs.reset(seed=[seed + j for j in range(n)])
    done = np.zeros(n, dtype=np.int64)
    running = np.zeros(n)
    returns = np.full((n, int(quota.max())), np.nan)
    while (done < quota).any():
        actions, _ = policy.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = envs.step(actions)
        running += reward
        ended = (terminated | truncated) & (done < quota)
        rows = np.flatnonzero(ended)
        returns[rows, done[rows]] = running[rows]
        done += ended
        running[terminated | truncated] = 0.0
    envs.close()
    return returns[np.arange(quota.max())[None, :] < quota[:, None]]
