"""Simulated teachers (REFERENCE §3): labels follow the very likelihoods the models fit, and segments follow
the MDP.

Statistical checks compare observed counts with the counts the model predicts, item by item:
``z = (sum of outcomes - sum of probabilities) / sqrt(sum p (1 - p))``, approximately N(0, 1) under a
correct simulator (a sum of independent Bernoullis). Bins with ``sum p (1 - p) < 5`` are skipped, where the
normal approximation is poor. The threshold |z| < 4.5 has a two-sided tail of 7e-6 per statistic, so even
~40 statistics in one test stay below 3e-4 false alarms (Bonferroni); the seeds are fixed, so a run is
deterministic anyway. Each test also shows that the same statistic REJECTS a plausible wrong simulator
(wrong rationality, labels flipped, means over padded steps), i.e. that it can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.envs import make_grid, make_tabular
from mavrl_ppl.feedback import TabularTeacher, get_feedback_type, simulate_feedback

Z_MAX = 4.5  # see the module docstring


class PaddedTeacher(TabularTeacher):
    """Query segments whose tail is padding: 1..T valid steps each, as collected data often are."""

    def segments(self, shape, length, rng):
        segments = super().segments(shape, length, rng)
        keep = rng.integers(1, length + 1, size=shape)
        segments["valid"] = np.arange(length) < keep[..., None]
        return segments


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def z_scores(
    outcome: np.ndarray, prob: np.ndarray, groups: np.ndarray | None = None, *, allow_none: bool = False
) -> np.ndarray:
    """One z-score per group of items (all items in one group by default); see the module docstring."""
    groups = np.zeros(len(prob), dtype=int) if groups is None else groups
    out = []
    for g in np.unique(groups):
        m = groups == g
        var = np.sum(prob[m] * (1.0 - prob[m]))
        if var >= 5.0:
            out.append((outcome[m].sum() - prob[m].sum()) / np.sqrt(var))
    assert out or allow_none, "no group is large enough to test"
    return np.array(out)


def valid_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over valid steps, written independently of the package's segment_means."""
    return (values * valid).sum(-1) / valid.sum(-1)


def true_reward(teacher: TabularTeacher, ds) -> np.ndarray:
    """Grid rewards depend on the state being left (REFERENCE §2)."""
    return teacher.mdp.group_rewards[ds["state"].values]


# ------------------------------------------------------------------------------------------ preferences


@pytest.mark.parametrize("padded", [False, True])
def test_preferences_follow_bradley_terry(padded):
    beta = 1.0  # moderate, so that many pairs have probabilities away from 0 and 1
    cls = PaddedTeacher if padded else TabularTeacher
    teacher = cls(make_grid("cliff", 6))
    ds = get_feedback_type("pref").simulate(teacher, 3000, np.random.default_rng(11), beta=beta)
    y = ds["preference"].values
    assert set(np.unique(y)) <= {0.0, 1.0}
    means = valid_mean(true_reward(teacher, ds), ds["valid"].values)
    diff = means[:, 0] - means[:, 1]
    p = sigmoid(beta * diff)
    bins = np.digitize(p, [0.1, 0.3, 0.5 - 1e-9, 0.5 + 1e-9, 0.7, 0.9])
    z = z_scores(y, p, bins)
    assert len(z) >= 5 and np.abs(z).max() < Z_MAX, z
    assert abs(z_scores(y, p)[0]) < Z_MAX
    # Power: a teacher twice as rational, or one that prefers the second segment, is rejected.
    assert np.abs(z_scores(y, sigmoid(2 * beta * diff), bins)).max() > Z_MAX
    assert np.abs(z_scores(y, sigmoid(-beta * diff), bins)).max() > Z_MAX
    if padded:  # means over all steps (the reference's mistake) are rejected too
        full = true_reward(teacher, ds).mean(-1)
        assert np.abs(z_scores(y, sigmoid(beta * (full[:, 0] - full[:, 1])), bins)).max() > Z_MAX


