"""Acquisition (issue 23): the BALD expected information gain of candidate queries of every feedback type, computed
through each type's own likelihood at every possible label, and the greedy batch by gain per unit cost."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.analysis.acquisition import (
    ROUND_OFF,
    DecisionTargets,
    candidate_queries,
    greedy_action_targets,
    information_gain,
    item_information_gain,
    joint_information_gain,
    parse_costs,
    query_information_gain,
    select_batch,
    select_queries,
    unit_items,
)
from mavrl_ppl.analysis.predictive import evaluate_feedback
from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, simulate_feedback

TYPES = ("pref", "demo", "rating", "stop")


@pytest.fixture(scope="module")
def problem_with_pool(problem):
    """conftest's ``problem`` (observed feedback of all four types, posterior-like draws) with a pool of candidate
    queries that take the observed data's attributes: ``(mdp, pool, reward, nuisance)``."""
    mdp, observed, reward, nuisance = problem
    pool = candidate_queries(TabularTeacher(mdp), {"pref": 20, "demo": 4, "rating": 20, "stop": 20},
                             np.random.default_rng(2), {"stop": {"lapse": 0.05}}, like=observed)
    return mdp, pool, reward, nuisance


def entropy_difference(logp):
    """``H[mean_d p_d] - mean_d H[p_d]`` written out directly (probabilities, not log space): the definition the
    function's KL form must reproduce."""
    p = np.exp(logp.reshape(-1, *logp.shape[-2:]))
    p = p / p.sum(-1, keepdims=True)
    mean = p.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_mean = -np.where(mean > 0, mean * np.log(mean), 0.0).sum(-1)
        h_each = -np.where(p > 0, p * np.log(p), 0.0).sum(-1).mean(0)
    return h_mean - h_each


# -- information_gain on constructed inputs --------------------------------------------------------------------


def test_a_label_certain_under_every_draw_has_zero_gain():
    # unit 0: label 1 certain at every draw; unit 1: label 0 certain; both with the other labels impossible (-inf)
    logp = np.full((2, 5, 2, 3), -np.inf)
    logp[:, :, 0, 1] = 0.0
    logp[:, :, 1, 0] = 0.0
    gain = information_gain(logp)
    assert gain.eig.shape == (2,)
    np.testing.assert_array_equal(gain.eig, 0.0)  # exactly: every term is 1 * (0 - 0)
    np.testing.assert_array_equal(gain.predictive_entropy, 0.0)
    np.testing.assert_array_equal(gain.expected_entropy, 0.0)
    # the same label distribution at every draw, not certain: no information about the reward either
    rng = np.random.default_rng(0)
    one = np.log(rng.dirichlet(np.ones(4), size=7))  # (unit, K)
    same = np.broadcast_to(one, (30, 7, 4))
    np.testing.assert_array_equal(information_gain(same).eig, 0.0)
    assert np.all(information_gain(same).expected_entropy > 0.1)  # yet the labels are noisy


def test_binary_label_gain_is_the_hand_computed_mutual_information():
    # Two equally weighted draws; P(y = 1) = a at draw 1, b at draw 2. Mutual information between the draw and y:
    #   I = h((a + b) / 2) - (h(a) + h(b)) / 2,   h(q) = -q log q - (1 - q) log(1 - q)   (nats).
    a, b = 0.9, 0.2

    def h(q):
        return -q * np.log(q) - (1 - q) * np.log(1 - q)

    expected = h((a + b) / 2) - (h(a) + h(b)) / 2  # = 0.2249... nats
    logp = np.log(np.array([[[1 - a, a]], [[1 - b, b]]]))  # (draw, unit, K)
    gain = information_gain(logp)
    # 1e-14: a handful of float64 operations on O(1) numbers
    np.testing.assert_allclose(gain.eig, [expected], rtol=0, atol=1e-14)
    np.testing.assert_allclose(gain.predictive_entropy, [h((a + b) / 2)], rtol=0, atol=1e-14)
    np.testing.assert_allclose(gain.expected_entropy, [(h(a) + h(b)) / 2], rtol=0, atol=1e-14)
    assert expected > 0.2  # a real gain, so a zero answer fails


