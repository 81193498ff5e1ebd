"""The torch ``ExactPlanner``'s own contract: shapes and dtype, warm starts that never change the answer, and its
gradient against finite differences away from policy switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mavrl_ppl.envs import make_grid, make_tabular
from mavrl_ppl.planning import q_star
from mavrl_ppl.planning.torch_backend import ExactPlanner


def random_mdp(seed: int = 4) -> tuple[np.ndarray, np.ndarray, float]:
    """5 states, 2 actions, Dirichlet rows, one reward group per ``(s, a, s')``, gamma 0.9."""
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.ones(5), size=(5, 2))
    return transitions, np.arange(transitions.size).reshape(transitions.shape), 0.9


def test_shapes_dtype_and_errors():
    mdp = make_grid("trap", 4)
    planner = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)
    assert (planner.num_states, planner.num_actions, planner.num_groups) == (16, 5, 16)
    theta = torch.randn(16, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    q = planner(theta)
    assert q.shape == (16, 5) and q.dtype == torch.float64  # float32 rewards are solved in float64
    np.testing.assert_allclose(
        q.numpy(), q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, theta.double().numpy()), rtol=0, atol=1e-12
    )
    for bad in (torch.zeros(15), torch.zeros(17), torch.zeros(1, 16), torch.zeros(2, 16), torch.tensor(0.0)):
        with pytest.raises(ValueError, match="group rewards"):
            planner(bad)


def test_warm_start_never_changes_the_result():
    """The planner starts policy iteration from its previous call's policy; after a large change of the reward that
    policy is far from optimal, and the result must still be the exact Q* (the same as a fresh planner's)."""
    mdp = make_tabular("grid_cliff", p_rand=0.1)
    rng = np.random.default_rng(6)
    thetas = [
        rng.normal(size=mdp.num_groups),
        -5.0 * rng.normal(size=mdp.num_groups),  # a large change: the old policy is bad here
        mdp.group_rewards,
        np.zeros(mdp.num_groups),  # every action ties
        rng.normal(size=mdp.num_groups),
    ]
    warm = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)
    for theta in thetas:
        q_warm = warm(torch.as_tensor(theta))
        q_cold = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)(torch.as_tensor(theta))
        np.testing.assert_allclose(q_warm.detach().numpy(), q_cold.detach().numpy(), rtol=0, atol=1e-12)
        exact = q_star(mdp.transitions, mdp.reward_groups, mdp.gamma, theta)
        np.testing.assert_allclose(q_warm.detach().numpy(), exact, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", ["grid_trap", "grid_trap_p0.2", "random"])
def test_gradient_matches_finite_differences(case):
    """Q* is piecewise linear in the reward, so central differences are exact up to round-off unless a step crosses a
    policy switch; with eps = 1e-6 and N(0, 1) rewards none does (checked: the greedy actions at theta +- eps agree)."""
    if case == "random":
        transitions, groups, gamma = random_mdp()
    else:
        mdp = make_grid("trap", 5, p_rand=0.2 if case.endswith("0.2") else 0.0)
        transitions, groups, gamma = mdp.transitions, mdp.reward_groups, mdp.gamma
    planner = ExactPlanner(transitions, groups, gamma)
    rng = np.random.default_rng(7)
    weights = torch.as_tensor(rng.normal(size=transitions.shape[:2]))

    def objective(q: torch.Tensor) -> torch.Tensor:
        # A nonlinear read-out, as the likelihoods are; over the last two axes, so that it also maps a batch of Q*.
        return (weights * q).sum((-2, -1)) + 0.1 * (q**2).sum((-2, -1))

    theta = torch.tensor(rng.normal(size=planner.num_groups), requires_grad=True)
    objective(planner(theta)).backward()
    eps = 1e-6
    shifts = eps * np.eye(planner.num_groups)
    up = q_star(transitions, groups, gamma, theta.detach().numpy() + shifts)
    down = q_star(transitions, groups, gamma, theta.detach().numpy() - shifts)
    # Greedy actions agree at theta + eps and theta - eps unless two actions tie exactly (e.g. both stay put).
    near_tie = np.sort(up, -1)[..., -1] - np.sort(up, -1)[..., -2] < 1e-9
    assert np.all((up.argmax(-1) == down.argmax(-1)) | near_tie), "a finite-difference step crossed a policy switch"
    fd = ((objective(torch.as_tensor(up)) - objective(torch.as_tensor(down))) / (2 * eps)).numpy()
    grad = theta.grad.numpy()
    assert np.abs(grad).max() > 0.1  # a real gradient, not an all-zero one
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-5 * max(1.0, np.abs(fd).max()))


def test_gradient_is_a_discounted_visit_count():
    """``dQ*(s, a) / d theta_g`` is the expected discounted number of group-``g`` transitions from ``(s, a)`` on: a
    gradient through a wrong policy or a wrong discount would break the sum."""
    mdp = make_grid("sparse", 4, p_rand=0.1)
    planner = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)
    theta = torch.zeros(planner.num_groups, requires_grad=True)
    q = planner(theta + torch.linspace(-3.0, 3.0, planner.num_groups))
    assert q.requires_grad and q.grad_fn is not None
    (grad,) = torch.autograd.grad(q[0, 0], theta)
    # Non-negative weights summing to sum_t gamma^t = 1 / (1 - gamma).
    assert np.all(grad.numpy() >= -1e-15)
    assert grad.sum().item() == pytest.approx(1.0 / (1.0 - mdp.gamma), rel=1e-12)