def test_preferences_paper_setting():
    """grid_trap, beta 5 (defaults): labels agree with the Bradley-Terry probability, overall and in bins."""
    teacher = TabularTeacher(make_tabular("grid_trap"))
    ds = simulate_feedback(teacher, {"pref": 1000}, np.random.default_rng(12))["pref"]
    assert ds.attrs["beta"] == 5.0
    means = valid_mean(true_reward(teacher, ds), ds["valid"].values)
    p = sigmoid(5.0 * (means[:, 0] - means[:, 1]))
    y = ds["preference"].values
    bins = np.digitize(p, [0.1, 0.5 - 1e-9, 0.5 + 1e-9, 0.9])
    assert abs(z_scores(y, p)[0]) < Z_MAX
    assert np.abs(z_scores(y, p, bins)).max() < Z_MAX
    assert np.abs(z_scores(y, 1.0 - p, bins)).max() > Z_MAX


# ------------------------------------------------------------------------------------------ ratings


def ordered_logit(u: np.ndarray, cutpoints: np.ndarray, scale: float) -> np.ndarray:
    """P(k | u) = F(s (theta_{k+1} - u)) - F(s (theta_k - u)), theta_0 = -inf, theta_K = +inf; (item, K)."""
    cdf = sigmoid(scale * (cutpoints[None, :] - u[:, None]))
    cdf = np.concatenate([np.zeros((len(u), 1)), cdf, np.ones((len(u), 1))], axis=1)
    return np.diff(cdf, axis=1)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_ratings_balanced_and_follow_the_ordered_logit(scale):
    K, n = 5, 4000
    teacher = PaddedTeacher(make_grid("cliff", 6))
    ds = get_feedback_type("rating").simulate(teacher, n, np.random.default_rng(21), scale=scale)
    r = ds["rating"].values
    cut = ds.attrs["true_cutpoints"]
    assert ds.attrs["num_categories"] == K and cut.shape == (K - 1,) and np.all(np.diff(cut) > 0)
    # Frequencies near 1/K: multinomial standard error sqrt(p (1 - p) / n) = 0.0063 per category.
    freq = np.bincount(r, minlength=K) / n
    se = np.sqrt((1 / K) * (1 - 1 / K) / n)
    assert np.abs(freq - 1 / K).max() < Z_MAX * se, freq
    # Conditional on each segment's valid mean reward, labels follow the ordered logit: per category, z-scores
    # within bins of the expected rating (the cutpoints come from the same sample; with n = 4000 the
    # dependence this adds is far below the tolerance).
    u = valid_mean(true_reward(teacher, ds), ds["valid"].values)
    probs = ordered_logit(u, cut, scale)
    expected = probs @ np.arange(K)
    bins = np.digitize(expected, np.quantile(expected, [0.25, 0.5, 0.75]))

    def worst(probs):
        return max(np.abs(z_scores((r == k).astype(float), probs[:, k], bins)).max() for k in range(K))

    assert worst(probs) < Z_MAX
    # Power: ratings that ignored the padding (means over all steps) or the scale would be rejected.
    full = true_reward(teacher, ds).mean(-1)
    assert worst(ordered_logit(full, cut, scale)) > Z_MAX
    assert worst(ordered_logit(u, cut, 2 * scale)) > Z_MAX


def test_ratings_at_given_cutpoints():
    """``cutpoints=`` (SBC's prior draws) replaces the quantile calibration; the labels follow them."""
    K, n = 5, 4000
    cut = np.array([-1.5, -0.7, 0.2, 1.4])
    teacher = PaddedTeacher(make_grid("cliff", 6))
    simulate = get_feedback_type("rating").simulate
    ds = simulate(teacher, n, np.random.default_rng(22), cutpoints=cut)
    np.testing.assert_array_equal(ds.attrs["true_cutpoints"], cut)
    r = ds["rating"].values
    u = valid_mean(true_reward(teacher, ds), ds["valid"].values)

    def worst(cutpoints):
        probs = ordered_logit(u, cutpoints, 1.0)
        return max(np.abs(z_scores((r == k).astype(float), probs[:, k])).max() for k in range(K))

    assert worst(cut) < Z_MAX
    assert worst(cut + 0.5) > Z_MAX  # power: other cutpoints are rejected
    for bad in ([0.0, -1.0, 1.0, 2.0], [0.0, 1.0, 2.0]):
        with pytest.raises(ValueError, match="increasing"):
            simulate(teacher, 8, np.random.default_rng(0), cutpoints=bad)


# ------------------------------------------------------------------------------------------ stops


def cumulative_regret_loop(q_star, state, action, valid, rho):
    """C_t = rho C_{t-1} + g_t by the recursion itself (a loop over t: an independent oracle)."""
    q = q_star[state]
    g = np.where(valid, q.max(-1) - np.take_along_axis(q, action[..., None], -1)[..., 0], 0.0)
    c = np.zeros_like(g)
    for t in range(g.shape[-1]):
        c[:, t] = g[:, t] + (rho * c[:, t - 1] if t else 0.0)
    return c


