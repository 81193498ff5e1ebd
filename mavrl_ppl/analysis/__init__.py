"""Analysis of fitted reward posteriors: metrics (score, regret, EPIC), InferenceData, tables, plots.

Keep this module numpy-light: importing ``mavrl_ppl.analysis`` must not import torch or JAX.
"""

from mavrl_ppl.analysis.metrics import (
    canonicalize_reward,
    discounted_value,
    epic_distance,
    evaluate_reward,
    greedy_policy_for,
    learned_reward,
    normalization_constants,
    posterior_mean,
)

__all__ = [
    "canonicalize_reward",
    "discounted_value",
    "epic_distance",
    "evaluate_reward",
    "greedy_policy_for",
    "learned_reward",
    "normalization_constants",
    "posterior_mean",
]
