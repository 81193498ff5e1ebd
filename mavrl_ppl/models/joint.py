"""The joint feedback model of MAVRL as one Pyro program, and its amortized guide.

Sites, for every feedback type ``b`` present in the data (no per-type branches: each type is reached through the
plugin registry):

- the reward latents, prior ``Normal(0, 1)``, their log-density (and the guide's) scaled by ``kl_weight``: the KL
  weight of REFERENCE §1 (``kl_weight = 1`` is the exact ELBO). Either ``reward`` on the ``group`` plate (one per
  state or state-action pair) or ``reward_<b>`` (one per step of ``b``'s segments, masked by ``valid``); see
  :mod:`mavrl_ppl.models.rewards`. With one latent per transition the prior is paid once per step while a preference
  or rating scores a mean over ~10 steps; at ``kl_weight = 1`` the posterior stays at the prior (measured: posterior
  sd ~1.0 and |mean| < 0.3 on grid_trap), hence the small default in ``SVISettings``.
- ``bellman_<b>``: Bellman consistency of the Q-network's values, when action values come from the Q-network rather
  than exact planning; see :mod:`mavrl_ppl.models.values`.
- ``<b>_<param>_z``: nuisance parameters (e.g. rating cutpoints) on their unconstrained scale, prior from the type's
  :class:`~mavrl_ppl.feedback.Nuisance`; the transformed value is recorded as ``<b>_<param>``.
- ``obs_<b>``: the labels, scored by the type's own ``log_likelihood`` (the ``nll_b`` of REFERENCE §1).

Items sit in a ``<b>_item`` plate with ``subsample=`` indices, so a minibatch gives an unbiased estimate of the
full-data ELBO. The Q-network is a module of the model (point-estimated, like the reference); the encoder is the
guide's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from mavrl_ppl.feedback.base import FeedbackType, Latents, get_feedback_type
from mavrl_ppl.models.networks import QNetwork, RewardEncoder, transition_features
from mavrl_ppl.models.rewards import RewardAttachment, StepRewards, TiedRewards
from mavrl_ppl.models.settings import BELLMAN_TARGETS, ModelSettings
from mavrl_ppl.models.sites import FeedbackLikelihood, event_dims, weighted
from mavrl_ppl.models.values import ActionValues, NetworkValues, PlannedValues
from mavrl_ppl.planning.torch_backend import ExactPlanner

__all__ = ["BELLMAN_TARGETS", "FeedbackLikelihood", "JointFeedbackModel", "ModelSettings", "weighted"]

Batches = Mapping[str, tuple[torch.Tensor, Mapping]]


def _as_tensor(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.get_default_dtype())


def _shared_gamma(attrs: Mapping[str, Mapping]) -> float:
    gammas = {float(a["gamma"]) for a in attrs.values()}
    if len(gammas) != 1:
        raise ValueError(f"every feedback type must share one discount gamma, got {sorted(gammas)}")
    return gammas.pop()


def _encoder_width(obs_dim: int, num_actions: int, encoder_input: str) -> int:
    probe = transition_features(
        torch.zeros(1, obs_dim), torch.zeros(1, dtype=torch.long), torch.zeros(1, obs_dim), num_actions, encoder_input
    )
    return probe.shape[-1]


class JointFeedbackModel:
    """The Pyro program: ``model(batches)`` and the amortized ``guide(batches)``.

    ``batches`` maps type name -> ``(indices, batch)``: the subsample's item indices (a LongTensor) and the type's
    variables for those items as tensors (see :func:`mavrl_ppl.inference.data.to_tensors`), with ``num_items`` the
    full data size.

    Two choices are made once, here, as strategy objects every method delegates to:

    - ``rewards``, how reward latents attach to steps: :class:`~mavrl_ppl.models.rewards.TiedRewards` (one per
      state or state-action pair; ``state_features`` given, tabular data with ``state`` variables) or
      :class:`~mavrl_ppl.models.rewards.StepRewards` (one per segment step; ``state_features=None``).
    - ``values``, where action values come from: :class:`~mavrl_ppl.models.values.PlannedValues` (exact ``Q*`` of
      each sampled reward; ``planner`` given, needs tied rewards, one per reward group of the MDP: the NUTS
      baseline's model) or :class:`~mavrl_ppl.models.values.NetworkValues` (the Q-network with the Bellman term).

    Args:
        settings: networks and site scales.
        obs_dim: observation feature size.
        num_actions: size of the discrete action space.
        num_items: full number of items of each type (for the plates' scale).
        attrs: each type's data-set attributes (fixed nuisance values, gamma).
        state_features: ``(num_states, obs_dim)`` features of every state, for tied latents; ``None`` for latents
            per step.
        planner: exact ``Q*`` of a known tabular MDP; ``None``: the Q-network.
    """

    def __init__(
        self,
        settings: ModelSettings,
        *,
        obs_dim: int,
        num_actions: int,
        num_items: Mapping[str, int],
        attrs: Mapping[str, Mapping],
        state_features: torch.Tensor | None = None,
        planner: ExactPlanner | None = None,
    ) -> None:
        if state_features is None and settings.guide != "meanfield":
            raise ValueError(f"guide {settings.guide!r} needs one reward latent per state or state-action pair "
                             "(a tabular env with encoder_input state or state_action); use guide 'meanfield'")
        self.settings = settings
        self.num_actions = num_actions
        self.num_items = dict(num_items)
        self.attrs = {name: dict(a) for name, a in attrs.items()}
        self.encoder = RewardEncoder(
            _encoder_width(obs_dim, num_actions, settings.encoder_input), settings.hidden, settings.layers
        )
        self.gamma = _shared_gamma(self.attrs)
        # Built in planner mode too, where it is never used: its initialisation draws from torch's global RNG, and
        # skipping it would shift every later draw (the ELBO's samples), so seeded fits would not reproduce.
        q_network = QNetwork(obs_dim, num_actions, settings.hidden, settings.layers,
                             output_scale=1.0 / (1.0 - self.gamma) if settings.q_horizon_scale else 1.0)
        self.rewards: RewardAttachment = (
            StepRewards(self.encoder, settings, num_actions) if state_features is None
            else TiedRewards(self.encoder, settings, num_actions, state_features)
        )
        self.values: ActionValues = (
            NetworkValues(q_network, settings, num_actions, self.rewards) if planner is None
            else PlannedValues(planner, self.rewards)
        )

    @property
    def encoder_input(self) -> str:
        return self.settings.encoder_input

    # -- nuisance parameters, the same for every strategy --------------------------------------------------------
    def _nuisance_priors(self, feedback_type: FeedbackType):
        for n in feedback_type.free_nuisance(self.attrs[feedback_type.name]):
            loc = _as_tensor(n.loc(self.attrs[feedback_type.name]))
            yield n, loc, torch.full_like(loc, n.scale)

    def _model_params(self, feedback_type: FeedbackType) -> dict:
        """Sample the type's free nuisance parameters; the likelihood's ``params`` (fixed ones from the attrs)."""
        sampled = {}
        for n, loc, scale in self._nuisance_priors(feedback_type):
            site = feedback_type.site(n)
            z = pyro.sample(f"{site}_z", dist.Normal(loc, scale).to_event(loc.ndim))
            sampled[site] = pyro.deterministic(site, n.transform(z), event_dim=loc.ndim)
        return feedback_type.params(self.attrs[feedback_type.name], sampled, _as_tensor)

    def _guide_nuisance(self, feedback_type: FeedbackType) -> None:
        for n, loc, _ in self._nuisance_priors(feedback_type):
            site = feedback_type.site(n)
            q_loc = pyro.param(f"{site}_z_loc", loc.clone())
            q_scale = pyro.param(f"{site}_z_scale", torch.full_like(loc, 0.1), constraints.positive)
            pyro.sample(f"{site}_z", dist.Normal(q_loc, q_scale).to_event(loc.ndim))

    def nuisance_point(self, feedback_type: FeedbackType) -> dict[str, torch.Tensor]:
        """Nuisance parameters at the guide's mean (transformed), keyed by site."""
        out = {}
        for n, loc, _ in self._nuisance_priors(feedback_type):
            z = pyro.param(f"{feedback_type.site(n)}_z_loc", loc.clone())
            out[feedback_type.site(n)] = n.transform(z)
        return out

    def _item_plate(self, name: str, indices: torch.Tensor) -> pyro.plate:
        return pyro.plate(f"{name}_item", self.num_items[name], subsample=indices)

    # -- the program ------------------------------------------------------------------------------------------------
    def model(self, batches: Batches) -> None:
        self.values.register()
        draw = self.rewards.model_draw()
        values_at = self.values.model_values(draw)
        for name, (indices, batch) in batches.items():
            ft = get_feedback_type(name)
            params = self._model_params(ft)
            k = event_dims(ft)
            q = values_at(batch)
            with self._item_plate(name, indices):
                reward = self.rewards.model_steps(name, batch, draw, k)
                self.values.consistency(name, batch, reward, q, float(self.attrs[name]["gamma"]), k)
                latents = Latents(reward=reward, q=q)
                pyro.sample(f"obs_{name}", FeedbackLikelihood(ft, batch, latents, params), obs=batch[ft.label])

    def guide(self, batches: Batches) -> None:
        pyro.module("encoder", self.encoder)
        self.rewards.guide_draw()
        for name, (indices, batch) in batches.items():
            ft = get_feedback_type(name)
            self._guide_nuisance(ft)
            self.rewards.guide_steps(name, batch, event_dims(ft), partial(self._item_plate, name, indices))

    # -- prediction -------------------------------------------------------------------------------------------------
    def reward_mean(self, batch: Mapping) -> torch.Tensor:
        """The guide's mean reward of every step of ``batch``."""
        return self.rewards.mean(batch)

    def predictive_log_likelihood(self, name: str, batch: Mapping, num_draws: int = 16) -> torch.Tensor:
        """Per-item posterior-predictive log-likelihood ``log mean_k p(y | r_k)`` of ``batch``'s labels over
        ``num_draws`` guide draws of the reward (nuisance parameters at the guide's mean): the held-out score used
        for validation. The draws come from a fixed seed (common random numbers), so the score is a deterministic,
        smooth function of the parameters and checkpoint selection is not noisy. Scoring at the posterior MEAN
        instead rewards over-confident models (measured: held-out preference NLL above log 2 at the mean).
        """
        ft = get_feedback_type(name)
        params = ft.params(self.attrs[name], self.nuisance_point(ft), _as_tensor)
        draws, reward = self.rewards.draws(batch, num_draws, torch.Generator().manual_seed(0))
        log_lik = ft.log_likelihood(batch, Latents(reward=reward, q=self.values.predictive(draws, batch)), params)
        return torch.logsumexp(log_lik, 0) - math.log(num_draws)

    def q_values(self, batch: Mapping) -> torch.Tensor:
        """Action values at every step of ``batch``: the Q-network's, or ``Q*`` of the guide's mean reward."""
        return self.values.point(batch)
