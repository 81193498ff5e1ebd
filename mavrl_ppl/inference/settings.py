"""The settings of an SVI fit."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mavrl_ppl.models.settings import BELLMAN_TARGETS, ENCODER_INPUTS, GUIDES, TD_SCALES, ModelSettings
from mavrl_ppl.options import option

#: How the likelihoods get action values on a tabular env (``SVISettings.q_model``).
Q_MODELS = ("planner", "network")


@dataclass
class SVISettings:
    """Every setting of an SVI fit (one documented default set for all grids)."""

    encoder_input: str = option("state", "what the encoder sees: state | state_action | transition", ENCODER_INPUTS)
    hidden: int = option(64, "hidden width of the encoder and the Q-network")
    layers: int = option(2, "hidden layers of both networks")
    learning_rate: float = option(0.03, "AdamW step size at the start")
    lr_decay: float = option(0.1, "learning rate at max_steps as a fraction of learning_rate (exponential schedule)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    clip_norm: float = option(1.0, "gradient-norm clip, applied per parameter tensor (Pyro's clip_args)")
    batch_size: int = option(256, "items of each feedback type per step (the paper grids' data sets fit whole)")
    max_steps: int = option(200, "optimisation steps at most")
    eval_every: int = option(20, "steps between validation passes")
    patience: int = option(5, "validation passes without improvement before stopping")
    validation_fraction: float = option(0.2, "share of each type's items held out for validation")
    num_particles: int = option(1, "ELBO particles per step")
    kl_weight: float = option(1.0, "scale on the reward prior/guide sites (1 = exact ELBO; see models.joint)")
    td_weight: float = option(1.0, "scale on the Bellman-consistency sites")
    bellman_scale: float = option(0.5, "std of the Bellman observation y ~ Normal(r, bellman_scale) (td_scale fixed)")
    td_scale: str = option(
        "fixed", "Q-network mode: the TD target's Gaussian: fixed (Normal(r, bellman_scale)) | encoder (Normal(mu, "
        "sigma), the guide's own per-step mean and scale, the paper's TD term)", TD_SCALES
    )
    q_model: str = option(
        "planner", "tabular envs: planner (exact Q*(r), the NUTS model) | network (MAVRL's Q-network)", Q_MODELS
    )
    q_horizon_scale: bool = option(False, "Q-network mode: multiply the Q-network's output by 1 / (1 - gamma)")
    bellman_target: str = option(
        "max", "next-step value in the TD target: max (max_a' Q(s', a')) | data (Q(s', a'_data))", BELLMAN_TARGETS
    )
    guide: str = option(
        "meanfield", "tied rewards: meanfield (independent per state) | lowrank | fullrank (correlated states)", GUIDES
    )
    guide_rank: int = option(5, "columns of the lowrank guide's covariance factor")
    num_posterior_samples: int = option(1000, "guide draws stored in posterior.nc")
    progress_bar: bool = option(True, "show a tqdm bar with the ELBO")

    def __post_init__(self) -> None:
        choices = {"encoder_input": ENCODER_INPUTS, "q_model": Q_MODELS, "bellman_target": BELLMAN_TARGETS,
                   "guide": GUIDES, "td_scale": TD_SCALES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("hidden", "batch_size", "max_steps", "eval_every", "patience", "num_particles",
                     "num_posterior_samples", "guide_rank"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0, got {self.layers}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if not (self.learning_rate > 0 and 0 < self.lr_decay <= 1):
            raise ValueError(f"need learning_rate > 0 and 0 < lr_decay <= 1, got {self.learning_rate}, {self.lr_decay}")
        for name in ("kl_weight", "td_weight", "weight_decay", "clip_norm", "bellman_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def model_settings(self) -> ModelSettings:
        """The settings the model itself reads (the fields of :class:`ModelSettings`)."""
        return ModelSettings(**{f.name: getattr(self, f.name) for f in fields(ModelSettings)})
