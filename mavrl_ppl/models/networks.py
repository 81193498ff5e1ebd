"""The two networks of MAVRL: the amortized reward encoder q(r | x) and the Q-network Q(s, .)."""

from __future__ import annotations

import torch
from torch import nn

from mavrl_ppl.models.settings import ENCODER_INPUTS


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    blocks.append(nn.Linear(width, out_dim))
    return nn.Sequential(*blocks)


def transition_features(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, num_actions: int, kind: str
) -> torch.Tensor:
    """Encoder input for each transition: features of ``s``, ``(s, a)`` or ``(s, a, s')`` (one-hot action)."""
    if kind == "state":
        return obs
    one_hot = nn.functional.one_hot(action, num_actions).to(obs.dtype)
    if kind == "state_action":
        return torch.cat([obs, one_hot], -1)
    if kind == "transition":
        return torch.cat([obs, one_hot, next_obs], -1)
    raise ValueError(f"encoder input must be one of {ENCODER_INPUTS}, got {kind!r}")


class RewardEncoder(nn.Module):
    """``q_phi(r | x) = Normal(mu_phi(x), sigma_phi(x))``: a shared MLP trunk with a mean and a log-scale head.

    Args:
        in_dim: size of the transition features.
        hidden: hidden width.
        layers: number of hidden layers.
        init_scale: posterior scale the log-scale head starts at (small, so early ELBO gradients are not all noise).
    """

    def __init__(self, in_dim: int, hidden: int = 64, layers: int = 2, init_scale: float = 0.3) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, layers, 2)
        with torch.no_grad():
            self.net[-1].bias[1].fill_(float(torch.log(torch.expm1(torch.tensor(init_scale)))))  # softplus^-1

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(features)
        return out[..., 0], nn.functional.softplus(out[..., 1]) + 1e-4


class QNetwork(nn.Module):
    """``Q_theta(s, .)``: state features -> one value per action.

    Args:
        obs_dim: size of the state features.
        num_actions: number of actions.
        hidden: hidden width.
        layers: number of hidden layers.
        output_scale: the MLP's output is multiplied by this. With ``1 / (1 - gamma)`` (the effective horizon) an
            O(1) output is a value of the size that O(1) rewards give, so the network need not first grow its last
            layer by a factor of 20 (gamma 0.95) before the Bellman term and the rewards can agree.
    """

    def __init__(
        self, obs_dim: int, num_actions: int, hidden: int = 64, layers: int = 2, output_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, layers, num_actions)
        self.output_scale = float(output_scale)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.output_scale * self.net(obs)
