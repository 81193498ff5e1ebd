"""The Pyro joint feedback model: reward encoder, Q-network, ``model()`` and the amortized ``guide()``."""

from mavrl_ppl.models.joint import FeedbackLikelihood, JointFeedbackModel, ModelWeights
from mavrl_ppl.models.networks import ENCODER_INPUTS, QNetwork, RewardEncoder, transition_features

__all__ = [
    "ENCODER_INPUTS",
    "FeedbackLikelihood",
    "JointFeedbackModel",
    "ModelWeights",
    "QNetwork",
    "RewardEncoder",
    "transition_features",
]
