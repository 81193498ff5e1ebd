"""Amortized SVI: training loop, validation and early stopping, checkpoints, posterior draws.

Importing this package imports neither torch nor Pyro: the names below load their modules on first use, so the
command line can read :class:`SVISettings` without starting torch.
"""

from __future__ import annotations

from mavrl_ppl._lazy import lazy_exports
from mavrl_ppl.inference.settings import SVISettings

_LAZY = {
    "CyclingBatches": ".data",
    "FeedbackSplit": ".data",
    "Minibatches": ".data",
    "split_feedback": ".data",
    "split_items": ".data",
    "take": ".data",
    "to_tensors": ".data",
    "SVIResult": ".svi",
    "build_model": ".svi",
    "fit_svi": ".svi",
    "posterior_draws": ".svi",
    "Trainer": ".training",
    "TrainingDivergedError": ".training",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["SVISettings", *_LAZY]
