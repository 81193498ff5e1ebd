"""The joint feedback model of MAVRL as one Pyro program, and its amortized guide.

Sites, for every feedback type ``b`` present in the data (no per-type branches: each type is reached through the
plugin registry):

- ``reward_<b>``: the per-transition reward latent of every step of ``b``'s segments, prior ``Normal(0, 1)``, masked by
  ``valid``. Its log-density (and the guide's) is scaled by ``kl_weight``: the KL weight of REFERENCE §1
  (``kl_weight = 1`` is the exact ELBO). Every transition has its own latent, so the prior is paid once per step
  while a preference or rating scores a mean over ~10 steps; at ``kl_weight = 1`` the posterior stays at the prior
  (measured: posterior sd ~1.0 and |mean| < 0.3 on grid_trap), hence the small default in ``SVISettings``.
- ``bellman_<b>``: Bellman consistency. The TD target ``y = Q(s, a) - gamma * Q(s', a')`` (``Q(s', .) = 0`` after a
  terminal step) is observed as ``y ~ Normal(r, bellman_scale)``, masked by ``valid`` and scaled by ``td_weight``.
  Its expectation under ``q = Normal(mu, sigma)`` is ``((y - mu)^2 + sigma^2) / (2 bellman_scale^2)`` per step: the
  reference's TD term with a fixed instead of a learned scale (REFERENCE §1 ``td_weight * TD_b``).
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
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

from mavrl_ppl.feedback.base import FeedbackType, Latents, get_feedback_type
from mavrl_ppl.models.networks import QNetwork, RewardEncoder, transition_features
from mavrl_ppl.planning.torch_backend import ExactPlanner


def weighted(weight: float):
    """``poutine.scale`` by ``weight``; a zero weight removes the sites' terms by masking (``scale`` rejects 0)."""
    if weight < 0:
        raise ValueError(f"site weights must be >= 0, got {weight}")
    return poutine.mask(mask=False) if weight == 0 else poutine.scale(scale=weight)


