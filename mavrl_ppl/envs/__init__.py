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

__all__ = [
    "GRID_ACTIONS",
    "TABULAR_ENVS",
    "TabularMDP",
    "boltzmann_policy",
    "expected_reward",
    "greedy_policy",
    "grid_from_rewards",
    "make_chain",
    "make_grid",
    "make_tabular",
    "manhattan_potential",
    "policy_evaluation",
    "sample_paths",
    "shape_rewards",
    "start_value",
    "uniform_policy",
    "value_iteration",
]
