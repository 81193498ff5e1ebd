"""A simulated teacher on a gymnasium control env (REFERENCE §3): an expert Q-network's Boltzmann-rational view.

:class:`ControlTeacher` implements the :class:`~mavrl_ppl.feedback.teachers.Teacher` protocol, so
:func:`~mavrl_ppl.feedback.data.simulate_feedback` and every type's ``simulate`` work unchanged:

- ``segments``: windows of the env's behaviour streams (uniform random for ``behaviour_beta = 0``, the paper's
  setting), with absorbing continuation after termination (see :mod:`mavrl_ppl.envs.control`);
- ``episodes``: whole episodes of ``softmax(beta * Q)``, padded;
- ``reward``: the env's own reward of each step (0 in the absorbing state) — kept beside the segments (never in
  the data set);
- ``q``: the expert's Q-values ``Q(obs, .)``; zero in the absorbing state (every action is equally good there).

The expert is any callable ``obs (N, obs_dim) -> Q (N, A)``; :func:`expert_q_function` wraps a stable-baselines3
DQN's ``q_net`` (duck-typed: this module never imports stable-baselines3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mavrl_ppl.envs.control import (
    boltzmann_policy_fn,
    control_spec,
    cut_segments,
    first_episodes,
    mixture_policy,
    rollout_stream,
)

QFunction = Callable[[np.ndarray], np.ndarray]


class ControlSegments(dict):
    """Segment arrays (a plain dict of the data variables) that also carry their true per-step reward.

    The reward is an attribute, not an item, so the feedback data set built from the items never contains it.
    """

    true_reward: np.ndarray


def expert_q_function(model) -> QFunction:
    """``obs -> Q(obs, .)`` of an SB3 DQN's online ``q_net`` (CPU, no gradients), vectorised over rows."""
    import torch

    q_net = model.q_net

    def q_fn(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(obs, np.float32).reshape(-1, np.shape(obs)[-1]))
            q = q_net(x).double().numpy()
        return q.reshape(*np.shape(obs)[:-1], q.shape[-1])

    return q_fn


class ControlTeacher:
    """A Boltzmann-rational teacher on a control env, judging by the env's reward and acting by an expert's Q.

    Args:
        env_id: one of :data:`mavrl_ppl.envs.control.CONTROL_ENVS`.
        q_fn: the expert's action values, e.g. ``expert_q_function(mavrl_ppl.experiments.experts.load_expert(env_id))``
            (loading a DQN needs stable-baselines3, which only ``experiments`` imports).
        behaviour_beta: rationality of the behaviour policy of queried segments; a sequence mixes policies over the
            stream's envs (env ``m`` uses ``behaviour_beta[m % len]``). 0 = uniform random (the paper's). Default:
            the env's setting (``ControlEnvSpec.behaviour_beta``).
        stream_envs: parallel envs of a behaviour stream (default: the env's setting).
        stream_steps: steps per behaviour stream (default: the env's setting).
    """

    def __init__(
        self,
        env_id: str,
        q_fn: QFunction,
        *,
        behaviour_beta: float | Sequence[float] | None = None,
        stream_envs: int | None = None,
        stream_steps: int | None = None,
    ) -> None:
        import gymnasium as gym

        self.spec = control_spec(env_id)
        self.env_id = env_id
        self.q_fn = q_fn
        probe = gym.make(env_id)
        self.num_actions = int(probe.action_space.n)
        self.obs_dim = int(probe.observation_space.shape[0])
        probe.close()
        self.gamma = self.spec.gamma
        if behaviour_beta is None:
            behaviour_beta = self.spec.behaviour_beta
        betas = (behaviour_beta,) if np.isscalar(behaviour_beta) else tuple(behaviour_beta)
        self.behaviour_beta = tuple(float(b) for b in betas)
        self.stream_envs = stream_envs or self.spec.stream_envs
        self.stream_steps = stream_steps or self.spec.stream_steps
        self.attrs = {
            "env": env_id,
            "gamma": float(self.gamma),
            "num_actions": self.num_actions,
            "behaviour_beta": list(self.behaviour_beta),
        }

    def _policy(self, beta: float):
        return boltzmann_policy_fn(self.q_fn, beta, self.num_actions)

    @staticmethod
    def _wrap(arrays: dict[str, np.ndarray]) -> ControlSegments:
        reward = arrays.pop("reward")
        segments = ControlSegments(arrays)
        segments.true_reward = reward
        return segments

    def segments(self, shape: tuple[int, ...], length: int, rng: np.random.Generator) -> ControlSegments:
        """Windows of ``length`` steps from fresh behaviour streams (:func:`mavrl_ppl.envs.control.cut_segments`)."""
        policy = mixture_policy([self._policy(b) for b in self.behaviour_beta])
        steps = max(self.stream_steps, length)
        stream = rollout_stream(self.env_id, self.stream_envs, steps, policy, rng)
        return self._wrap(cut_segments(stream, shape, length, self.num_actions, rng))

    def episodes(self, count: int, beta: float, rng: np.random.Generator) -> ControlSegments:
        """``count`` whole episodes of ``softmax(beta * Q)`` from the env's start distribution, padded."""
        stream = rollout_stream(self.env_id, count, self.spec.max_episode_steps, self._policy(beta), rng,
                                until_first_end=True)
        return self._wrap(first_episodes(stream))

    def reward(self, segments: dict[str, np.ndarray]) -> np.ndarray:
        """The env's reward of each step (0 in the absorbing state and at padding)."""
        reward = getattr(segments, "true_reward", None)
        if reward is None:
            raise ValueError("these segments were not produced by this teacher: their true reward is unknown")
        return reward

    def q(self, segments: dict[str, np.ndarray]) -> np.ndarray:
        """The expert's ``Q(obs_t, .)``; zero in the absorbing state."""
        q = np.asarray(self.q_fn(segments["obs"]), dtype=np.float64)
        absorbing = segments.get("absorbing")
        if absorbing is not None:
            q = np.where(absorbing[..., None], 0.0, q)
        return q


def control_teacher(env_id: str, behaviour_beta: float | Sequence[float] | None = None) -> ControlTeacher:
    """The paper's teacher on a control env: the committed expert DQN (:func:`~mavrl_ppl.envs.experts.load_expert`)
    as a Boltzmann-rational :class:`ControlTeacher`; the queried segments' behaviour policy defaults to the env's
    (``ControlEnvSpec.behaviour_beta``)."""
    from mavrl_ppl.envs.experts import load_expert

    beta = tuple(behaviour_beta) if isinstance(behaviour_beta, (list, tuple)) else behaviour_beta
    return ControlTeacher(env_id, expert_q_function(load_expert(env_id)), behaviour_beta=beta)
