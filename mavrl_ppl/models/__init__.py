"""The Pyro joint feedback model: reward encoder, Q-network, ``model()`` and the amortized ``guide()``.

Importing this package imports neither torch nor Pyro: the names below load their modules on first use, so the
command line can read :class:`ModelSettings` and its choices without starting torch (~1.5 s per command).
"""

from __future__ import annotations

from mavrl_ppl._lazy import lazy_exports
from mavrl_ppl.models.settings import BELLMAN_TARGETS, ENCODER_INPUTS, ModelSettings

_LAZY = {
    "FeedbackLikelihood": ".joint",
    "JointFeedbackModel": ".joint",
    "QNetwork": ".networks",
    "RewardEncoder": ".networks",
    "transition_features": ".networks",
    "StepRewards": ".rewards",
    "TiedRewards": ".rewards",
    "NetworkValues": ".values",
    "PlannedValues": ".values",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["BELLMAN_TARGETS", "ENCODER_INPUTS", "ModelSettings", *_LAZY]
