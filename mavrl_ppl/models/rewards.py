"""How reward latents attach to segment steps: one of two strategies, chosen once when the model is built.

- :class:`TiedRewards`: ONE latent per reward input, i.e. per state (``encoder_input="state"``) or per state-action
  pair (``"state_action"``): the site ``reward`` on the ``group`` plate, prior ``Normal(0, 1)``, guide
  ``Normal(mu(x_g), sigma(x_g))`` from the encoder on every group's features. Every visit of a state reads the same
  latent, as ``R`` is a function of the state (tabular data with ``state`` variables).
- :class:`StepRewards`: one latent per segment step, sites ``reward_<type>`` in the type's item plate, masked by
  ``valid`` (REFERENCE §1 literally; e.g. control envs, where no two transitions coincide).

Both scale their sites by ``kl_weight`` and share one interface (:class:`RewardAttachment`).
"""

from __future__ import annotations

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

    def mean(self, batch: Mapping) -> torch.Tensor:
        return self.encoder(self.features(batch))[0]


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
        with pyro.plate("group", self.num_groups), weighted(self.kl_weight):
            return pyro.sample("reward", reward_prior((self.num_groups,)))

    def model_steps(self, name: str, batch: Mapping, draw: torch.Tensor, event_dims: int) -> torch.Tensor:
        return draw[self.group_index(batch)]

    def guide_draw(self) -> None:
        mu, sigma = self.encoder(self.group_features)
        with pyro.plate("group", self.num_groups), weighted(self.kl_weight):
            pyro.sample("reward", dist.Normal(mu, sigma))

    def guide_steps(self, name: str, batch: Mapping, event_dims: int, item_plate: ItemPlate) -> None:
        return None  # the group draw covers every step

    def draws(self, batch: Mapping, num_draws: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.encoder(self.group_features)
        draws = gaussian_draws(mu, sigma, num_draws, generator)
        return draws, draws[:, self.group_index(batch)]

    def mean(self, batch: Mapping) -> torch.Tensor:
        return self.group_mean()[self.group_index(batch)]
