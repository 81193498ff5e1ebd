"""How reward latents attach to segment steps: one of two strategies, chosen once when the model is built.

- :class:`TiedRewards`: ONE latent per reward input, i.e. per state (``encoder_input="state"``) or per state-action
  pair (``"state_action"``): the site ``reward`` on the ``group`` plate, prior ``Normal(0, 1)``, guide
  ``Normal(mu(x_g), sigma(x_g))`` from the encoder on every group's features. Every visit of a state reads the same
  latent, as ``R`` is a function of the state (tabular data with ``state`` variables). With ``guide="lowrank"`` or
  ``"fullrank"`` the site is one vector (event dim ``group``, the same ``Normal(0, 1)`` prior) and the guide a
  correlated Gaussian around the same amortized mean and diagonal scale: ``sigma^2 + W W^T`` with a free ``(G, k)``
  factor ``W``, or the Cholesky factor ``diag(sigma) + L`` with a free strictly lower triangle ``L``. The posterior
  over rewards is correlated (raising one state's reward can be traded against lowering its neighbours'), which a
  mean-field guide cannot represent.
- :class:`StepRewards`: one latent per segment step, sites ``reward_<type>`` in the type's item plate, masked by
  ``valid`` (REFERENCE §1 literally; e.g. control envs, where no two transitions coincide).

Both scale their sites by ``kl_weight`` and share one interface (:class:`RewardAttachment`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Protocol

import pyro
import pyro.distributions as dist
import torch

from mavrl_ppl.feedback.base import REWARD_PRIOR_LOC, REWARD_PRIOR_SCALE
from mavrl_ppl.models.networks import RewardEncoder, transition_features
from mavrl_ppl.models.settings import ModelSettings
from mavrl_ppl.models.sites import gaussian_draws, weighted

ItemPlate = Callable[[], AbstractContextManager]


def reward_prior(shape: tuple[int, ...]) -> dist.Normal:
    """The reward latents' prior over ``shape`` (:data:`~mavrl_ppl.feedback.base.REWARD_PRIOR_LOC` and
    ``REWARD_PRIOR_SCALE``, shared with the NumPyro model)."""
    return dist.Normal(torch.full(shape, REWARD_PRIOR_LOC), REWARD_PRIOR_SCALE)


class RewardAttachment(Protocol):
    """What the model, the guide and prediction ask of a way to attach rewards to steps.

    ``draw`` is what :meth:`model_draw` sampled before the per-type loop (the group rewards, or ``None``).
    """

    def model_draw(self) -> torch.Tensor | None:
        """Model sites shared by every type (before the per-type loop)."""

    def model_steps(self, name: str, batch: Mapping, draw: torch.Tensor | None, event_dims: int) -> torch.Tensor:
        """The reward of every step of ``batch``, inside the type's item plate (model)."""

    def guide_draw(self) -> None:
        """Guide sites shared by every type."""

    def guide_steps(self, name: str, batch: Mapping, event_dims: int, item_plate: ItemPlate) -> None:
        """Guide sites of one type's steps; ``item_plate()`` opens the type's item plate."""

    def draws(self, batch: Mapping, num_draws: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Guide draws: the raw draws (what a planner reads) and the reward of every step, draws first."""

    def moments(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's mean and scale of every step of ``batch`` (differentiable: a model site may train them)."""

    def mean(self, batch: Mapping) -> torch.Tensor:
        """The guide's mean reward of every step of ``batch``."""


class StepRewards:
    """One reward latent per segment step (see the module docstring).

    Args:
        encoder: the guide's reward encoder.
        settings: the encoder input and ``kl_weight``.
        num_actions: size of the discrete action space.
    """

    def __init__(self, encoder: RewardEncoder, settings: ModelSettings, num_actions: int) -> None:
        self.encoder = encoder
        self.encoder_input = settings.encoder_input
        self.kl_weight = settings.kl_weight
        self.num_actions = num_actions

    def features(self, batch: Mapping) -> torch.Tensor:
        return transition_features(
            batch["obs"], batch["action"], batch["next_obs"], self.num_actions, self.encoder_input
        )

    def model_draw(self) -> None:
        return None  # every latent belongs to one step of one type

    def model_steps(self, name: str, batch: Mapping, draw: None, event_dims: int) -> torch.Tensor:
        valid = batch["valid"]
        with weighted(self.kl_weight):
            prior = reward_prior(valid.shape).mask(valid).to_event(event_dims)
            return pyro.sample(f"reward_{name}", prior)

    def guide_draw(self) -> None:
        return None

    def guide_steps(self, name: str, batch: Mapping, event_dims: int, item_plate: ItemPlate) -> None:
        mu, sigma = self.encoder(self.features(batch))
        with item_plate(), weighted(self.kl_weight):
            pyro.sample(f"reward_{name}", dist.Normal(mu, sigma).mask(batch["valid"]).to_event(event_dims))

    def draws(self, batch: Mapping, num_draws: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.encoder(self.features(batch))
        draws = gaussian_draws(mu, sigma, num_draws, generator)
        return draws, draws

    def moments(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(self.features(batch))

    def mean(self, batch: Mapping) -> torch.Tensor:
        return self.moments(batch)[0]


def group_features(state_features: torch.Tensor, encoder_input: str, num_actions: int) -> torch.Tensor:
    """Encoder input of every reward group: each state, or each (state, action) pair in ``s * A + a`` order."""
    states = torch.as_tensor(state_features, dtype=torch.get_default_dtype())
    if encoder_input == "state":
        return states
    if encoder_input == "state_action":
        obs = states.repeat_interleave(num_actions, 0)
        actions = torch.arange(num_actions).repeat(states.shape[0])
        return transition_features(obs, actions, obs, num_actions, "state_action")
    raise ValueError("tied rewards need encoder_input 'state' or 'state_action', not 'transition'")


class TiedRewards:
    """One reward latent per state or state-action pair, shared by all its visits (see the module docstring).

    Args:
        encoder: the guide's reward encoder.
        settings: the encoder input (``"state"`` or ``"state_action"``) and ``kl_weight``.
        num_actions: size of the discrete action space.
        state_features: ``(num_states, obs_dim)`` features of every state.
    """

    def __init__(
        self, encoder: RewardEncoder, settings: ModelSettings, num_actions: int, state_features: torch.Tensor
    ) -> None:
        self.encoder = encoder
        self.kl_weight = settings.kl_weight
        self.per_state = settings.encoder_input == "state"
        self.num_actions = num_actions
        self.group_features = group_features(state_features, settings.encoder_input, num_actions)
        self.num_groups = self.group_features.shape[0]
        self.num_states = self.num_groups if self.per_state else self.num_groups // num_actions
        self.guide = settings.guide
        self.guide_rank = min(int(settings.guide_rank), self.num_groups)

    def state(self, batch: Mapping) -> torch.Tensor:
        """The state of every step (padded steps clamped into range; they are masked anyway)."""
        return batch["state"].clamp(0, self.num_states - 1)

    def group_index(self, batch: Mapping) -> torch.Tensor:
        """The reward group of every step (padded steps clamped into range; they are masked anyway)."""
        if self.per_state:
            return self.state(batch)
        return (self.state(batch) * self.num_actions + batch["action"]).clamp(0, self.num_groups - 1)

    def group_mean(self) -> torch.Tensor:
        """The guide's mean reward of every group."""
        return self.encoder(self.group_features)[0]

    def model_draw(self) -> torch.Tensor:
        with weighted(self.kl_weight):
            if self.guide == "meanfield":
                with pyro.plate("group", self.num_groups):
                    return pyro.sample("reward", reward_prior((self.num_groups,)))
            # The same N(0, 1) prior as a MultivariateNormal: torch then has the guide's KL in closed form (for
            # LowRankMultivariateNormal and MultivariateNormal guides), and the ELBO needs no sampled entropy.
            prior = reward_prior((self.num_groups,))
            scale_tril = torch.eye(self.num_groups) * REWARD_PRIOR_SCALE
            return pyro.sample("reward", dist.MultivariateNormal(prior.loc, scale_tril=scale_tril))

    def model_steps(self, name: str, batch: Mapping, draw: torch.Tensor, event_dims: int) -> torch.Tensor:
        return draw[self.group_index(batch)]

    def _correlation(self) -> torch.Tensor:
        """The guide's free correlation part: the low-rank factor ``W`` or the lower triangle ``L``.

        Stored divided by the square root of its row length: Adam moves every entry by about the learning rate
        whatever its gradient's size, so unscaled a row of 99 noisy entries would add ~99 times one entry's variance
        to a state's (measured: a fullrank fit drifted to the prior's sd 1.0 from mean-field's 0.33). ``W`` starts
        small and random (at exactly 0 its gradient vanishes with the entropy's), from a fixed generator so torch's
        global RNG, and with it every later draw of a seeded fit, is untouched; ``L`` starts at 0.
        """
        if self.guide == "lowrank":
            shape = (self.num_groups, self.guide_rank)
            raw = pyro.param("reward_cov_factor",
                             lambda: 0.01 * torch.randn(shape, generator=torch.Generator().manual_seed(0)))
            return raw / math.sqrt(self.guide_rank)
        raw = pyro.param("reward_scale_tril", lambda: torch.zeros(self.num_groups, self.num_groups))
        return raw / math.sqrt(max(self.num_groups - 1, 1))

    def guide_distribution(self) -> dist.Distribution:
        """The guide's distribution of the group rewards (batch ``group`` for meanfield, else event ``group``)."""
        mu, sigma = self.encoder(self.group_features)
        if self.guide == "meanfield":
            return dist.Normal(mu, sigma)
        if self.guide == "lowrank":
            return dist.LowRankMultivariateNormal(mu, self._correlation(), sigma.square())
        return dist.MultivariateNormal(mu, scale_tril=self._cholesky(sigma))

    def _cholesky(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fullrank guide's Cholesky factor: the amortized scale on the diagonal, the free ``L`` below it."""
        return torch.diag_embed(sigma) + self._correlation().tril(-1)

    def guide_draw(self) -> None:
        q = self.guide_distribution()
        with weighted(self.kl_weight):
            if self.guide == "meanfield":
                with pyro.plate("group", self.num_groups):
                    pyro.sample("reward", q)
            else:
                pyro.sample("reward", q)

    def group_draws(self, num_draws: int, generator: torch.Generator) -> torch.Tensor:
        """``(num_draws, G)`` reparameterised guide draws of every group's reward from ``generator``."""
        mu, sigma = self.encoder(self.group_features)
        if self.guide == "meanfield":
            return gaussian_draws(mu, sigma, num_draws, generator)
        eps = torch.randn((num_draws, self.num_groups), generator=generator, dtype=mu.dtype)
        if self.guide == "lowrank":
            factor = self._correlation()
            rank_eps = torch.randn((num_draws, factor.shape[1]), generator=generator, dtype=mu.dtype)
            return mu + sigma * eps + rank_eps @ factor.T
        return mu + eps @ self._cholesky(sigma).T

    def guide_steps(self, name: str, batch: Mapping, event_dims: int, item_plate: ItemPlate) -> None:
        return None  # the group draw covers every step

    def draws(self, batch: Mapping, num_draws: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        draws = self.group_draws(num_draws, generator)
        return draws, draws[:, self.group_index(batch)]

    def moments(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        # The amortized diagonal heads; a lowrank/fullrank guide's marginal scale also has the correlation part.
        mu, sigma = self.encoder(self.group_features)
        index = self.group_index(batch)
        return mu[index], sigma[index]

    def mean(self, batch: Mapping) -> torch.Tensor:
        return self.moments(batch)[0]
