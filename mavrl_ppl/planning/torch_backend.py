"""Exact ``Q*`` of a tabular MDP as a differentiable torch function of the reward, for the Pyro model.

``Q*`` is piecewise linear in the reward: where a policy ``pi`` is optimal, ``Q* = R + gamma P V_pi`` with
``V_pi = (I - gamma P_pi)^-1 R_pi``. A forward-only policy iteration (no gradient; warm-started from the previous
call's policy, so consecutive SVI steps usually need one or two evaluations) finds ``pi``; one more evaluation with
gradients gives the value and its exact gradient (almost everywhere). Float64 throughout: ``1 / (1 - gamma)`` amplifies
round-off.
"""

from __future__ import annotations

import numpy as np
import torch

from mavrl_ppl.planning.numpy_backend import SWITCH_TOL


class ExactPlanner:
    """``Q*(r)`` for one tabular MDP.

    Args:
        transitions: ``(S, A, S)`` transition probabilities.
        reward_groups: ``(S, A, S)`` index of the reward parameter behind each transition.
        gamma: discount.
    """

    def __init__(self, transitions: np.ndarray, reward_groups: np.ndarray, gamma: float) -> None:
        self.transitions = torch.as_tensor(np.asarray(transitions), dtype=torch.float64)
        self.reward_groups = torch.as_tensor(np.asarray(reward_groups), dtype=torch.long)
        self.gamma = float(gamma)
        self.num_states, self.num_actions, _ = self.transitions.shape
        self.num_groups = int(self.reward_groups.max()) + 1
        self._policy: torch.Tensor | None = None
        self._eye = torch.eye(self.num_states, dtype=torch.float64)
        self._rows = torch.arange(self.num_states)

    def _q_of_policy(self, expected: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """``Q_pi = R + gamma P V_pi`` by one linear solve."""
        p_pi = self.transitions[self._rows, policy]
        value = torch.linalg.solve(self._eye - self.gamma * p_pi, expected[self._rows, policy])
        return expected + self.gamma * self.transitions @ value

    def __call__(self, group_rewards: torch.Tensor) -> torch.Tensor:
        """``Q*`` of shape ``(S, A)`` for a ``(G,)`` vector of group rewards (differentiable, float64)."""
        if group_rewards.shape != (self.num_groups,):
            raise ValueError(f"expected {self.num_groups} group rewards, got shape {tuple(group_rewards.shape)}")
        expected = (self.transitions * group_rewards.double()[self.reward_groups]).sum(-1)  # E[R(s, a, S')]
        with torch.no_grad():
            policy = expected.argmax(-1) if self._policy is None else self._policy
            for _ in range(self.num_states + 1):  # policy iteration ends within |S| improvements in practice
                q = self._q_of_policy(expected, policy)
                best = q.max(-1)
                tol = SWITCH_TOL * (1.0 + best.values.abs().max())
                keep = q[self._rows, policy] >= best.values - tol
                if bool(keep.all()):
                    break
                policy = torch.where(keep, policy, best.indices)
            self._policy = policy
        return self._q_of_policy(expected, policy)
