"""Where the likelihoods' action values come from: one of two strategies, chosen once when the model is built.

- :class:`NetworkValues`: MAVRL's Q-network (a point-estimated module of the model) with the Bellman-consistency
  sites ``bellman_<type>``: the TD target ``y = Q(s, a) - gamma * Q(s', a')`` (``Q(s', .) = 0`` after a terminal
  step) is observed as ``y ~ Normal(r, bellman_scale)``, masked by ``valid`` and scaled by ``td_weight``. Its
  expectation under ``q = Normal(mu, sigma)`` is ``((y - mu)^2 + sigma^2) / (2 bellman_scale^2)`` per step: the
  reference's TD term with a fixed instead of a learned scale (REFERENCE §1 ``td_weight * TD_b``). With
  ``td_scale="encoder"`` the site is the reference's TD term itself: ``y ~ Normal(mu, sigma)`` with the guide's own
  per-step mean and scale, i.e. ``0.5 * ((y - mu)^2 / sigma^2 + log sigma^2)`` per valid step (+ ``0.5 log 2 pi``).
- :class:`PlannedValues`: exact ``Q*(r)`` of a known tabular MDP at each sampled reward (needs tied rewards, one
  per reward group of the MDP). The Bellman equation then holds exactly, so there are no Bellman sites. This is the
  NUTS baseline's model.

Both share one interface (:class:`ActionValues`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import pyro
import pyro.distributions as dist
import torch

from mavrl_ppl.models.networks import QNetwork
from mavrl_ppl.models.rewards import RewardAttachment, TiedRewards
from mavrl_ppl.models.settings import ModelSettings
from mavrl_ppl.models.sites import weighted
from mavrl_ppl.planning.torch_backend import ExactPlanner

ValuesAt = Callable[[Mapping], torch.Tensor]


class ActionValues(Protocol):
    """What the model, the guide's prediction and the policy read of a source of action values.

    Action values have shape ``(..., item, [side,] step, action)``.
    """

    def register(self) -> None:
        """Declare the learned parts (if any) to Pyro, first thing in the model."""

    def model_values(self, draw: torch.Tensor | None) -> ValuesAt:
        """The action values of every step of a batch, given the model's shared reward draw."""

    def consistency(
        self, name: str, batch: Mapping, reward: torch.Tensor, q: torch.Tensor, gamma: float, event_dims: int
    ) -> None:
        """Sites tying the values to the rewards, inside the type's item plate."""

    def predictive(self, draws: torch.Tensor, batch: Mapping) -> torch.Tensor:
        """Action values for guide draws of the reward (see ``RewardAttachment.draws``)."""

    def point(self, batch: Mapping) -> torch.Tensor:
        """Action values at the guide's mean reward."""


class NetworkValues:
    """The Q-network and the Bellman term (see the module docstring).

    With ``td_scale="encoder"`` the Bellman sites read the encoder's ``mu`` and ``sigma`` without detaching them, so
    the TD term trains the encoder as well as the Q-network, as the reference's loss does: its ``log sigma^2`` part
    pulls ``sigma`` down wherever the Q-network's TD target agrees with ``mu``.

    Args:
        q_network: the Q-network.
        settings: ``bellman_target``, ``td_weight``, ``td_scale`` and ``bellman_scale``.
        num_actions: size of the discrete action space.
        rewards: the model's reward attachment, whose :meth:`~mavrl_ppl.models.rewards.RewardAttachment.moments`
            give the per-step ``mu`` and ``sigma`` for ``td_scale="encoder"``.
    """

    def __init__(
        self, q_network: QNetwork, settings: ModelSettings, num_actions: int, rewards: RewardAttachment
    ) -> None:
        self.q_network = q_network
        self.bellman_target = settings.bellman_target
        self.td_weight = settings.td_weight
        self.td_scale = settings.td_scale
        self.bellman_scale = settings.bellman_scale
        self.num_actions = num_actions
        self.rewards = rewards

    def at(self, batch: Mapping) -> torch.Tensor:
        return self.q_network(batch["obs"])

    def register(self) -> None:
        pyro.module("q_network", self.q_network)

    def model_values(self, draw: torch.Tensor | None) -> ValuesAt:
        return self.at

    def td_target(self, batch: Mapping, q: torch.Tensor, gamma: float) -> torch.Tensor:
        """``Q(s, a) - gamma * V(s')`` per step, ``V(s') = 0`` after a terminal step (``bellman_target``)."""
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

    def consistency(
        self, name: str, batch: Mapping, reward: torch.Tensor, q: torch.Tensor, gamma: float, event_dims: int
    ) -> None:
        if self.td_scale == "encoder":
            loc, scale = self.rewards.moments(batch)
        else:
            loc, scale = reward, self.bellman_scale
        with weighted(self.td_weight):
            pyro.sample(
                f"bellman_{name}",
                dist.Normal(loc, scale).mask(batch["valid"]).to_event(event_dims),
                obs=self.td_target(batch, q, gamma),
            )

    def predictive(self, draws: torch.Tensor, batch: Mapping) -> torch.Tensor:
        return self.at(batch)

    def point(self, batch: Mapping) -> torch.Tensor:
        return self.at(batch)


class PlannedValues:
    """Exact ``Q*`` of the sampled reward (see the module docstring).

    Args:
        planner: the MDP's exact planner.
        rewards: the model's tied rewards, one per reward group of the MDP.
    """

    def __init__(self, planner: ExactPlanner, rewards: TiedRewards) -> None:
        if not isinstance(rewards, TiedRewards) or rewards.num_groups != planner.num_groups:
            raise ValueError("exact planning needs tied reward latents, one per reward group of the MDP")
        self.planner = planner
        self.rewards = rewards
        self._planned: tuple[torch.Tensor, torch.Tensor] | None = None  # (draws, their Q*) of the last predictive

    def register(self) -> None:
        return None  # nothing learned

    def model_values(self, draw: torch.Tensor) -> ValuesAt:
        q_star = self.planner(draw).to(draw.dtype)  # once per model run, shared by every type
        return lambda batch: q_star[self.rewards.state(batch)]

    def consistency(
        self, name: str, batch: Mapping, reward: torch.Tensor, q: torch.Tensor, gamma: float, event_dims: int
    ) -> None:
        return None  # Q* satisfies the Bellman equation exactly

    def predictive(self, draws: torch.Tensor, batch: Mapping) -> torch.Tensor:
        # A validation pass scores every feedback type on the same seeded guide draws: plan them once, not once per
        # type (on grid_trap 10x10, 16 draws cost ~65 ms to plan; three types x 10 passes made ~2 s of a 5 s fit).
        known = self._planned
        if torch.is_grad_enabled() or known is None or not torch.equal(known[0], draws):
            known = (draws.detach().clone(), torch.stack([self.planner(d) for d in draws]))
            # only a gradient-free pass is kept: a graph must not be shared by two backward passes
            self._planned = None if torch.is_grad_enabled() else known
        return known[1].to(draws.dtype)[:, self.rewards.state(batch)]

    def point(self, batch: Mapping) -> torch.Tensor:
        mean = self.rewards.group_mean()
        return self.planner(mean).to(mean.dtype)[self.rewards.state(batch)]
