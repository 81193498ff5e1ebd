"""Amortized SVI: training loop, validation and early stopping, checkpoints, posterior draws."""

from mavrl_ppl.inference.data import (
    CyclingBatches,
    FeedbackSplit,
    Minibatches,
    split_feedback,
    split_items,
    take,
    to_tensors,
)
from mavrl_ppl.inference.settings import SVISettings
from mavrl_ppl.inference.svi import SVIResult, build_model, fit_svi, posterior_draws
from mavrl_ppl.inference.training import Trainer, TrainingDivergedError

__all__ = [
    "CyclingBatches",
    "FeedbackSplit",
    "Minibatches",
    "SVIResult",
    "SVISettings",
    "Trainer",
    "TrainingDivergedError",
    "build_model",
    "fit_svi",
    "posterior_draws",
    "split_feedback",
    "split_items",
    "take",
    "to_tensors",
]
