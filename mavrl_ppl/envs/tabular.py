"""Exact tabular MDPs (numpy, float64); their solvers live in :mod:`mavrl_ppl.planning`.

A :class:`TabularMDP` carries the full dynamics ``P[s, a, s']`` and the true reward ``R[s, a, s']``. Rewards
that are a function of a smaller set of parameters (one per state on the paper grids) also carry
``reward_groups[s, a, s']``, the index of the parameter each transition's reward comes from; the NUTS baseline
infers one value per group and the SVI encoder sees the group's features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mavrl_ppl.planning import policy_evaluation


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite MDP with exact dynamics.

    Attributes:
        name: registry name (e.g. ``"grid_trap"``).
        transitions: ``P[s, a, s']``, rows sum to one.
        rewards: true reward ``R[s, a, s']``.
        initial: initial-state distribution ``(S,)``.
        gamma: discount factor in [0, 1).
        reward_groups: ``(S, A, S)`` integer index of the reward parameter behind each transition.
        group_rewards: ``(G,)`` true value of each reward parameter
            (``rewards == group_rewards[reward_groups]`` wherever the reward is a function of the groups;
            ``None`` when it is not, e.g. a shaped reward).
        goal_states: states at which a demonstration episode ends.
        grid_shape: ``(rows, cols)`` for grid worlds (plots), else ``None``.
        action_names: one label per action.
        settings: the constructor's settings (size, p_rand, ...), recorded with every run.
    """

    name: str
    transitions: np.ndarray
    rewards: np.ndarray
    initial: np.ndarray
    gamma: float
    reward_groups: np.ndarray
    group_rewards: np.ndarray | None
    goal_states: tuple[int, ...] = ()
    grid_shape: tuple[int, int] | None = None
    action_names: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        S, _, S2 = self.transitions.shape
        if S != S2:
            raise ValueError(f"transitions must be (S, A, S), got {self.transitions.shape}")
        if self.rewards.shape != self.transitions.shape:
            raise ValueError(f"rewards must have shape {self.transitions.shape}, got {self.rewards.shape}")
        if not np.allclose(self.transitions.sum(-1), 1.0, atol=1e-9):
            raise ValueError("each transitions[s, a, :] must sum to one")
        if self.initial.shape != (S,) or not np.isclose(self.initial.sum(), 1.0):
            raise ValueError("initial must be a distribution over the S states")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {self.gamma}")

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]

    @property
    def num_groups(self) -> int:
        return int(self.reward_groups.max()) + 1

    @property
    def start_state(self) -> int:
        """The most likely initial state (the unique one on the paper's envs)."""
        return int(np.argmax(self.initial))

    def with_group_rewards(self, group_rewards: np.ndarray) -> np.ndarray:
        """The ``(S, A, S)`` reward array that a vector of group rewards induces."""
        group_rewards = np.asarray(group_rewards, dtype=np.float64)
        if group_rewards.shape[-1] != self.num_groups:
            raise ValueError(f"expected {self.num_groups} group rewards, got shape {group_rewards.shape}")
        return group_rewards[..., self.reward_groups]


def uniform_policy(mdp: TabularMDP) -> np.ndarray:
    """The uniform random policy ``pi[s, a] = 1 / A``."""
    return np.full((mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions)


def start_value(mdp: TabularMDP, policy: np.ndarray, rewards: np.ndarray | None = None) -> float:
    """Discounted value of ``policy`` from the initial distribution under ``rewards`` (default: true)."""
    rewards = mdp.rewards if rewards is None else rewards
    return float(mdp.initial @ policy_evaluation(mdp.transitions, rewards, mdp.gamma, policy))
