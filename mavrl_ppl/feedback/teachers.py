"""What a simulated teacher knows about an environment: segments to query, the true reward, and Q*.

Every feedback type's ``simulate`` talks to a teacher through this small interface, so the same simulators serve
tabular MDPs (exact Q* here) and control envs (an expert Q-network) alike.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mavrl_ppl.envs.rollouts import sample_paths
from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.planning import boltzmann_policy, value_iteration


class Teacher(Protocol):
    """The interface simulators use. Segments are dicts of numpy arrays with leading shape ``(*shape, step)``:
    ``obs``, ``action``, ``next_obs``, ``next_action``, ``valid``, ``terminal`` (and ``state``, ``next_state``)."""

    num_actions: int
    gamma: float
    attrs: dict

    def segments(self, shape: tuple[int, ...], length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Segments from the behaviour policy used for queries."""

    def episodes(self, count: int, beta: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Whole expert episodes (Boltzmann with ``beta``) from the start, padded behind ``valid``."""

    def reward(self, segments: dict[str, np.ndarray]) -> np.ndarray:
        """True reward of each step, shape ``(*shape, step)``."""

    def q(self, segments: dict[str, np.ndarray]) -> np.ndarray:
        """Q*(s_t, .) of each step, shape ``(*shape, step, action)``."""


def one_hot_features(num_states: int) -> np.ndarray:
    return np.eye(num_states, dtype=np.float32)


class TabularTeacher:
    """A Boltzmann-rational teacher on a tabular MDP, with exact Q* from value iteration.

    Args:
        mdp: the environment; its true reward is what the teacher judges by.
        behaviour_beta: rationality of the policy that generates query segments (0 = uniform random, the paper's).
        features: ``(S, obs_dim)`` observation of each state (default one-hot).
        max_episode_steps: cap on a demonstration episode (default ``4 * S``); episodes that miss the goal by then
            are kept, truncated.
    """

    def __init__(
        self,
        mdp: TabularMDP,
        *,
        behaviour_beta: float = 0.0,
        features: np.ndarray | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        self.mdp = mdp
        self.num_actions = mdp.num_actions
        self.gamma = mdp.gamma
        self.q_star = value_iteration(mdp.transitions, mdp.rewards, mdp.gamma)
        self.behaviour_policy = boltzmann_policy(self.q_star, behaviour_beta)
        self.features = one_hot_features(mdp.num_states) if features is None else np.asarray(features, np.float32)
        self.max_episode_steps = max_episode_steps or 4 * mdp.num_states
        self.attrs = {
            "env": mdp.name,
            "gamma": float(mdp.gamma),
            "num_actions": int(mdp.num_actions),
            "num_states": int(mdp.num_states),
        }

    def _pack(self, states: np.ndarray, actions: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        s, s_next = states[..., :-1], states[..., 1:]
        return {
            "obs": self.features[s],
            "action": actions[..., :-1],
            "next_obs": self.features[s_next],
            "next_action": actions[..., 1:],
            "valid": valid,
            # Evaluation is infinite-horizon (REFERENCE §2): no tabular transition is terminal.
            "terminal": np.zeros_like(valid),
            "state": s,
            "next_state": s_next,
        }

    def segments(self, shape: tuple[int, ...], length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Segments of ``length`` steps from the behaviour policy, each starting in a uniformly drawn state."""
        count = int(np.prod(shape))
        starts = rng.integers(self.mdp.num_states, size=count)
        states, actions = sample_paths(self.mdp.transitions, self.behaviour_policy, starts, length, rng)
        packed = self._pack(states, actions, np.ones((count, length), dtype=bool))
        return {k: v.reshape(*shape, *v.shape[1:]) for k, v in packed.items()}

    def episodes(self, count: int, beta: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Expert episodes from the start distribution until the first arrival in a goal state (that transition
        included), padded to the longest one."""
        starts = rng.choice(self.mdp.num_states, size=count, p=self.mdp.initial)
        policy = boltzmann_policy(self.q_star, beta)
        states, actions = sample_paths(self.mdp.transitions, policy, starts, self.max_episode_steps, rng)
        at_goal = np.isin(states[:, 1:], self.mdp.goal_states)
        reached = at_goal.any(-1)
        last = np.where(reached, at_goal.argmax(-1), self.max_episode_steps - 1)
        length = int(last.max()) + 1
        valid = np.arange(length)[None, :] <= last[:, None]
        return self._pack(states[:, : length + 1], actions[:, : length + 1], valid)

    def reward(self, segments: dict[str, np.ndarray]) -> np.ndarray:
        return self.mdp.rewards[segments["state"], segments["action"], segments["next_state"]]

    def q(self, segments: dict[str, np.ndarray]) -> np.ndarray:
        return self.q_star[segments["state"]]
