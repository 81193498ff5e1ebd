"""The Pyro model and guide of :class:`JointFeedbackModel`, traced directly on a small simulated feedback set (no
fit): sites and plates of each mode, shapes, masking of padded steps, site scales, exact planning, subsampling."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, get_feedback_type
from mavrl_ppl.feedback.base import Latents
from mavrl_ppl.feedback.data import simulate_feedback
from mavrl_ppl.feedback.teachers import one_hot_features
from mavrl_ppl.inference.data import take, to_tensors
from mavrl_ppl.models import JointFeedbackModel, ModelSettings
from mavrl_ppl.planning.torch_backend import ExactPlanner

COUNTS = {"pref": 6, "demo": 1, "rating": 5, "stop": 4}
TYPES = tuple(COUNTS)
PADDED = 3  # the last steps of item 0 of every type are padding
NUM_STATES, NUM_ACTIONS = 16, 5  # grid_trap, size 4

#: mode -> (tied rewards, exact planner, encoder input)
MODES = {
    "tied-planner": (True, True, "state"),
    "tied-network": (True, False, "state_action"),
    "step-network": (False, False, "transition"),
}


@pytest.fixture(autouse=True)
def fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def mdp():
    mdp = make_tabular("grid_trap", size=4)
    assert (mdp.num_states, mdp.num_actions) == (NUM_STATES, NUM_ACTIONS)
    return mdp


@pytest.fixture(scope="module")
def feedback(mdp):
    return simulate_feedback(TabularTeacher(mdp), COUNTS, np.random.default_rng(0))


@pytest.fixture
def data(feedback):
    """Each type's items as tensors, with the last PADDED steps of item 0 marked invalid (a stop kept before)."""
    out = {}
    for name, ds in feedback.items():
        batch = to_tensors(name, ds)
        batch["valid"][0, ..., -PADDED:] = False
        if name == "stop":
            batch["stop_time"][0] = 2
        out[name] = batch
    return out


def build(mode: str, mdp, feedback, num_items=None, **settings) -> JointFeedbackModel:
    tied, planned, encoder_input = MODES[mode]
    torch.manual_seed(0)
    return JointFeedbackModel(
        ModelSettings(**{"encoder_input": encoder_input, **settings}),
        obs_dim=mdp.num_states,
        num_actions=mdp.num_actions,
        num_items=num_items or {n: ds.sizes["item"] for n, ds in feedback.items()},
        attrs={n: ds.attrs for n, ds in feedback.items()},
        state_features=torch.as_tensor(one_hot_features(mdp.num_states)) if tied else None,
        planner=ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma) if planned else None,
    )


def whole(data) -> dict:
    return {n: (torch.arange(b["valid"].shape[0]), b) for n, b in data.items()}


def sample_sites(trace) -> dict:
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def latent_values(model, batches) -> dict[str, torch.Tensor]:
    """One guide draw of every latent site."""
    guide = poutine.trace(model.guide).get_trace(batches)
    return {n: s["value"].detach() for n, s in sample_sites(guide).items()}


def model_log_prob(model, batches, values) -> torch.Tensor:
    """The model's joint log-density (scaled and masked as in the ELBO) at fixed latent values."""
    return poutine.trace(poutine.condition(model.model, data=values)).get_trace(batches).log_prob_sum()


# -- sites, plates and shapes of each mode --------------------------------------------------------------------------