def test_gain_is_non_negative_and_equals_the_entropy_difference_on_random_inputs():
    rng = np.random.default_rng(3)
    worst = 0.0
    for draws, units, k in [(2, 5, 2), (10, 20, 3), (64, 50, 32), (1, 4, 6)]:
        logits = rng.normal(scale=rng.choice([0.1, 3.0, 30.0]), size=(draws, units, k))
        logits[rng.random(logits.shape) < 0.2] = -np.inf  # impossible labels (per draw)
        logits[..., 0] = np.where(np.isinf(logits).all(-1), 0.0, logits[..., 0])  # every (draw, unit) possible
        unnormalised = logits + rng.normal(size=(draws, units, 1))  # the function normalises each draw
        gain = information_gain(unnormalised)
        assert np.all(gain.eig >= 0.0)
        # 1e-12: the two forms differ by round-off of entropies of at most log 32 ~ 3.5 (measured <= 2e-15)
        np.testing.assert_allclose(gain.eig, entropy_difference(logits), rtol=0, atol=1e-12)
        assert np.all(gain.eig <= np.log(min(draws, k)) + 1e-12)  # I(draw; y) <= min(H(draw), H(y))
        worst = max(worst, float(np.abs(gain.eig - (gain.predictive_entropy - gain.expected_entropy)).max()))
    assert worst < 1e-12
    if draws == 1:  # one draw: nothing to learn
        np.testing.assert_array_equal(gain.eig, 0.0)


def test_unit_gains_sum_back_to_their_items():
    # units 0, 1 belong to item 0, unit 2 to item 2; items 1 and 3 have no unit
    summed = item_information_gain(np.array([0.25, 0.5, 0.125]), np.array([0, 0, 2]), 4)
    np.testing.assert_array_equal(summed, [0.75, 0.0, 0.125, 0.0])  # exact in binary floating point


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no possible label"):
        information_gain(np.full((3, 2, 4), -np.inf))
    with pytest.raises(ValueError, match="NaN"):
        information_gain(np.array([[[0.0, np.nan]]]))
    with pytest.raises(ValueError, match="unit, K"):
        information_gain(np.zeros((3, 4)))


def test_joint_gain_of_conditionally_independent_labels_matches_exact_enumeration():
    """Three items of 1, 2 and 3 units (4 labels each), 3 draws: the joint gain enumerated over all 4^T label
    sequences, I = sum_Y mean_d p_d(Y) log(p_d(Y) / mean_d' p_d'(Y)), p_d(Y) = prod_t p_d(y_t), against the Monte
    Carlo estimate."""
    rng = np.random.default_rng(4)
    logp = np.log(rng.dirichlet(0.7 * np.ones(4), size=(3, 6)))  # (draw, unit, K)
    items = np.array([0, 1, 1, 2, 2, 2])
    exact = []
    for item in range(3):
        cols = np.flatnonzero(items == item)
        grids = np.meshgrid(*[np.arange(4)] * len(cols), indexing="ij")
        seqs = np.stack([g.ravel() for g in grids], axis=-1)  # (4^T, T)
        log_seq = logp[:, cols[None, :], seqs].sum(-1)  # (draw, 4^T)
        p_seq = np.exp(log_seq)
        mix = p_seq.mean(0)
        exact.append(float((p_seq * (log_seq - np.log(mix))).sum(-1).mean()))
    joint = joint_information_gain(logp, items, 4, np.random.default_rng(5), samples=40000)
    # 5 standard errors (measured ~0.004 here): a correct estimator fails with probability ~1e-6 per item; the
    # summed upper bound is off by > 0.05 for the 2- and 3-unit items, so summing would fail
    assert np.all(np.abs(joint.eig[:3] - exact) <= 5 * joint.standard_error[:3] + 1e-12)
    assert np.all(joint.standard_error[:3] < 0.01)
    np.testing.assert_allclose(exact[0], information_gain(logp[:, :1]).eig[0], rtol=0, atol=1e-12)  # one unit
    assert np.all(joint.unit_sum[1:3] - np.array(exact[1:]) > 0.05)
    assert joint.eig[3] == 0.0 and joint.standard_error[3] == 0.0  # an item without a unit
    # equal draws: exactly 0, every sample's term being x - x
    same = np.broadcast_to(logp[:1], logp.shape)
    np.testing.assert_array_equal(joint_information_gain(same, items, 3, np.random.default_rng(6), 100).eig, 0.0)


