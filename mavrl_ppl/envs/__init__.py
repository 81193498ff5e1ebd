"""Tabular MDPs with exact dynamics, vectorised rollouts, and gymnasium adapters."""

from mavrl_ppl.envs.grids import (
    GRID_ACTIONS,
    TABULAR_ENVS,
    grid_from_rewards,
    make_chain,
    make_grid,
    make_tabular,
    manhattan_potential,
    shape_rewards,
)
from mavrl_ppl.envs.rollouts import sample_paths
from mavrl_ppl.envs.tabular import (
    TabularMDP,
    boltzmann_policy,
    expected_reward,
    greedy_policy,
    policy_evaluation,
    start_value,
    uniform_policy,
    value_iteration,
)

# The gymnasium adapter is loaded on first use: importing mavrl_ppl.envs (every solver, simulator, and the
# CLI's --help) should not pay for importing gymnasium.
_LAZY = {"TabularEnv", "make_tabular_env", "register_tabular_envs"}


def __getattr__(name: str):
    if name in _LAZY:
        from mavrl_ppl.envs import gym_adapter

        return getattr(gym_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GRID_ACTIONS",
    "TABULAR_ENVS",
    "TabularEnv",
    "TabularMDP",
    "boltzmann_policy",
    "expected_reward",
    "greedy_policy",
    "grid_from_rewards",
    "make_chain",
    "make_grid",
    "make_tabular",
    "make_tabular_env",
    "manhattan_potential",
    "policy_evaluation",
    "register_tabular_envs",
    "sample_paths",
    "shape_rewards",
    "start_value",
    "uniform_policy",
    "value_iteration",
]