class FeedbackLikelihood(dist.TorchDistribution):
    """Wraps a feedback type's array-API log-likelihood as a distribution over its labels (scoring only)."""

    arg_constraints: dict = {}  # noqa: RUF012 (torch's Distribution API declares it so)
    support = constraints.real

    def __init__(self, feedback_type: FeedbackType, batch: Mapping, latents: Latents, params: Mapping) -> None:
        self.feedback_type, self.batch, self.latents, self.params = feedback_type, batch, latents, params
        label_shape = batch[feedback_type.label].shape  # (item, *per-item label dims, e.g. demo steps)
        super().__init__(batch_shape=label_shape[:1], event_shape=label_shape[1:], validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = {**self.batch, self.feedback_type.label: value}
        return self.feedback_type.log_likelihood(batch, self.latents, self.params)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        raise NotImplementedError("feedback likelihoods only score observed labels")


@dataclass(frozen=True)
class ModelWeights:
    """The scales on the model's sites (REFERENCE §1).

    Attributes:
        kl_weight: scale on the reward prior and guide sites (1 = exact ELBO).
        td_weight: scale on the Bellman-consistency sites.
        bellman_scale: standard deviation of the Bellman observation ``y ~ Normal(r, bellman_scale)``.
    """

    kl_weight: float = 1.0
    td_weight: float = 1.0
    bellman_scale: float = 0.5


#: How the Bellman-consistency target treats the next step: ``Q(s', a')`` at the data's next action (``"data"``, the
#: reference's SARSA-style target) or ``max_a' Q(s', a')`` (``"max"``, the optimality target the teachers plan with).
BELLMAN_TARGETS = ("max", "data")


class JointFeedbackModel:
    """The Pyro program: ``model(batches)`` and the amortized ``guide(batches)``.

    ``batches`` maps type name -> ``(indices, batch)``: the subsample's item indices (a LongTensor) and the type's
    variables for those items as tensors (see :func:`mavrl_ppl.inference.data.to_tensors`), with ``num_items`` the
    full data size.

    Two ways to attach the reward latent to transitions:

    - tied (``state_features`` given; tabular data with ``state`` variables): ONE latent per reward input, i.e. per
      state (``encoder_input="state"``) or per state-action pair (``"state_action"``): the site ``reward`` on the
      ``group`` plate, prior ``Normal(0, 1)``, guide ``Normal(mu(x_g), sigma(x_g))`` from the encoder on every
      group's features. Every visit of a state reads the same latent, as ``R`` is a function of the state; this is
      the NUTS baseline's model with a Q-network in place of exact planning, so the two posteriors are comparable.
    - per occurrence (``state_features=None``; e.g. control envs, where no two transitions coincide): one latent per
      segment step, sites ``reward_<type>`` in the type's item plate, masked by ``valid`` (REFERENCE §1 literally).

    Args:
        obs_dim: observation feature size.
        num_actions: size of the discrete action space.
        num_items: full number of items of each type (for the plates' scale).
        attrs: each type's data-set attributes (fixed nuisance values, gamma).
        encoder_input: ``"state"``, ``"state_action"`` or ``"transition"``.
        hidden: hidden width of both networks.
        layers: hidden layers of both networks.
        weights: site scales.
        state_features: ``(num_states, obs_dim)`` features of every state, for tied latents; ``None`` for latents
            per occurrence.
        bellman_target: one of :data:`BELLMAN_TARGETS`.
        q_horizon_scale: scale the Q-network's output by ``1 / (1 - gamma)`` (see :class:`QNetwork`).
        planner: exact ``Q*`` of a known tabular MDP (needs tied latents, one per reward group of the MDP): the
            likelihoods get ``Q*(r)`` of each sampled reward instead of the Q-network's values, and the Bellman term,
            then identically satisfied, is dropped. This is the NUTS baseline's model; ``None``: the Q-network.
    """

    def __init__(
        self,
        *,
        obs_dim: int,
        num_actions: int,
        num_items: Mapping[str, int],
        attrs: Mapping[str, Mapping],
        encoder_input: str = "state",
        hidden: int = 64,
        layers: int = 2,
        weights: ModelWeights | None = None,
        state_features: torch.Tensor | None = None,
        bellman_target: str = "max",
        q_horizon_scale: bool = True,
        planner: ExactPlanner | None = None,
    ) -> None:
        if bellman_target not in BELLMAN_TARGETS:
            raise ValueError(f"bellman_target must be one of {BELLMAN_TARGETS}, got {bellman_target!r}")
        self.num_actions = num_actions
        self.num_items = dict(num_items)
        self.attrs = {name: dict(a) for name, a in attrs.items()}
        self.encoder_input = encoder_input
        self.bellman_target = bellman_target
        probe = transition_features(
            torch.zeros(1, obs_dim), torch.zeros(1, dtype=torch.long), torch.zeros(1, obs_dim), num_actions,
            encoder_input,
        )
        self.encoder = RewardEncoder(probe.shape[-1], hidden, layers)
        gammas = {float(a["gamma"]) for a in self.attrs.values()}
        if len(gammas) != 1:
            raise ValueError(f"every feedback type must share one discount gamma, got {sorted(gammas)}")
        self.gamma = gammas.pop()
        self.q_network = QNetwork(obs_dim, num_actions, hidden, layers,
                                  output_scale=1.0 / (1.0 - self.gamma) if q_horizon_scale else 1.0)
        self.weights = weights or ModelWeights()
        self.group_features = None if state_features is None else self._group_features(state_features)
        self.planner = planner
        if planner is not None and (self.group_features is None or self.group_features.shape[0] != planner.num_groups):
            raise ValueError("exact planning needs tied reward latents, one per reward group of the MDP")

    # -- pieces shared by model, guide and prediction -------------------------------------------------------------
    def _group_features(self, state_features: torch.Tensor) -> torch.Tensor:
        """Encoder input of every reward group: each state, or each (state, action) pair in ``s * A + a`` order."""
        states = torch.as_tensor(state_features, dtype=torch.get_default_dtype())
        if self.encoder_input == "state":
            return states
        if self.encoder_input == "state_action":
            A = self.num_actions
            obs = states.repeat_interleave(A, 0)
            actions = torch.arange(A).repeat(states.shape[0])
            return transition_features(obs, actions, obs, A, "state_action")
        raise ValueError("tied rewards need encoder_input 'state' or 'state_action', not 'transition'")

    def group_index(self, batch: Mapping) -> torch.Tensor:
        """The reward group of every step (padded steps clamped into range; they are masked anyway)."""
        num_groups = self.group_features.shape[0]
        if self.encoder_input == "state":
            return self._state(batch)
        return (self._state(batch) * self.num_actions + batch["action"]).clamp(0, num_groups - 1)

    def _state(self, batch: Mapping) -> torch.Tensor:
        num_states = self.group_features.shape[0] if self.encoder_input == "state" else (
            self.group_features.shape[0] // self.num_actions)
        return batch["state"].clamp(0, num_states - 1)

    def features(self, batch: Mapping) -> torch.Tensor:
        return transition_features(
            batch["obs"], batch["action"], batch["next_obs"], self.num_actions, self.encoder_input
        )

    def _event_dims(self, feedback_type: FeedbackType) -> int:
        return len(feedback_type.segment_dims) - 1  # [side,] step

    def _nuisance_priors(self, feedback_type: FeedbackType):
        for n in feedback_type.free_nuisance(self.attrs[feedback_type.name]):
            loc = torch.as_tensor(n.loc(self.attrs[feedback_type.name]), dtype=torch.get_default_dtype())
            yield n, loc, torch.full_like(loc, n.scale)

    def _td_target(self, batch: Mapping, q: torch.Tensor, gamma: float) -> torch.Tensor:
        """``Q(s, a) - gamma * V(s')`` per step, ``V(s') = 0`` after a terminal step (see :data:`BELLMAN_TARGETS`)."""
        next_q = self.q_network(batch["next_obs"])
        # Padded steps may hold any index (validation checks valid steps only): clamp before gathering.
        action = batch["action"].clamp(0, self.num_actions - 1).unsqueeze(-1)
        if self.bellman_target == "max":
            next_value = next_q.max(-1).values
        else:
            next_action = batch["next_action"].clamp(0, self.num_actions - 1).unsqueeze(-1)
            next_value = torch.gather(next_q, -1, next_action).squeeze(-1)
        next_value = torch.where(batch["terminal"], torch.zeros_like(next_value), next_value)
        return torch.gather(q, -1, action).squeeze(-1) - gamma * next_value

    # -- the program ------------------------------------------------------------------------------------------------
    def model(self, batches: Mapping[str, tuple[torch.Tensor, Mapping]]) -> None:
        if self.planner is None:
            pyro.module("q_network", self.q_network)
        w = self.weights
        tied = None
        if self.group_features is not None:
            with pyro.plate("group", self.group_features.shape[0]), weighted(w.kl_weight):
                tied = pyro.sample("reward", dist.Normal(torch.zeros(self.group_features.shape[0]), 1.0))
        q_star = None if self.planner is None else self.planner(tied).to(tied.dtype)
        for name, (indices, batch) in batches.items():
            ft = get_feedback_type(name)
            attrs = self.attrs[name]
            sampled = {}
            for n, loc, scale in self._nuisance_priors(ft):
                z = pyro.sample(f"{ft.site(n)}_z", dist.Normal(loc, scale).to_event(loc.ndim))
                sampled[ft.site(n)] = pyro.deterministic(ft.site(n), n.transform(z), event_dim=loc.ndim)
            params = ft.params(attrs, sampled, lambda a: torch.as_tensor(a, dtype=torch.get_default_dtype()))
            valid = batch["valid"]
            k = self._event_dims(ft)
            q = self.q_network(batch["obs"]) if q_star is None else q_star[self._state(batch)]
            with pyro.plate(f"{name}_item", self.num_items[name], subsample=indices):
                if tied is None:
                    with weighted(w.kl_weight):
                        prior = dist.Normal(torch.zeros(valid.shape), 1.0).mask(valid).to_event(k)
                        reward = pyro.sample(f"reward_{name}", prior)
                else:
                    reward = tied[self.group_index(batch)]
                if q_star is None:
                    with weighted(w.td_weight):
                        pyro.sample(
                            f"bellman_{name}",
                            dist.Normal(reward, w.bellman_scale).mask(valid).to_event(k),
                            obs=self._td_target(batch, q, float(attrs["gamma"])),
                        )
                latents = Latents(reward=reward, q=q)
                pyro.sample(f"obs_{name}", FeedbackLikelihood(ft, batch, latents, params), obs=batch[ft.label])

    def guide(self, batches: Mapping[str, tuple[torch.Tensor, Mapping]]) -> None:
        pyro.module("encoder", self.encoder)
        if self.group_features is not None:
            mu, sigma = self.encoder(self.group_features)
            with pyro.plate("group", self.group_features.shape[0]), weighted(self.weights.kl_weight):
                pyro.sample("reward", dist.Normal(mu, sigma))
        for name, (indices, batch) in batches.items():
            ft = get_feedback_type(name)
            for n, loc, _ in self._nuisance_priors(ft):
                q_loc = pyro.param(f"{ft.site(n)}_z_loc", loc.clone())
                q_scale = pyro.param(f"{ft.site(n)}_z_scale", torch.full_like(loc, 0.1), constraints.positive)
                pyro.sample(f"{ft.site(n)}_z", dist.Normal(q_loc, q_scale).to_event(loc.ndim))
            if self.group_features is None:
                mu, sigma = self.encoder(self.features(batch))
                with pyro.plate(f"{name}_item", self.num_items[name], subsample=indices):
                    with weighted(self.weights.kl_weight):
                        pyro.sample(
                            f"reward_{name}",
                            dist.Normal(mu, sigma).mask(batch["valid"]).to_event(self._event_dims(ft)),
                        )

    # -- prediction -------------------------------------------------------------------------------------------------
    def nuisance_point(self, feedback_type: FeedbackType) -> dict[str, torch.Tensor]:
        """Nuisance parameters at the guide's mean (transformed), keyed by site."""
        out = {}
        for n, loc, _ in self._nuisance_priors(feedback_type):
            z = pyro.param(f"{feedback_type.site(n)}_z_loc", loc.clone())
            out[feedback_type.site(n)] = n.transform(z)
        return out

    def reward_mean(self, batch: Mapping) -> torch.Tensor:
        """The guide's mean reward of every step of ``batch``."""
        if self.group_features is None:
            return self.encoder(self.features(batch))[0]
        return self.encoder(self.group_features)[0][self.group_index(batch)]

    def predictive_log_likelihood(self, name: str, batch: Mapping, num_draws: int = 16) -> torch.Tensor:
        """Per-item posterior-predictive log-likelihood ``log mean_k p(y | r_k)`` of ``batch``'s labels over
        ``num_draws`` guide draws of the reward (nuisance parameters at the guide's mean): the held-out score used
        for validation. The draws come from a fixed seed (common random numbers), so the score is a deterministic,
        smooth function of the parameters and checkpoint selection is not noisy. Scoring at the posterior MEAN
        instead rewards over-confident models (measured: held-out preference NLL above log 2 at the mean).
        """
        ft = get_feedback_type(name)
        params = ft.params(
            self.attrs[name], self.nuisance_point(ft), lambda a: torch.as_tensor(a, dtype=torch.get_default_dtype())
        )
        generator = torch.Generator().manual_seed(0)
        if self.group_features is None:
            mu, sigma = self.encoder(self.features(batch))
            draws = mu + sigma * torch.randn((num_draws, *mu.shape), generator=generator, dtype=mu.dtype)
            reward, q = draws, self.q_network(batch["obs"])
        else:
            mu, sigma = self.encoder(self.group_features)
            draws = mu + sigma * torch.randn((num_draws, *mu.shape), generator=generator, dtype=mu.dtype)
            reward = draws[:, self.group_index(batch)]
            if self.planner is None:
                q = self.q_network(batch["obs"])
            else:
                q = torch.stack([self.planner(d) for d in draws]).to(mu.dtype)[:, self._state(batch)]
        log_lik = ft.log_likelihood(batch, Latents(reward=reward, q=q), params)
        return torch.logsumexp(log_lik, 0) - math.log(num_draws)

    def q_values(self, batch: Mapping) -> torch.Tensor:
        """Action values at every step of ``batch``: the Q-network's, or ``Q*`` of the guide's mean reward."""
        if self.planner is None:
            return self.q_network(batch["obs"])
        mean = self.encoder(self.group_features)[0]
        return self.planner(mean).to(mean.dtype)[self._state(batch)]
