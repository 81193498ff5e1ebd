"""Amortized SVI: training loop, validation and early stopping, checkpoints, posterior draws."""

from mavrl_ppl.inference.data import CyclingBatches, split_items, take, to_tensors
from mavrl_ppl.inference.svi import SVIResult, SVISettings, TrainingDivergedError, fit_svi, posterior_draws

__all__ = [
    "CyclingBatches",
    "SVIResult",
    "SVISettings",
    "TrainingDivergedError",
    "fit_svi",
    "posterior_draws",
    "split_items",
    "take",
    "to_tensors",
]
