"""The joint model's settings: the part of :class:`~mavrl_ppl.inference.svi.SVISettings` the model itself reads."""

from __future__ import annotations

from dataclasses import dataclass

#: What the encoder sees of a transition x = (s, a, s').
ENCODER_INPUTS = ("state", "state_action", "transition")

#: How the Bellman-consistency target treats the next step: ``Q(s', a')`` at the data's next action (``"data"``, the
#: reference's SARSA-style target) or ``max_a' Q(s', a')`` (``"max"``, the optimality target the teachers plan with).
BELLMAN_TARGETS = ("max", "data")

#: The guide over tied reward latents: independent per group (``"meanfield"``), a low-rank-plus-diagonal Gaussian
#: (``"lowrank"``) or a full-covariance Gaussian (``"fullrank"``). The mean and the diagonal scale stay amortized (the
#: encoder's heads); the correlation part is one free parameter of the fit.
GUIDES = ("meanfield", "lowrank", "fullrank")

#: The Gaussian the Bellman sites score the TD target ``y`` under (Q-network mode only; see
#: :class:`~mavrl_ppl.models.values.NetworkValues`):
#:
#: - ``"fixed"``: ``Normal(r, bellman_scale)`` around the sampled reward ``r``, a fixed scale.
#: - ``"encoder"``: ``Normal(mu, sigma)``, the guide's own per-step mean and scale (REFERENCE §1, the paper's TD term).
#:   The model then reads the guide's parameters, so the objective is the reference's loss, no longer the ELBO of a
#:   fixed generative model.
TD_SCALES = ("fixed", "encoder")


@dataclass(frozen=True)
class ModelSettings:
    """Networks and site scales of :class:`~mavrl_ppl.models.joint.JointFeedbackModel` (REFERENCE §1).

    Attributes:
        encoder_input: what the encoder sees of a transition, one of
            :data:`ENCODER_INPUTS`.
        hidden: hidden width of the encoder and the Q-network.
        layers: hidden layers of both networks.
        kl_weight: scale on the reward prior and guide sites (1 = exact ELBO).
        td_weight: scale on the Bellman-consistency sites.
        bellman_scale: standard deviation of the Bellman observation ``y ~ Normal(r, bellman_scale)`` (read with
            ``td_scale="fixed"`` only).
        td_scale: one of :data:`TD_SCALES`; ignored with exact planning (no Bellman sites there).
        bellman_target: one of :data:`BELLMAN_TARGETS`.
        q_horizon_scale: scale the Q-network's output by ``1 / (1 - gamma)`` (see
            :class:`~mavrl_ppl.models.networks.QNetwork`).
        guide: one of :data:`GUIDES` (the richer two need tied rewards, one latent per state or state-action pair).
        guide_rank: columns of the ``lowrank`` guide's covariance factor.
    """

    encoder_input: str = "state"
    hidden: int = 64
    layers: int = 2
    kl_weight: float = 1.0
    td_weight: float = 1.0
    bellman_scale: float = 0.5
    bellman_target: str = "max"
    td_scale: str = "fixed"
    q_horizon_scale: bool = False
    guide: str = "meanfield"
    guide_rank: int = 5

    def __post_init__(self) -> None:
        if self.guide not in GUIDES:
            raise ValueError(f"guide must be one of {GUIDES}, got {self.guide!r}")
        if int(self.guide_rank) < 1:
            raise ValueError(f"guide_rank must be a positive integer, got {self.guide_rank!r}")
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {self.encoder_input!r}")
        if self.bellman_target not in BELLMAN_TARGETS:
            raise ValueError(f"bellman_target must be one of {BELLMAN_TARGETS}, got {self.bellman_target!r}")
        if self.td_scale not in TD_SCALES:
            raise ValueError(f"td_scale must be one of {TD_SCALES}, got {self.td_scale!r}")
        for name in ("kl_weight", "td_weight", "bellman_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