# -- a real small problem ----------------------------------------------------------------------------------------


def test_gain_of_every_built_in_type_on_a_real_problem(problem_with_pool):
    mdp, pool, reward, nuisance = problem_with_pool
    gain = query_information_gain(mdp, reward, ("state",), nuisance, pool.queries)
    assert gain.skipped == {}
    assert set(gain.eig) == set(TYPES)
    for name in TYPES:
        eig = gain.eig[name]
        assert eig.shape == (pool.queries[name].sizes["item"],)
        assert np.all(np.isfinite(eig)) and np.all(eig >= 0.0)
        assert eig.max() > 1e-3  # the draws disagree (sd 0.7): some query of every type is informative
        units = gain.units[name]
        # the KL form against the entropy difference (measured <= 1e-15 here)
        np.testing.assert_allclose(units.eig, units.predictive_entropy - units.expected_entropy, rtol=0, atol=1e-12)
    # a label per step: one unit per valid step; the episodes' joint gain is below the sum of their steps' gains and
    # below log D (what any query can tell about D equally weighted draws)
    demo = pool.queries["demo"]
    items = unit_items("demo", demo)
    assert len(items) == int(demo["valid"].sum()) == len(gain.units["demo"].eig)
    summed = item_information_gain(gain.units["demo"].eig, items, demo.sizes["item"])
    assert np.all(gain.eig["demo"] <= summed) and np.all(gain.eig["demo"] <= np.log(reward.shape[0] * reward.shape[1]))
    assert np.all(gain.eig["demo"] > 0.5)  # long episodes under spread-out draws: far from 0
    assert np.all(gain.standard_error["demo"] < 0.1)
    np.testing.assert_array_equal(gain.standard_error["pref"], 0.0)  # exact
    by_sum = query_information_gain(mdp, reward, ("state",), nuisance, {"demo": demo}, per_step="sum")
    np.testing.assert_array_equal(by_sum.eig["demo"], summed)


def test_identical_posterior_draws_give_zero_gain_for_every_unit(problem_with_pool):
    mdp, pool, reward, nuisance = problem_with_pool
    same_reward = np.broadcast_to(reward[:1, :1], (1, 12, reward.shape[-1]))
    same_nuisance = {k: np.broadcast_to(v[:1, :1], (1, 12, *v.shape[2:])) for k, v in nuisance.items()}
    gain = query_information_gain(mdp, same_reward, ("state",), same_nuisance, pool.queries)
    assert set(gain.eig) == set(TYPES)
    for name in TYPES:
        # exactly 0: the draws' log-probabilities are bit-identical, so every KL term is p * (x - x) = 0; the
        # unclipped value is checked through the units (clipping would hide a negative one)
        np.testing.assert_array_equal(gain.units[name].eig, 0.0)
        np.testing.assert_array_equal(gain.eig[name], 0.0)
    # and the same draws spread out again give gains (the test can fail)
    assert query_information_gain(mdp, reward, ("state",), nuisance, pool.queries).eig["rating"].max() > 0.01


def test_gain_from_evaluate_feedback_directly_is_never_negative(problem_with_pool):
    """The raw (chain, draw, unit, K) arrays, before any clipping: the smallest gain is >= -ROUND_OFF, and the
    function's clip is not what keeps the answer non-negative (the unclipped KL form is measured here)."""
    mdp, pool, reward, nuisance = problem_with_pool
    evaluation = evaluate_feedback(mdp, reward, ("state",), nuisance, pool.queries, seed=0, log_likelihood=False,
                                   label_log_probs=True)
    for name in TYPES:
        logp = evaluation.label_log_probs[name]
        assert logp.ndim == 4 and logp.shape[:2] == reward.shape[:2]
        raw = entropy_difference(logp)
        assert raw.min() > -ROUND_OFF
        np.testing.assert_allclose(information_gain(logp).eig, np.maximum(raw, 0.0), rtol=0, atol=1e-12)