@pytest.mark.parametrize("lapse", [0.0, 0.05])
def test_stops_follow_the_regret_hazard(lapse):
    n, rho, c = 5000, 0.1, 2.0
    teacher = PaddedTeacher(make_grid("cliff", 6))
    ds = get_feedback_type("stop").simulate(teacher, n, np.random.default_rng(31), lapse=lapse)
    assert (ds.attrs["rho"], ds.attrs["c"], ds.attrs["lapse"]) == (rho, c, lapse)
    valid = ds["valid"].values
    cum = cumulative_regret_loop(teacher.q_star, ds["state"].values, ds["action"].values, valid, rho)
    # lambda = c / median over segments of the max cumulative regret (over valid steps); exact up to rounding.
    peak = np.where(valid, cum, -np.inf).max(-1)
    np.testing.assert_allclose(ds.attrs["lambda"], c / np.median(peak), rtol=1e-12)

    tau = ds["stop_time"].values
    stopped = tau >= 0
    assert stopped.any() and (~stopped).any()
    assert np.all(valid[np.flatnonzero(stopped), tau[stopped]]), "a stop at a padded step"
    assert np.all(tau < valid.sum(-1)), "valid steps are a prefix here, so tau < number of valid steps"

    def check(lam, lapse):
        h = np.where(valid, lapse + (1.0 - lapse) * (1.0 - np.exp(-lam * cum)), 0.0)
        survive = np.cumprod(1.0 - h, axis=-1)
        p_stop = 1.0 - survive[:, -1]  # 1 - prod_t (1 - h_t)
        before = np.concatenate([np.ones((n, 1)), survive[:, :-1]], axis=1)
        p_at = h * before  # P(tau = t) = h_t prod_{s<t} (1 - h_s)
        bins = np.digitize(p_stop, [0.2, 0.4, 0.6, 0.8])
        z = [z_scores(stopped.astype(float), p_stop, bins)]
        # Early steps have too little regret to stop often enough for a normal approximation: skipped.
        z += [z_scores((tau == t).astype(float), p_at[:, t], allow_none=True) for t in range(valid.shape[1])]
        z = np.concatenate(z)
        assert len(z) >= 5
        return np.abs(z).max()

    assert check(ds.attrs["lambda"], lapse) < Z_MAX
    assert check(2 * ds.attrs["lambda"], lapse) > Z_MAX  # power: a wrong calibration is rejected
    assert check(ds.attrs["lambda"], 0.0 if lapse else 0.15) > Z_MAX  # ... and so is a wrong lapse rate


def test_stops_at_a_given_lambda():
    """``lam=`` (SBC: a lambda that does not depend on the true reward) replaces the calibration from ``c``."""
    n, rho, lam = 4000, 0.1, 0.03  # small: at the calibrated lambda (0.27 here) 99.9 % of segments stop
    teacher = TabularTeacher(make_grid("cliff", 6))
    ds = get_feedback_type("stop").simulate(teacher, n, np.random.default_rng(32), lam=lam)
    assert ds.attrs["lambda"] == lam
    valid = ds["valid"].values
    cum = cumulative_regret_loop(teacher.q_star, ds["state"].values, ds["action"].values, valid, rho)
    stopped = (ds["stop_time"].values >= 0).astype(float)

    def z(lam):
        p_stop = 1.0 - np.exp(-lam * np.where(valid, cum, 0.0).sum(-1))  # 1 - prod_t exp(-lam C_t)
        return np.abs(z_scores(stopped, p_stop, np.digitize(p_stop, [0.2, 0.4, 0.6, 0.8]))).max()

    assert z(lam) < Z_MAX
    assert z(2 * lam) > Z_MAX  # power


# ---------------------------------------------------------------------------------------- demonstrations


