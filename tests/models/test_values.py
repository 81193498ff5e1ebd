"""The Bellman (TD) sites of Q-network mode: the fixed scale and the encoder's own per-step Gaussian (``td_scale``)."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher
from mavrl_ppl.feedback.data import simulate_feedback
from mavrl_ppl.feedback.teachers import one_hot_features
from mavrl_ppl.inference.data import to_tensors
from mavrl_ppl.inference.svi import SVISettings, fit_svi
from mavrl_ppl.models import JointFeedbackModel, ModelSettings
from mavrl_ppl.models.networks import QNetwork, RewardEncoder
from mavrl_ppl.models.rewards import StepRewards
from mavrl_ppl.models.values import NetworkValues

GAMMA = 0.9
OBS_DIM, NUM_ACTIONS = 3, 2


@pytest.fixture(autouse=True)
def fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# -- the site's log-density on a hand-made batch ---------------------------------------------------------------------

# Linear networks (layers=0) with hand-set weights, so the test can compute mu, sigma and Q with numpy alone.
ENC_W = np.array([[0.5, -1.0, 0.25], [0.3, -0.6, 0.9]])  # rows: mean head, pre-softplus scale head
ENC_B = np.array([0.1, -0.4])
Q_W = np.array([[1.0, 0.5, -0.5], [-0.25, 2.0, 0.75]])  # (action, obs)
Q_B = np.array([0.2, -0.1])


def _linear(module: torch.nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(weight))
        module.bias.copy_(torch.as_tensor(bias))


def hand_made_batch() -> dict[str, torch.Tensor]:
    """Two items of three steps: item 1's last step is padding, item 0's second step is terminal."""
    obs = torch.tensor([[[1.0, 0.0, 2.0], [0.5, 1.5, -1.0], [0.0, 1.0, 0.0]],
                        [[2.0, -1.0, 0.5], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]]])
    next_obs = torch.tensor([[[0.5, 1.5, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
                             [[1.0, 1.0, 1.0], [0.0, -2.0, 1.0], [-9.0, 9.0, -9.0]]])
    return {
        "obs": obs, "next_obs": next_obs,
        "action": torch.tensor([[0, 1, 1], [1, 0, 7]]),  # 7: a padded step may hold any index
        "next_action": torch.tensor([[1, 1, 0], [0, 1, 0]]),
        "valid": torch.tensor([[True, True, True], [True, True, False]]),
        "terminal": torch.tensor([[False, True, False], [False, False, False]]),
    }


def numpy_td_target(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """``y = Q(s, a) - gamma * Q(s', a')`` (``0`` after a terminal step), numpy only."""
    obs, next_obs = batch["obs"].numpy(), batch["next_obs"].numpy()
    action = np.clip(batch["action"].numpy(), 0, NUM_ACTIONS - 1)
    q = np.take_along_axis(obs @ Q_W.T + Q_B, action[..., None], -1)[..., 0]
    next_q = np.take_along_axis(next_obs @ Q_W.T + Q_B, batch["next_action"].numpy()[..., None], -1)[..., 0]
    return q - GAMMA * np.where(batch["terminal"].numpy(), 0.0, next_q)


def expected_log_prob(batch: dict[str, torch.Tensor], td_weight: float) -> float:
    """``td_weight * sum_valid -0.5 * ((y - mu)^2 / sigma^2 + log sigma^2 + log 2 pi)``, numpy only."""
    head = batch["obs"].numpy() @ ENC_W.T + ENC_B
    mu, sigma = head[..., 0], np.log1p(np.exp(head[..., 1])) + 1e-4  # the encoder's softplus scale floor
    per_step = -0.5 * ((numpy_td_target(batch) - mu) ** 2 / sigma**2 + np.log(sigma**2) + np.log(2 * np.pi))
    return td_weight * float(per_step[batch["valid"].numpy()].sum())


def linear_values(td_scale: str, td_weight: float = 1.0) -> tuple[NetworkValues, RewardEncoder]:
    settings = ModelSettings(layers=0, td_scale=td_scale, td_weight=td_weight, bellman_target="data")
    encoder = RewardEncoder(OBS_DIM, layers=0)
    q_network = QNetwork(OBS_DIM, NUM_ACTIONS, layers=0)
    _linear(encoder.net[0], ENC_W, ENC_B)
    _linear(q_network.net[0], Q_W, Q_B)
    return NetworkValues(q_network, settings, NUM_ACTIONS, StepRewards(encoder, settings, NUM_ACTIONS)), encoder


def bellman_trace(values: NetworkValues, batch: dict, reward: torch.Tensor) -> poutine.Trace:
    def program() -> None:
        with pyro.plate("item", batch["valid"].shape[0]):
            values.consistency("pref", batch, reward, values.at(batch), GAMMA, event_dims=1)

    trace = poutine.trace(program).get_trace()
    trace.compute_log_prob()
    return trace


def test_encoder_scaled_site_scores_the_paper_td_term_and_padding_contributes_nothing():
    torch.set_default_dtype(torch.float64)
    try:
        batch = hand_made_batch()
        values, _ = linear_values("encoder", td_weight=0.5)
        reward = torch.full(batch["valid"].shape, 123.0)  # the sampled reward plays no part in this site
        trace = bellman_trace(values, batch, reward)
        np.testing.assert_allclose(float(trace.log_prob_sum().detach()), expected_log_prob(batch, 0.5), rtol=1e-12)
        # moving the padded step anywhere changes nothing
        batch["obs"][1, 2] = torch.tensor([-50.0, 20.0, 3.0])
        batch["next_obs"][1, 2] = torch.tensor([7.0, -7.0, 70.0])
        np.testing.assert_allclose(float(bellman_trace(values, batch, reward).log_prob_sum().detach()),
                                   expected_log_prob(hand_made_batch(), 0.5), rtol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_fixed_scale_site_is_centred_on_the_sampled_reward():
    torch.set_default_dtype(torch.float64)
    try:
        batch = hand_made_batch()
        values, _ = linear_values("fixed")
        reward = torch.zeros(batch["valid"].shape)
        trace = bellman_trace(values, batch, reward)
        scale = ModelSettings().bellman_scale
        logp = -0.5 * (numpy_td_target(batch) ** 2 / scale**2 + np.log(scale**2) + np.log(2 * np.pi))
        np.testing.assert_allclose(float(trace.log_prob_sum().detach()), logp[batch["valid"].numpy()].sum(), rtol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


# -- where the TD term's gradient goes -------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True], ids=["step", "tied"])
@pytest.mark.parametrize("td_scale", ["encoder", "fixed"])
def test_td_term_trains_the_encoder_scale_only_under_the_encoder_option(td_scale, tied):
    # Under "fixed" the Bellman site reaches sigma only through the sampled reward (the guide's reparameterised draw):
    # with that draw held fixed, its gradient on the encoder is nil. Under "encoder" it reads mu and sigma directly.
    mdp = make_tabular("grid_trap", size=4)
    feedback = simulate_feedback(TabularTeacher(mdp), {"pref": 4}, np.random.default_rng(0))
    torch.manual_seed(0)
    model = JointFeedbackModel(
        ModelSettings(td_scale=td_scale, encoder_input="state"), obs_dim=mdp.num_states,
        num_actions=mdp.num_actions, num_items={"pref": 4}, attrs={"pref": feedback["pref"].attrs},
        state_features=torch.as_tensor(one_hot_features(mdp.num_states)) if tied else None,
    )
    batch = to_tensors("pref", feedback["pref"])
    batches = {"pref": (torch.arange(4), batch)}
    guide = poutine.trace(model.guide).get_trace(batches)
    draws = {n: s["value"].detach() for n, s in guide.nodes.items() if s["type"] == "sample" and n.startswith("reward")}
    trace = poutine.trace(poutine.condition(model.model, data=draws)).get_trace(batches)
    trace.compute_log_prob()
    model.encoder.zero_grad()
    trace.nodes["bellman_pref"]["log_prob_sum"].backward()
    scale_head = model.encoder.net[-1]
    grads = [scale_head.weight.grad, scale_head.bias.grad]
    if td_scale == "encoder":
        assert float(scale_head.weight.grad[1].abs().sum()) > 0 and float(scale_head.bias.grad[1].abs()) > 0
    else:
        assert all(g is None or float(g.abs().sum()) == 0 for g in grads)


# -- the default leaves fits unchanged ----------------------------------------------------------------------------


def short_fit_losses(**settings) -> list[float]:
    mdp = make_tabular("grid_trap", size=4)
    feedback = simulate_feedback(TabularTeacher(mdp), {"pref": 16, "stop": 8}, np.random.default_rng(0))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit_svi(feedback, SVISettings(progress_bar=False, q_model="network", max_steps=12, eval_every=6,
                                               **settings), seed=3, mdp=mdp)
    finally:
        torch.set_num_threads(previous)
    return result.history["elbo"] + result.history["validation"]


def test_the_default_td_scale_is_fixed_and_leaves_a_fit_unchanged():
    assert SVISettings().td_scale == "fixed" and ModelSettings().td_scale == "fixed"
    default = short_fit_losses()
    assert short_fit_losses(td_scale="fixed") == default  # bit for bit
    assert short_fit_losses(td_scale="encoder") != default  # the option reaches the fit


def test_an_unknown_td_scale_is_rejected_by_name():
    with pytest.raises(ValueError, match="td_scale"):
        SVISettings(td_scale="learned")
    with pytest.raises(ValueError, match="td_scale"):
        ModelSettings(td_scale="learned")