def test_tied_planner_sites_and_shapes(mdp, feedback, data):
    model = build("tied-planner", mdp, feedback)
    batches = whole(data)
    trace = poutine.trace(model.model).get_trace(batches)
    sites = sample_sites(trace)
    latent = [n for n, s in sites.items() if not s["is_observed"]]
    # the sampling order is the RNG consumption order: group rewards first, then each type's nuisance parameters
    assert latent == ["reward", "rating_cutpoints_z"]
    assert set(sites) == {"reward", "rating_cutpoints_z", "rating_cutpoints", *(f"obs_{n}" for n in TYPES)}
    assert not any(n.startswith("bellman_") or n.startswith("reward_") for n in trace.nodes)
    assert not [n for n, s in trace.nodes.items() if s["type"] == "param"]  # no Q-network in the model
    reward = sites["reward"]
    assert reward["value"].shape == (mdp.num_states,)
    assert [f.name for f in reward["cond_indep_stack"]] == ["group"]
    assert sites["rating_cutpoints_z"]["value"].shape == (feedback["rating"].attrs["num_categories"] - 1,)
    assert sites["rating_cutpoints"]["infer"].get("_deterministic") and sites["rating_cutpoints"]["is_observed"]
    for name in TYPES:
        obs = sites[f"obs_{name}"]
        assert obs["is_observed"] and [f.name for f in obs["cond_indep_stack"]] == [f"{name}_item"]
        label = data[name][get_feedback_type(name).label]
        assert obs["value"].shape == label.shape and obs["fn"].batch_shape == label.shape[:1]

    guide = sample_sites(poutine.trace(model.guide).get_trace(batches))
    assert list(guide) == ["reward", "rating_cutpoints_z"]
    assert [f.name for f in guide["reward"]["cond_indep_stack"]] == ["group"]


def test_step_network_sites_and_shapes(mdp, feedback, data):
    model = build("step-network", mdp, feedback)
    batches = whole(data)
    trace = poutine.trace(model.model).get_trace(batches)
    sites = sample_sites(trace)
    assert "reward" not in sites and "q_network$$$net.0.weight" in trace.nodes
    latent = [n for n, s in sites.items() if not s["is_observed"]]
    assert latent == ["reward_pref", "reward_demo", "rating_cutpoints_z", "reward_rating", "reward_stop"]
    for name in TYPES:
        valid = data[name]["valid"]
        k = valid.ndim - 1  # [side,] step
        reward, bellman = sites[f"reward_{name}"], sites[f"bellman_{name}"]
        assert reward["value"].shape == valid.shape and not reward["is_observed"]
        assert reward["fn"].batch_shape == valid.shape[:1] and reward["fn"].event_shape == valid.shape[1:]
        assert bellman["is_observed"] and bellman["value"].shape == valid.shape
        assert bellman["fn"].event_shape == valid.shape[1:]
        for site in (reward, bellman, sites[f"obs_{name}"]):
            assert [f.name for f in site["cond_indep_stack"]] == [f"{name}_item"]
        assert k == len(get_feedback_type(name).segment_dims) - 1

    guide = sample_sites(poutine.trace(model.guide).get_trace(batches))
    assert list(guide) == latent
    for name in TYPES:
        assert guide[f"reward_{name}"]["value"].shape == data[name]["valid"].shape


def test_tied_network_has_group_rewards_and_bellman_sites(mdp, feedback, data):
    model = build("tied-network", mdp, feedback)
    trace = poutine.trace(model.model).get_trace(whole(data))
    sites = sample_sites(trace)
    # state_action: one latent per (state, action) pair
    assert sites["reward"]["value"].shape == (mdp.num_states * mdp.num_actions,)
    assert {f"bellman_{n}" for n in TYPES} <= set(sites)
    assert not any(n.startswith("reward_") for n in sites)


def test_planning_needs_tied_rewards_one_per_group(mdp, feedback):
    with pytest.raises(ValueError, match="tied reward latents"):
        JointFeedbackModel(
            ModelSettings(), obs_dim=mdp.num_states, num_actions=mdp.num_actions,
            num_items={n: ds.sizes["item"] for n, ds in feedback.items()},
            attrs={n: ds.attrs for n, ds in feedback.items()},
            planner=ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma),
        )


def test_the_unused_q_network_is_built_in_planner_mode_too(mdp, feedback):
    # Building a model consumes the torch RNG identically with and without a planner: the ELBO's later draws (and
    # so every seeded fit) do not depend on whether the Q-network is used.
    planned = build("tied-planner", mdp, feedback)
    after_planned = torch.rand(4)
    network = build("tied-network", mdp, feedback, encoder_input="state")
    after_network = torch.rand(4)
    assert torch.equal(after_planned, after_network)
    for a, b in zip(planned.encoder.parameters(), network.encoder.parameters(), strict=True):
        assert torch.equal(a, b)


# -- masking of padded steps ----------------------------------------------------------------------------------------