@pytest.mark.parametrize("env", ["grid_trap", "grid_cliff", "grid_sparse", "chain"])
def test_demonstrations_go_from_start_to_goal(env):
    mdp = make_tabular(env)
    teacher = TabularTeacher(mdp)
    ds = simulate_feedback(teacher, {"demo": 16}, np.random.default_rng(41))["demo"]
    assert ds.attrs["beta"] == 10.0
    valid = ds["valid"].values
    state, next_state = ds["state"].values, ds["next_state"].values
    lengths = valid.sum(-1)
    # valid is a prefix: True for the episode, then padding; the longest episode fills the array.
    np.testing.assert_array_equal(valid, np.arange(valid.shape[1]) < lengths[:, None])
    assert lengths.max() == valid.shape[1] and lengths.min() >= 1
    assert np.all(state[:, 0] == mdp.start_state)
    goal = np.asarray(mdp.goal_states)
    last_next = next_state[np.arange(len(lengths)), lengths - 1]
    assert np.all(np.isin(last_next, goal)), "every episode ends on arrival at the goal"
    # ...and arrives there only once: no earlier valid step enters the goal.
    earlier = valid & (np.arange(valid.shape[1]) < (lengths - 1)[:, None])
    assert not np.any(np.isin(next_state, goal) & earlier)
    assert not ds["terminal"].values.any()  # infinite-horizon evaluation: no terminal transitions
    assert_consistent_with_mdp(teacher, ds)


def test_demonstration_actions_are_boltzmann():
    """Action counts at visited states match softmax(beta Q*). Whether a step belongs to an episode depends
    only on the states before its action, so the per-step action law is unbiased by the stopping rule."""
    beta = 2.0
    teacher = TabularTeacher(make_grid("sparse", 4))
    ds = get_feedback_type("demo").simulate(teacher, 400, np.random.default_rng(42), beta=beta)
    valid = ds["valid"].values
    s, a = ds["state"].values[valid], ds["action"].values[valid]

    def worst(beta):
        logits = beta * teacher.q_star[s]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return max(abs(z_scores((a == k).astype(float), p[:, k])[0]) for k in range(p.shape[1]))

    assert worst(beta) < Z_MAX
    assert worst(2 * beta) > Z_MAX


# ------------------------------------------------------------------------------------------ segments


def assert_consistent_with_mdp(teacher: TabularTeacher, ds) -> None:
    """Every step is a possible transition; steps chain up; observations are the states' features."""
    mdp = teacher.mdp
    s, a, s2, a2 = (ds[v].values for v in ("state", "action", "next_state", "next_action"))
    valid = ds["valid"].values
    assert np.all(mdp.transitions[s, a, s2][valid] > 0), "an impossible transition"
    np.testing.assert_array_equal(s[..., 1:], s2[..., :-1])
    np.testing.assert_array_equal(a[..., 1:], a2[..., :-1])
    np.testing.assert_array_equal(ds["obs"].values, teacher.features[s])
    np.testing.assert_array_equal(ds["next_obs"].values, teacher.features[s2])
    assert ds.attrs["num_actions"] == mdp.num_actions and ds.attrs["num_states"] == mdp.num_states


@pytest.mark.parametrize("env, p_rand", [("grid_trap", 0.0), ("grid_cliff", 0.2), ("chain", 0.0)])
def test_query_segments_follow_the_mdp_and_the_uniform_policy(env, p_rand):
    mdp = make_tabular(env, p_rand=p_rand) if env != "chain" else make_tabular(env)
    teacher = TabularTeacher(mdp)
    data = simulate_feedback(teacher, {"pref": 200, "rating": 400, "stop": 400}, np.random.default_rng(51))
    for ds in data.values():
        assert ds.sizes["step"] == 10 and ds["valid"].values.all()
        assert_consistent_with_mdp(teacher, ds)
    # Behaviour policy is uniform (beta 0): each action has probability 1/A at every step.
    actions = np.concatenate([ds["action"].values.ravel() for ds in data.values()])
    A = mdp.num_actions
    for k in range(A):
        assert abs(z_scores((actions == k).astype(float), np.full(actions.shape, 1 / A))[0]) < Z_MAX
    if p_rand > 0:
        # Slippage happens as often as P says: the realised next state is the intended one w.p.
        # P[s, a, intended(s, a)] (>= 1 - p_rand; more where other moves land in the same cell).
        intended = make_grid("cliff", 10, p_rand=0.0).transitions.argmax(-1)
        ds = data["stop"]
        s, a, s2 = (ds[v].values.ravel() for v in ("state", "action", "next_state"))
        target = intended[s, a]
        z = z_scores((s2 == target).astype(float), mdp.transitions[s, a, target])[0]
        assert abs(z) < Z_MAX
        assert np.mean(s2 != target) > 0.1  # the stochastic dynamics are really exercised
