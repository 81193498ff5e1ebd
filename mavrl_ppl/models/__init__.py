"""The Pyro joint feedback model: reward encoder, Q-network, ``model()`` and the amortized ``guide()``."""

from mavrl_ppl.models.joint import FeedbackLikelihood, JointFeedbackModel
from mavrl_ppl.models.networks import ENCODER_INPUTS, QNetwork, RewardEncoder, transition_features
from mavrl_ppl.models.rewards import StepRewards, TiedRewards
from mavrl_ppl.models.settings import BELLMAN_TARGETS, ModelSettings
from mavrl_ppl.models.values import NetworkValues, PlannedValues

__all__ = [
    "BELLMAN_TARGETS",
    "ENCODER_INPUTS",
    "FeedbackLikelihood",
    "JointFeedbackModel",
    "ModelSettings",
    "NetworkValues",
    "PlannedValues",
    "QNetwork",
    "RewardEncoder",
    "StepRewards",
    "TiedRewards",
    "transition_features",
]
