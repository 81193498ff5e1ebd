"""Tabular MDPs with exact dynamics, vectorised rollouts, gymnasium adapters (their solvers:
:mod:`mavrl_ppl.planning`), and the perturbed envs of the transfer experiment (:mod:`mavrl_ppl.envs.perturbed`)."""

from mavrl_ppl._lazy import lazy_exports
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
from mavrl_ppl.envs.tabular import TabularMDP, start_value, uniform_policy

# The gymnasium adapter is loaded on first use: importing mavrl_ppl.envs (every solver, simulator, and the
# CLI's --help) should not pay for importing gymnasium.
_LAZY = {"TabularEnv": ".gym_adapter", "make_tabular_env": ".gym_adapter", "register_tabular_envs": ".gym_adapter",
         "make_perturbed_env": ".perturbed", "perturbed_grid": ".perturbed", "register_perturbed_envs": ".perturbed"}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "GRID_ACTIONS",
    "TABULAR_ENVS",
    "TabularEnv",
    "TabularMDP",
    "grid_from_rewards",
    "make_chain",
    "make_grid",
    "make_perturbed_env",
    "make_tabular",
    "make_tabular_env",
    "manhattan_potential",
    "perturbed_grid",
    "register_perturbed_envs",
    "register_tabular_envs",
    "sample_paths",
    "shape_rewards",
    "start_value",
    "uniform_policy",
]
