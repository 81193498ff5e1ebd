"""A gymnasium view of a :class:`~mavrl_ppl.envs.tabular.TabularMDP`.

The environment samples from the MDP's exact dynamics, so anything trained on it (PPO, a simulated teacher)
sees the same stochasticity (``p_rand``) and reward ``R[s, a, s']`` that the exact solvers and metrics use.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from mavrl_ppl.envs.grids import TABULAR_ENVS, make_tabular
from mavrl_ppl.envs.tabular import TabularMDP

ENV_NAMESPACE = "mavrl_ppl"


class TabularEnv(gymnasium.Env[np.int64, np.int64]):
    """A gymnasium environment that samples from a tabular MDP's exact dynamics.

    Observations and actions are ``Discrete`` indices. ``reset`` draws ``s_0 ~ mdp.initial``; ``step(a)``
    draws ``s' ~ P[s, a, :]`` and returns ``R[s, a, s']``. Evaluation in this library is infinite-horizon (the
    goal is an ordinary state), so by default episodes never terminate and are only truncated after
    ``max_episode_steps``.

    Args:
        mdp: the MDP to sample from.
        max_episode_steps: truncate after this many steps; ``None`` never truncates (used when gymnasium's
            ``TimeLimit`` wrapper is the limit, as for the registered ids).
        terminate_at_goal: end the episode (``terminated=True``) when a step enters one of
            ``mdp.goal_states``.
        render_mode: ``None`` or ``"ansi"`` (a text picture; on grids, the grid with the agent ``A`` and the
            goal ``G``).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        mdp: TabularMDP,
        *,
        max_episode_steps: int | None = 100,
        terminate_at_goal: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode must be one of {modes} or None, got {render_mode!r}")
        self.mdp = mdp
        self.max_episode_steps = max_episode_steps
        self.terminate_at_goal = terminate_at_goal
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(mdp.num_states)
        self.action_space = spaces.Discrete(mdp.num_actions)
        # Cumulative rows: one uniform + searchsorted per draw (cheaper than Generator.choice with p=...).
        self._initial_cdf = np.cumsum(mdp.initial)
        self._transition_cdf = np.cumsum(mdp.transitions, axis=-1)
        self._goal_mask = np.zeros(mdp.num_states, dtype=bool)
        self._goal_mask[list(mdp.goal_states)] = True
        self._state: int | None = None
        self._elapsed = 0
        # A spec that rebuilds this very env, so ``env.spec.make(render_mode=...)`` and gymnasium's env
        # checker work on a directly constructed env too (gymnasium.make replaces it by the registered spec).
        safe_name = re.sub(r"[^\w.]", "_", mdp.name)  # gymnasium ids allow word characters and dots
        self.spec = EnvSpec(
            id=f"{ENV_NAMESPACE}/{safe_name}",
            entry_point=TabularEnv,
            kwargs={
                "mdp": mdp,
                "max_episode_steps": max_episode_steps,
                "terminate_at_goal": terminate_at_goal,
                "render_mode": render_mode,
            },
        )

    @staticmethod
    def _draw(cdf: np.ndarray, u: float) -> int:
        # Clip: round-off can leave cdf[-1] a hair below one.
        return int(min(np.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        """Start an episode.

        Args:
            seed: reseeds the env's ``np_random`` (gymnasium convention; ``None`` keeps the current stream).
            options: ``{"state": s}`` starts in state ``s`` instead of sampling from ``mdp.initial``.

        Returns:
            The start state and an info dict (empty).
        """
        super().reset(seed=seed)
        state = (options or {}).get("state")
        if state is None:
            self._state = self._draw(self._initial_cdf, self.np_random.random())
        else:
            if not self.observation_space.contains(state):
                raise ValueError(f"options['state'] must be a state index in [0, {self.mdp.num_states}), got {state!r}")
            self._state = int(state)
        self._elapsed = 0
        return np.int64(self._state), {}

    def step(self, action: int | np.integer) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        """Take ``action`` in the current state.

        Args:
            action: an action index in ``[0, num_actions)``.

        Returns:
            ``(next_state, reward, terminated, truncated, info)`` with ``reward = R[s, action, next_state]``.
        """
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):  # ints and integer numpy scalars/0-d arrays
            raise ValueError(f"action must be in [0, {self.mdp.num_actions}), got {action!r}")
        a = int(action)
        s = self._state
        s_next = self._draw(self._transition_cdf[s, a], self.np_random.random())
        reward = float(self.mdp.rewards[s, a, s_next])
        self._state = s_next
        self._elapsed += 1
        terminated = bool(self.terminate_at_goal and self._goal_mask[s_next])
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        return np.int64(s_next), reward, terminated, bool(truncated), {}

    def render(self) -> str | None:
        """The ``"ansi"`` picture of the current state (``None`` when ``render_mode`` is ``None``).

        On grids: one line per row, ``A`` the agent, ``G`` a goal cell, ``x`` a cell with a negative reward,
        ``.`` anything else. Other MDPs render as ``state s / S``.
        """
        if self.render_mode is None:
            return None
        if self._state is None:
            raise RuntimeError("call reset() before render()")
        mdp = self.mdp
        if mdp.grid_shape is None:
            return f"state {self._state} / {mdp.num_states}\n"
        rows, cols = mdp.grid_shape
        # Mean reward of leaving each state: exactly R(s) on the state-reward grids.
        state_reward = mdp.rewards.mean(axis=(1, 2))
        cells = np.where(state_reward < 0, "x", ".").astype("<U1")
        cells[self._goal_mask] = "G"
        cells[self._state] = "A"
        return "\n".join("".join(row) for row in cells.reshape(rows, cols)) + "\n"


def make_tabular_env(
    name: str,
    *,
    size: int | None = None,
    p_rand: float = 0.0,
    gamma: float | None = None,
    max_episode_steps: int | None = None,
    terminate_at_goal: bool = False,
    render_mode: str | None = None,
) -> TabularEnv:
    """Entry point of the registered ids: :func:`~mavrl_ppl.envs.grids.make_tabular` in a :class:`TabularEnv`.

    Args:
        name: tabular env name (``grid_trap``, ``chain``, ...).
        size: grid side / chain length (default: the env's own).
        p_rand: probability of a random move on grids.
        gamma: discount recorded on the MDP (does not change the env's samples).
        max_episode_steps: the env's own truncation; ``None`` because ``gymnasium.make`` adds ``TimeLimit``.
        terminate_at_goal: see :class:`TabularEnv`.
        render_mode: see :class:`TabularEnv`.
    """
    mdp = make_tabular(name, size=size, p_rand=p_rand, gamma=gamma)
    return TabularEnv(
        mdp, max_episode_steps=max_episode_steps, terminate_at_goal=terminate_at_goal, render_mode=render_mode
    )


def register_tabular_envs(max_episode_steps: int = 100) -> list[str]:
    """Register every tabular env with gymnasium as ``mavrl_ppl/<name>-v0`` (idempotent).

    ``gymnasium.make("mavrl_ppl/grid_trap-v0", p_rand=0.1)`` builds the 10x10 trap grid; the episode limit
    is gymnasium's ``TimeLimit`` (override with ``gymnasium.make(..., max_episode_steps=...)``).

    Args:
        max_episode_steps: the registered default episode limit.

    Returns:
        The registered ids.
    """
    ids = []
    for name in TABULAR_ENVS:
        env_id = f"{ENV_NAMESPACE}/{name}-v0"
        # Re-registering an id makes gymnasium warn (an error under our pytest settings), so skip known ids.
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point=f"{__name__}:make_tabular_env",
                kwargs={"name": name},
                max_episode_steps=max_episode_steps,
            )
        ids.append(env_id)
    return ids