def test_candidate_pool_removes_identical_queries_and_takes_the_observed_attributes():
    mdp = make_tabular("grid_trap", size=4)
    teacher = TabularTeacher(mdp)
    # very rational demonstrators on a deterministic grid repeat the same episode: duplicates
    pool = candidate_queries(teacher, {"demo": 20, "stop": 8}, np.random.default_rng(0), {"demo": {"beta": 100.0}},
                             like={"stop": simulate_feedback(teacher, {"stop": 4}, np.random.default_rng(1),
                                                             {"stop": {"c": 7.0}})["stop"]})
    demo = pool.queries["demo"]
    assert pool.duplicates["demo"] > 0 and demo.sizes["item"] == 20 - pool.duplicates["demo"]
    states = demo["state"].values.reshape(demo.sizes["item"], -1)
    assert len(np.unique(states, axis=0)) == demo.sizes["item"]
    assert pool.queries["stop"].attrs["c"] == 7.0  # the observed data's, not the simulator's default 2.0


# -- a user-registered type ---------------------------------------------------------------------------------------


def test_a_user_registered_type_gets_gain_with_no_extra_code(plackett_luce):
    mdp = make_tabular("grid_trap", size=4)
    teacher = TabularTeacher(mdp)
    pool = candidate_queries(teacher, {"ranking": 12, "pref": 12}, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    reward = mdp.group_rewards + 0.7 * rng.normal(size=(1, 50, mdp.num_states))
    gain = query_information_gain(mdp, reward, ("state",), {}, pool.queries)
    assert gain.skipped == {}
    eig = gain.eig["ranking"]
    assert eig.shape == (pool.queries["ranking"].sizes["item"],)
    assert np.all(np.isfinite(eig)) and np.all(eig >= 0.0) and eig.max() > 1e-3
    assert np.all(eig <= np.log(6) + 1e-12)  # 6 possible rankings of 3 segments: at most log 6 nats
    # and it competes with the built-in types in one batch
    batch = select_queries(gain.eig, {"ranking": 1.0, "pref": 1.0}, 5)
    assert len(batch.item) == 5


# -- the batch ------------------------------------------------------------------------------------------------------


def test_select_queries_respects_costs_and_returns_k_distinct_queries():
    gains = {"pref": np.array([0.5, 0.2, 0.5, 0.1]), "rating": np.array([0.5, 0.3, 0.05])}
    batch = select_queries(gains, {"pref": 2.0, "rating": 1.0}, 4)
    assert len(batch.item) == 4
    # same gain 0.5, the cheaper rating first; then rating 0.3 (0.3 per cost) before pref 0.5 at cost 2 (0.25)
    assert list(zip(batch.type, batch.item, strict=True)) == [("rating", 0), ("rating", 1), ("pref", 0), ("pref", 2)]
    np.testing.assert_allclose(batch.score, batch.eig / batch.cost)
    assert np.all(np.diff(batch.score) <= 0)
    # reversed costs: the preferences come first
    swapped = select_queries(gains, {"pref": 1.0, "rating": 2.0}, 2)
    assert list(swapped.type) == ["pref", "pref"]
    # no duplicates even when k exceeds the pool; NaN gains are never selected
    everything = select_queries({"pref": np.array([0.1, np.nan]), "demo": np.array([2.0])}, {"pref": 1, "demo": 10},
                                10)
    assert len(everything.item) == 2
    assert len(set(zip(everything.type, everything.item, strict=True))) == 2
    with pytest.raises(ValueError, match="no cost"):
        select_queries(gains, {"pref": 1.0}, 2)
    with pytest.raises(ValueError, match="positive"):
        select_queries(gains, {"pref": 1.0, "rating": 0.0}, 2)


def test_parse_costs():
    assert parse_costs("pref=1, demo=10,rating=0.5") == {"pref": 1.0, "demo": 10.0, "rating": 0.5}
    for bad in ("pref", "pref=0", "pref=-1", "pref=x", "pref=1,pref=2", "pref=inf"):
        with pytest.raises(ValueError):
            parse_costs(bad)


def test_select_batch_scores_each_query_given_the_ones_before_it():
    """Four equally weighted draws. Queries A and A2 are the same question (binary label, P(y = 1) = .99, .99, .01,
    .01: it tells {1, 2} from {3, 4}); B tells {1, 3} from {2, 4} less sharply (.95, .05, .95, .05). Alone, A (log 2 -
    h(.01) = 0.637 nats) beats B (log 2 - h(.05) = 0.495). Given A, A2 adds only what a second noisy look at the same
    split adds (0.04), B nearly all of its 0.495: the batch of two is {A, B}, where the one-at-a-time rule picks
    {A, A2}."""
    a = np.log([[0.01, 0.99], [0.01, 0.99], [0.99, 0.01], [0.99, 0.01]])  # (draw, K)
    b = np.log([[0.05, 0.95], [0.95, 0.05], [0.05, 0.95], [0.95, 0.05]])
    logp = {"pref": np.stack([a, a], axis=1), "rating": b[:, None, :]}  # (draw, unit, K)
    items = {"pref": np.array([0, 1]), "rating": np.array([0])}
    costs = {"pref": 1.0, "rating": 1.0}
    alone = {name: information_gain(v).eig for name, v in logp.items()}
    assert list(zip(*select_queries(alone, costs, 2)[:2], strict=True)) == [("pref", 0), ("pref", 1)]
    batch = select_batch(logp, items, costs, 2, np.random.default_rng(0), samples=20000)
    # (A or A2 first: their Monte Carlo estimates differ by noise, their true gains are equal)
    assert list(batch.type) == ["pref", "rating"]
    # the first pick's gain is its own gain (Monte Carlo: 3 standard errors of ~0.003 at 20000 samples); the second
    # is B's given A, between 0.4 and its own 0.495
    np.testing.assert_allclose(batch.eig[0], alone["pref"][0], rtol=0, atol=0.01)
    assert 0.4 < batch.eig[1] <= alone["rating"][0] + 0.01
    # costs still count: B at 20 times the price (0.49 / 20 = 0.025 per cost) loses to the repeat of A (0.04)
    dear = select_batch(logp, items, {"pref": 1.0, "rating": 20.0}, 2, np.random.default_rng(0), samples=20000)
    assert list(dear.type) == ["pref", "pref"] and set(dear.item) == {0, 1}
    # a budget: with 1.5 left after A (cost 1), B at cost 1 no longer fits and the batch ends after one pick; with 2,
    # both fit and the batch is {A, B} as without a budget
    short = select_batch(logp, items, costs, 2, np.random.default_rng(0), samples=20000, budget=1.5)
    assert list(short.type) == ["pref"]
    assert list(select_batch(logp, items, costs, 2, np.random.default_rng(0), samples=20000, budget=2).type) == \
        ["pref", "rating"]
    # a first choice that does not fit is passed over for one that does: A at cost 1.2 still has the better gain per
    # cost (0.637 / 1.2 = 0.53 against 0.495), but only B fits a budget of 1
    assert list(select_batch(logp, items, {"pref": 1.2, "rating": 1.0}, 2, np.random.default_rng(0), samples=20000,
                             budget=1).type) == ["rating"]


def test_select_batch_about_a_decision_counts_only_what_a_label_says_about_it():
    """The four draws of the test above. The target pools draws {1, 2} against {3, 4} (say, the best action in a
    state). A's label splits exactly those: its gain about the target is its whole gain, 0.637 nats. B's label
    splits {1, 3} from {2, 4}: given the target either way its label is .95 or .05 with equal odds, as without it,
    so it says nothing about the target (0). Pooling every draw alone (one target valued by the draw's index) is
    the gain about the draws themselves: the same picks and gains as no target, up to round-off."""
    a = np.log([[0.01, 0.99], [0.01, 0.99], [0.99, 0.01], [0.99, 0.01]])
    b = np.log([[0.05, 0.95], [0.95, 0.05], [0.05, 0.95], [0.95, 0.05]])
    logp = {"pref": a[:, None, :], "rating": b[:, None, :]}
    items = {"pref": np.array([0]), "rating": np.array([0])}
    costs = {"pref": 1.0, "rating": 0.5}  # B is cheaper: per cost it beats A about the draws (0.99 vs 0.64)
    split = DecisionTargets(np.array([[0, 0, 1, 1]]), np.array([1.0]))
    about_target = select_batch(logp, items, costs, 2, np.random.default_rng(0), samples=20000, targets=split)
    assert list(about_target.type) == ["pref", "rating"]
    # Monte Carlo at 20000 samples: standard errors ~0.003 (see above); B given A adds nothing about the target
    np.testing.assert_allclose(about_target.eig, [np.log(2) - 0.056001, 0.0], atol=0.01)
    about_draws = select_batch(logp, items, costs, 2, np.random.default_rng(0), samples=20000)
    assert list(about_draws.type) == ["rating", "pref"]
    each_draw = DecisionTargets(np.arange(4)[None], np.array([1.0]))
    same = select_batch(logp, items, costs, 2, np.random.default_rng(0), samples=20000, targets=each_draw)
    assert list(same.type) == list(about_draws.type)
    np.testing.assert_allclose(same.eig, about_draws.eig, rtol=1e-12, atol=1e-12)


def test_greedy_action_targets_keep_the_states_where_the_draws_disagree_on_the_path():
    """Draws of the true reward and of its negation disagree on the best action in some visited states; copies of
    one draw agree everywhere (no target). Weights are discounted occupancies averaged over draws: together at most
    1."""
    mdp = make_tabular("grid_trap")
    truth = mdp.rewards[:, 0, 0]  # the grids' reward is a function of the state
    assert np.allclose(mdp.rewards, truth[:, None, None])
    agree = greedy_action_targets(mdp, np.stack([truth, truth]), ("state",))
    assert agree.values.shape == (0, 2) and agree.weights.shape == (0,)
    both = greedy_action_targets(mdp, np.stack([truth, -truth]), ("state",))
    assert len(both.weights) > 0 and np.all(both.values[:, 0] != both.values[:, 1])
    assert np.all(both.weights >= 1e-3) and both.weights.sum() <= 1.0 + 1e-9
    # a lower threshold keeps at least the same states (and weights do not depend on it)
    more = greedy_action_targets(mdp, np.stack([truth, -truth]), ("state",), min_weight=0.0)
    assert set(both.states) <= set(more.states)
    np.testing.assert_array_equal(more.weights[np.isin(more.states, both.states)], both.weights)


def test_select_batch_on_a_real_problem_returns_k_distinct_queries(problem_with_pool):
    mdp, pool, reward, nuisance = problem_with_pool
    evaluation = evaluate_feedback(mdp, reward, ("state",), nuisance, pool.queries, seed=0, log_likelihood=False,
                                   label_log_probs=True)
    items = {name: unit_items(name, pool.queries[name]) for name in TYPES}
    costs = {"pref": 1.0, "demo": 10.0, "rating": 1.0, "stop": 0.5}
    batch = select_batch(evaluation.label_log_probs, items, costs, 8, np.random.default_rng(0))
    assert len(batch.item) == 8
    assert len(set(zip(batch.type, batch.item, strict=True))) == 8
    assert np.all(batch.eig >= 0.0) and np.all(np.isfinite(batch.score))
    # the first pick is the best gain per cost alone, up to Monte Carlo noise (1024 samples: standard errors ~0.02)
    alone = query_information_gain(mdp, reward, ("state",), nuisance, pool.queries)
    best = max(float(np.max(alone.eig[name] / costs[name])) for name in TYPES)
    assert batch.score[0] >= best - 0.1