def _perturb(batch: dict, key: str, index: tuple) -> dict:
    out = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    value = out[key]
    if value.dtype == torch.long:  # another action / state, in range
        value[index] = (value[index] + 1) % (NUM_ACTIONS if key == "action" else NUM_STATES)
    else:
        value[index] = value[index] + 1.5
    return out


def _steps(batch: dict) -> tuple[tuple, tuple]:
    """An invalid (padded) step and a valid step of item 0."""
    lead = (0,) * (batch["valid"].ndim - 1)
    return (*lead, -1), (*lead, 0)


#: what each mode's model reads at every step (and so what must be masked at padded steps)
READS = {
    "tied-planner": ("state",),
    "tied-network": ("state", "action", "obs", "next_obs"),
    "step-network": ("action", "obs", "next_obs"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_padded_steps_of_the_data_contribute_nothing(mode, mdp, feedback, data):
    model = build(mode, mdp, feedback)
    batches = whole(data)
    values = latent_values(model, batches)
    base = model_log_prob(model, batches, values)
    assert torch.isfinite(base)
    for name in TYPES:
        invalid, valid = _steps(data[name])
        assert not data[name]["valid"][invalid] and data[name]["valid"][valid]
        for key in READS[mode]:
            at_invalid = {**batches, name: (batches[name][0], _perturb(data[name], key, invalid))}
            assert torch.equal(model_log_prob(model, at_invalid, values), base), (name, key)
            at_valid = {**batches, name: (batches[name][0], _perturb(data[name], key, valid))}
            assert not torch.equal(model_log_prob(model, at_valid, values), base), (name, key)


def test_padded_step_rewards_contribute_nothing_to_model_or_guide(mdp, feedback, data):
    model = build("step-network", mdp, feedback)
    batches = whole(data)
    values = latent_values(model, batches)
    base = model_log_prob(model, batches, values)

    def guide_log_prob(vals, bat):
        return poutine.trace(poutine.condition(model.guide, data=vals)).get_trace(bat).log_prob_sum()

    guide_base = guide_log_prob(values, batches)
    for name in TYPES:
        invalid, valid = _steps(data[name])
        for index, same in ((invalid, True), (valid, False)):
            changed = dict(values)
            changed[f"reward_{name}"] = values[f"reward_{name}"].clone()
            changed[f"reward_{name}"][index] += 2.0
            assert torch.equal(model_log_prob(model, batches, changed), base) is same, name
            assert torch.equal(guide_log_prob(changed, batches), guide_base) is same, name
        # the guide's encoder input at a padded step is masked too
        at_invalid = {**batches, name: (batches[name][0], _perturb(data[name], "obs", invalid))}
        assert torch.equal(guide_log_prob(values, at_invalid), guide_base)


# -- site scales ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tied-planner", "step-network"])
def test_reward_sites_are_scaled_by_kl_weight_and_a_zero_weight_masks(mode, mdp, feedback, data):
    batches = whole(data)
    names = ["reward"] if mode.startswith("tied") else [f"reward_{n}" for n in TYPES]
    values = latent_values(build(mode, mdp, feedback), batches)
    totals = {}
    for w in (0.0, 0.3, 1.0):
        model = build(mode, mdp, feedback, kl_weight=w)
        for trace in (poutine.trace(model.model).get_trace(batches), poutine.trace(model.guide).get_trace(batches)):
            for n in names:
                site = trace.nodes[n]
                if w == 0:  # masked, not scaled (a zero scale is rejected)
                    assert site["mask"] is False and site["scale"] == 1.0
                else:
                    assert site["scale"] == pytest.approx(w, rel=1e-15) and site["mask"] is None
        totals[w] = model_log_prob(model, batches, values)
    # only the reward prior changes with the weight: w * log N(r; 0, 1) over valid steps, and nothing at w = 0
    prior = 0.0
    for n in names:
        mask = torch.ones(()) if n == "reward" else data[n.removeprefix("reward_")]["valid"]
        prior = prior + (dist.Normal(0.0, 1.0).log_prob(values[n]) * mask).sum()
    torch.testing.assert_close(totals[0.3] - totals[0.0], 0.3 * prior)
    torch.testing.assert_close(totals[1.0] - totals[0.0], prior)


def test_bellman_sites_are_scaled_by_td_weight_and_a_zero_weight_masks(mdp, feedback, data):
    batches = whole(data)
    for w in (0.0, 0.25):
        trace = poutine.trace(build("step-network", mdp, feedback, td_weight=w).model).get_trace(batches)
        for name in TYPES:
            site = trace.nodes[f"bellman_{name}"]
            assert (site["mask"] is False and site["scale"] == 1.0) if w == 0 else site["scale"] == pytest.approx(w)


def test_subsample_plates_scale_by_num_items_over_batch(mdp, feedback, data):
    full = {n: b["valid"].shape[0] for n, b in data.items()}
    num_items = {n: 10 * size for n, size in full.items()}  # the plate's full size: 10x the items in the batch
    kl, td = 0.2, 0.5
    for mode in ("tied-planner", "step-network"):
        model = build(mode, mdp, feedback, num_items=num_items, kl_weight=kl, td_weight=td)
        sub = {n: torch.arange(0, full[n], 2) for n in TYPES}  # every other item
        batches = {n: (sub[n], take(data[n], sub[n])) for n in TYPES}
        model_trace = poutine.trace(model.model).get_trace(batches)
        guide_trace = poutine.trace(model.guide).get_trace(batches)
        for name in TYPES:
            factor = num_items[name] / len(sub[name])
            assert model_trace.nodes[f"obs_{name}"]["scale"] == pytest.approx(factor)
            frame = model_trace.nodes[f"obs_{name}"]["cond_indep_stack"][0]
            assert (frame.size, frame.full_size) == (len(sub[name]), num_items[name])
            if mode == "step-network":
                assert model_trace.nodes[f"reward_{name}"]["scale"] == pytest.approx(kl * factor)
                assert guide_trace.nodes[f"reward_{name}"]["scale"] == pytest.approx(kl * factor)
                assert model_trace.nodes[f"bellman_{name}"]["scale"] == pytest.approx(td * factor)
        if mode == "tied-planner":  # the group plate is not subsampled
            assert model_trace.nodes["reward"]["scale"] == pytest.approx(kl)
            assert guide_trace.nodes["reward"]["scale"] == pytest.approx(kl)


# -- action values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "stop"])  # the types that read Q
def test_planner_mode_scores_labels_under_q_star_of_the_sampled_reward(name, mdp, feedback, data):
    model = build("tied-planner", mdp, feedback)
    batches = whole(data)
    trace = poutine.trace(model.model).get_trace(batches)
    trace.compute_log_prob()
    reward = trace.nodes["reward"]["value"]
    batch, ft = data[name], get_feedback_type(name)
    state = batch["state"].clamp(0, mdp.num_states - 1)
    planner = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)
    params = ft.params(feedback[name].attrs, {}, lambda a: torch.as_tensor(a, dtype=torch.get_default_dtype()))

    def direct(q):
        return ft.log_likelihood(batch, Latents(reward=reward[state], q=q), params)

    expected = direct(planner(reward).to(reward.dtype)[state])
    torch.testing.assert_close(trace.nodes[f"obs_{name}"]["unscaled_log_prob"], expected)
    # and the comparison can tell: Q* of another reward scores the labels differently
    other = direct(planner(torch.flip(reward, (0,))).to(reward.dtype)[state])
    assert not torch.allclose(other, expected)


def test_a_validation_pass_plans_its_draws_once_for_every_type_and_scores_as_if_planned_afresh(mdp, feedback, data):
    """Every type's held-out score uses the same seeded guide draws, so their Q* is planned once per pass; a score
    must equal the one of a model that plans from scratch, and a changed guide must be planned again."""
    model = build("tied-planner", mdp, feedback)
    calls = []
    planner = model.values.planner
    model.values.planner = lambda reward: calls.append(1) or planner(reward)
    with torch.no_grad():
        scores = {n: model.predictive_log_likelihood(n, b, num_draws=5) for n, b in data.items()}
    assert len(calls) == 5  # not 5 per type
    for name, batch in data.items():
        fresh = build("tied-planner", mdp, feedback)
        with torch.no_grad():
            torch.testing.assert_close(fresh.predictive_log_likelihood(name, batch, num_draws=5), scores[name],
                                       rtol=0, atol=1e-12)
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.5)
        model.predictive_log_likelihood("demo", data["demo"], num_draws=5)
    assert len(calls) == 10


