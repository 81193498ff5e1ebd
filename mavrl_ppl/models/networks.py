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


def save_networks(model: object, path: str) -> None:
    """Save a fitted model's reward encoder and Q-network (weights and constructor arguments) to ``path``.

    Control runs keep them as ``reward_model.pt``: the learned reward of a control env is the encoder itself, which a
    later evaluation (PPO retraining in a perturbed env, the imitation policy of the transfer experiment) needs.

    Args:
        model: a :class:`~mavrl_ppl.models.joint.JointFeedbackModel` (its Q-network is saved when it has one).
        path: the file to write (``torch.save``; tensors and plain values only).
    """
    encoder = model.encoder
    record = {"encoder": {"kwargs": {"in_dim": encoder.net[0].in_features, "hidden": encoder.net[0].out_features,
                                     "layers": (len(encoder.net) - 1) // 2},
                          "state": encoder.state_dict()},
              "num_actions": int(model.num_actions), "encoder_input": str(model.encoder_input)}
    q_network = getattr(model.values, "q_network", None)
    if q_network is not None:
        first, last = q_network.net[0], q_network.net[-1]
        record["q_network"] = {"kwargs": {"obs_dim": first.in_features, "num_actions": last.out_features,
                                          "hidden": first.out_features, "layers": (len(q_network.net) - 1) // 2,
                                          "output_scale": q_network.output_scale},
                               "state": q_network.state_dict()}
    torch.save(record, path)


def load_networks(path: str) -> tuple[RewardEncoder, QNetwork | None, dict]:
    """The networks :func:`save_networks` wrote: the encoder, the Q-network (``None`` if not saved) and the record's
    other entries (``num_actions``, ``encoder_input``)."""
    record = torch.load(path, weights_only=True)
    encoder = RewardEncoder(**record["encoder"]["kwargs"])
    encoder.load_state_dict(record["encoder"]["state"])
    encoder.eval()
    q_network = None
    if "q_network" in record:
        q_network = QNetwork(**record["q_network"]["kwargs"])
        q_network.load_state_dict(record["q_network"]["state"])
        q_network.eval()
    return encoder, q_network, {k: v for k, v in record.items() if k not in ("encoder", "q_network")}
