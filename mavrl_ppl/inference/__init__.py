"""Amortized SVI: training loop, validation and early stopping, checkpoints, posterior draws.

Importing this package imports neither torch nor Pyro: the names below load their modules on first use, so the
command line can read :class:`SVISettings` without starting torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from mavrl_ppl.inference.settings import SVISettings

_LAZY = {
    "CyclingBatches": "data",
    "FeedbackSplit": "data",
    "Minibatches": "data",
    "split_feedback": "data",
    "split_items": "data",
    "take": "data",
    "to_tensors": "data",
    "SVIResult": "svi",
    "build_model": "svi",
    "fit_svi": "svi",
    "posterior_draws": "svi",
    "Trainer": "training",
    "TrainingDivergedError": "training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SVISettings", *_LAZY]