def test_q_values_come_from_the_strategy(mdp, feedback, data):
    batch = data["demo"]
    planned = build("tied-planner", mdp, feedback)
    mean = planned.encoder(torch.as_tensor(one_hot_features(mdp.num_states), dtype=torch.float32))[0]
    q_star = ExactPlanner(mdp.transitions, mdp.reward_groups, mdp.gamma)(mean).to(mean.dtype)
    torch.testing.assert_close(planned.q_values(batch), q_star[batch["state"]])
    torch.testing.assert_close(planned.reward_mean(batch), mean[batch["state"]])
    network = build("step-network", mdp, feedback)
    torch.testing.assert_close(network.q_values(batch), network.values.q_network(batch["obs"]))


# -- correlated guides over tied rewards ---------------------------------------------------------------------------


@pytest.mark.parametrize("guide", ["lowrank", "fullrank"])
def test_correlated_guides_score_one_reward_vector_with_the_same_prior(guide, mdp, feedback, data):
    batches = whole(data)
    model = build("tied-planner", mdp, feedback, guide=guide, guide_rank=3)
    with pyro.validation_enabled():  # Pyro checks that model and guide agree on the site's event dims
        elbo = pyro.infer.TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, batches)
    assert torch.isfinite(elbo)
    model_site = sample_sites(poutine.trace(model.model).get_trace(batches))["reward"]
    guide_site = sample_sites(poutine.trace(model.guide).get_trace(batches))["reward"]
    assert model_site["fn"].event_shape == guide_site["fn"].event_shape == (mdp.num_states,)
    assert not model_site["cond_indep_stack"] and not guide_site["cond_indep_stack"]
    expected = {"lowrank": dist.LowRankMultivariateNormal, "fullrank": dist.MultivariateNormal}[guide]
    assert isinstance(guide_site["fn"], expected)
    # the same N(0, 1) prior as the mean-field model's plate of Normals, so the KL has a closed form
    r = guide_site["value"].detach()
    torch.testing.assert_close(model_site["fn"].log_prob(r), dist.Normal(0.0, 1.0).log_prob(r).sum())
    # the guide's mean is still the encoder's (amortized); only the correlation part is a free parameter
    torch.testing.assert_close(guide_site["fn"].loc, model.encoder(model.rewards.group_features)[0])
    assert {"reward_cov_factor", "reward_scale_tril"} & set(pyro.get_param_store().keys())


@pytest.mark.parametrize("guide", ["meanfield", "lowrank", "fullrank"])
def test_seeded_group_draws_follow_the_guide_distribution(guide, mdp, feedback, data):
    model = build("tied-planner", mdp, feedback, guide=guide, guide_rank=2)
    model.guide(whole(data))  # creates the correlation parameter
    with torch.no_grad():  # give the correlation part a visible size
        for name in ("reward_cov_factor", "reward_scale_tril"):
            if name in pyro.get_param_store():
                pyro.param(name).unconstrained().normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
        q = model.rewards.guide_distribution()
        draws = model.rewards.group_draws(40_000, torch.Generator().manual_seed(2))
        again = model.rewards.group_draws(40_000, torch.Generator().manual_seed(2))
    assert torch.equal(draws, again)  # the generator alone fixes the draws
    cov = q.covariance_matrix if guide != "meanfield" else torch.diag(q.scale.square())
    if guide != "meanfield":
        assert (cov - torch.diag(torch.diagonal(cov))).abs().max() > 0.05  # the draws have something to match
    # 40k draws: the standard error of a sample mean is sd / 200 and of a sample covariance about sd_i sd_j / 140;
    # 5 standard errors of the largest sd bound both
    sd_max = torch.diagonal(cov).sqrt().max()
    torch.testing.assert_close(draws.mean(0), q.loc, atol=5 * sd_max / 200, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=5 * sd_max**2 / 140, rtol=0)


def test_correlated_guides_need_tied_rewards(mdp, feedback):
    with pytest.raises(ValueError, match="guide 'lowrank' needs one reward latent per state"):
        build("step-network", mdp, feedback, guide="lowrank")
    with pytest.raises(ValueError, match="guide must be one of"):
        ModelSettings(guide="diagonal")
