"""The four built-in feedback likelihoods (REFERENCE §1), checked against first principles in torch float64.

Every expected value here is computed independently of the code under test: closed forms, loop-based
references written in this file, or torch's own ``cross_entropy``. Tolerances: values computed in float64
along a different but exact route agree to ~1e-15 relative; 1e-10 leaves room for a few hundred roundings
without letting a wrong formula through (a wrong formula is off by >1e-3 on these inputs).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mavrl_ppl.feedback import Latents, get_feedback_type
from mavrl_ppl.feedback.rating import ordered_cutpoints

F64 = torch.float64
TOL = 1e-10  # see the module docstring

PREF = get_feedback_type("pref")
DEMO = get_feedback_type("demo")
RATING = get_feedback_type("rating")
STOP = get_feedback_type("stop")


def f64(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=F64, requires_grad=grad)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


def as_bool(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=bool))


def as_int(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def sigmoid_np(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- small problems, one per type: (batch, latent arrays by name, params) ------------------------------------
# A "problem" is a dict with the batch, the latent arrays ("reward" and/or "q", numpy float64), the nuisance
# values (numpy float64; rating cutpoints as unconstrained z for ``ordered_cutpoints``) and the validity mask.

NUM_ACTIONS = 4


def _mask(rng, shape, min_valid: int = 1):
    """A validity mask: some padded steps at the end of each segment, at least ``min_valid`` valid ones."""
    length = shape[-1]
    counts = rng.integers(min_valid, length, size=shape[:-1])  # never all steps valid: padding is exercised
    return np.arange(length) < counts[..., None]


def pref_problem(rng, items: int = 5, length: int = 6, beta: float = 1.7):
    valid = _mask(rng, (items, 2, length))
    labels = np.array([1.0, 0.0, 1.0, 0.3, 0.0])[:items]  # hard and soft labels
    batch = {"valid": as_bool(valid), "preference": f64(labels), "beta": beta}
    return {
        "ft": PREF,
        "batch": batch,
        "latents": {"reward": rng.normal(size=valid.shape)},
        "params": {"beta": beta},
        "valid": valid,
    }


def demo_problem(rng, items: int = 4, length: int = 7, beta: float = 2.3):
    valid = _mask(rng, (items, length))
    action = rng.integers(NUM_ACTIONS, size=(items, length))
    batch = {"valid": as_bool(valid), "action": as_int(action), "beta": beta}
    return {
        "ft": DEMO,
        "batch": batch,
        "latents": {"q": rng.normal(size=(items, length, NUM_ACTIONS))},
        "params": {"beta": beta},
        "valid": valid,
    }


def rating_problem(rng, items: int = 6, length: int = 5, num_categories: int = 5, scale: float = 1.0):
    valid = _mask(rng, (items, length))
    rating = np.arange(items) % num_categories  # every category appears
    batch = {"valid": as_bool(valid), "rating": as_int(rating), "scale": scale}
    z = np.concatenate([[-1.0], np.full(num_categories - 2, np.log(0.8))])  # cutpoints -1, -0.2, 0.6, ...
    return {
        "ft": RATING,
        "batch": batch,
        "latents": {"reward": rng.normal(size=valid.shape)},
        "params": {"cutpoints_z": z},
        "valid": valid,
    }


def stop_problem(rng, items: int = 5, length: int = 8, lam: float = 0.7, rho: float = 0.5):
    valid = _mask(rng, (items, length), min_valid=2)
    q = rng.normal(size=(items, length, NUM_ACTIONS))
    action = rng.integers(NUM_ACTIONS, size=(items, length))
    action[:, 0] = q[:, 0].argmin(-1)  # regret > 0 from step 0: every hazard is far above the floor
    n_valid = valid.sum(-1)
    stop_time = np.array([-1, 0, *(n_valid[2:] - 1)])[:items]  # censored, first step, last valid step
    batch = {
        "valid": as_bool(valid),
        "action": as_int(action),
        "stop_time": as_int(stop_time),
        "lambda": lam,
        "rho": rho,
    }
    return {"ft": STOP, "batch": batch, "latents": {"q": q}, "params": {}, "valid": valid}


PROBLEMS = {"pref": pref_problem, "demo": demo_problem, "rating": rating_problem, "stop": stop_problem}


def evaluate(problem, latents: dict[str, torch.Tensor] | None = None, params: dict | None = None):
    """Log-likelihood of a problem; ``latents``/``params`` (torch tensors) override its own arrays."""
    latents = latents or {k: f64(v) for k, v in problem["latents"].items()}
    if params is None:
        params = {}
        for name, value in problem["params"].items():
            if name == "cutpoints_z":
                params["cutpoints"] = ordered_cutpoints(f64(value))
            else:
                params[name] = scalar(value)
    return problem["ft"].log_likelihood(problem["batch"], Latents(**latents), params)


def latent_leaves(problem):
    return {k: f64(v, grad=True) for k, v in problem["latents"].items()}


# -- preferences ---------------------------------------------------------------------------------------------


def test_pref_probabilities_sum_to_one():
    problem = pref_problem(np.random.default_rng(0))
    total = 0.0
    for y in (1.0, 0.0):
        problem["batch"]["preference"] = f64(np.full(5, y))
        total = total + torch.exp(evaluate(problem))
    torch.testing.assert_close(total, torch.ones(5, dtype=F64), rtol=0, atol=TOL)


def test_pref_beta_zero_is_a_coin_flip():
    problem = pref_problem(np.random.default_rng(1), beta=0.0)
    expected = torch.full((5,), math.log(0.5), dtype=F64)
    torch.testing.assert_close(evaluate(problem), expected, rtol=0, atol=TOL)


def test_pref_known_value():
    # First side: valid rewards 1 and 3 (mean 2), a padded step holding 100 that must not count. Second: 0.
    reward = f64([[[1.0, 3.0, 100.0], [-1.0, 1.0, 0.0]]])
    valid = as_bool([[[True, True, False], [True, True, True]]])
    batch = {"valid": valid, "preference": f64([1.0])}
    loss = -PREF.log_likelihood(batch, Latents(reward=reward), {"beta": scalar(1.0)})
    torch.testing.assert_close(loss, f64([math.log1p(math.exp(-2.0))]), rtol=0, atol=TOL)
    # The other label and another beta: -log sigmoid(-beta * 2) and -log sigmoid(beta * 2).
    batch["preference"] = f64([0.0])
    loss = -PREF.log_likelihood(batch, Latents(reward=reward), {"beta": scalar(1.0)})
    torch.testing.assert_close(loss, f64([math.log1p(math.exp(2.0))]), rtol=0, atol=TOL)
    batch["preference"] = f64([1.0])
    loss = -PREF.log_likelihood(batch, Latents(reward=reward), {"beta": scalar(0.25)})
    torch.testing.assert_close(loss, f64([math.log1p(math.exp(-0.5))]), rtol=0, atol=TOL)


def test_pref_swapping_sides_and_flipping_label_changes_nothing():
    problem = pref_problem(np.random.default_rng(2))
    before = evaluate(problem)
    reward = problem["latents"]["reward"][:, ::-1].copy()
    swapped = {"valid": as_bool(problem["valid"][:, ::-1].copy()), "preference": 1.0 - problem["batch"]["preference"]}
    after = PREF.log_likelihood(swapped, Latents(reward=f64(reward)), {"beta": scalar(1.7)})
    torch.testing.assert_close(after, before, rtol=0, atol=TOL)


def test_pref_soft_label_is_the_expected_log_likelihood():
    problem = pref_problem(np.random.default_rng(3))
    y = 0.3
    parts = []
    for label in (y, 1.0, 0.0):
        problem["batch"]["preference"] = f64(np.full(5, label))
        parts.append(evaluate(problem))
    torch.testing.assert_close(parts[0], y * parts[1] + (1 - y) * parts[2], rtol=0, atol=TOL)


# -- demonstrations ------------------------------------------------------------------------------------------


def test_demo_probabilities_over_actions_sum_to_one():
    rng = np.random.default_rng(4)
    q = f64(rng.normal(size=(1, 1, NUM_ACTIONS)))
    total = 0.0
    for a in range(NUM_ACTIONS):
        batch = {"valid": as_bool([[True]]), "action": as_int([[a]])}
        total = total + torch.exp(DEMO.log_likelihood(batch, Latents(q=q), {"beta": scalar(3.1)}))
    torch.testing.assert_close(total, torch.ones(1, dtype=F64), rtol=0, atol=TOL)


def test_demo_beta_zero_is_uniform_per_valid_step():
    problem = demo_problem(np.random.default_rng(5), beta=0.0)
    expected = -torch.as_tensor(problem["valid"].sum(-1), dtype=F64) * math.log(NUM_ACTIONS)
    torch.testing.assert_close(evaluate(problem), expected, rtol=0, atol=TOL)


def test_demo_equals_torch_cross_entropy():
    problem = demo_problem(np.random.default_rng(6))
    q, action, valid = problem["latents"]["q"], problem["batch"]["action"], problem["valid"]
    logits = 2.3 * f64(q)
    ce = F.cross_entropy(logits.reshape(-1, NUM_ACTIONS), action.reshape(-1), reduction="none")
    ce = ce.reshape(valid.shape)
    expected = -(ce * torch.as_tensor(valid, dtype=F64)).sum(-1)
    torch.testing.assert_close(evaluate(problem), expected, rtol=TOL, atol=TOL)


# -- ratings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_categories", [2, 3, 5])
@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_rating_probabilities_sum_to_one(num_categories, scale):
    problem = rating_problem(np.random.default_rng(7), num_categories=num_categories, scale=scale)
    total = 0.0
    for k in range(num_categories):
        problem["batch"]["rating"] = as_int(np.full(6, k))
        total = total + torch.exp(evaluate(problem))
    torch.testing.assert_close(total, torch.ones(6, dtype=F64), rtol=0, atol=TOL)


@pytest.mark.parametrize("num_categories", [2, 5])
@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_rating_matches_direct_ordered_logit(num_categories, scale):
    rng = np.random.default_rng(8)
    items, length = 12, 5
    valid = _mask(rng, (items, length))
    reward = rng.normal(size=(items, length)) * 1.5
    theta = np.sort(rng.normal(size=num_categories - 1) * 1.5)
    rating = rng.integers(num_categories, size=items)
    # Direct computation, written here: u = mean over the valid steps; P(k) = s(th_k - u) - s(th_{k-1} - u).
    u = np.array([reward[i, valid[i]].mean() for i in range(items)])
    bounds = np.concatenate([[-np.inf], theta, [np.inf]])
    expected = np.log(sigmoid_np(scale * (bounds[rating + 1] - u)) - sigmoid_np(scale * (bounds[rating] - u)))
    batch = {"valid": as_bool(valid), "rating": as_int(rating), "scale": scale}
    got = RATING.log_likelihood(batch, Latents(reward=f64(reward)), {"cutpoints": f64(theta)})
    # The direct difference of sigmoids loses ~1e-16 / P(k) relative; every P(k) here exceeds 1e-4.
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_ordered_cutpoints_increase():
    z = np.array([[0.3, -6.0, 0.0, 2.5], [-2.0, 1.0, -1.0, -12.0]])
    for theta in (ordered_cutpoints(z), ordered_cutpoints(f64(z)).numpy()):
        assert theta.shape == z.shape
        assert np.all(np.diff(theta, axis=-1) > 0)
        np.testing.assert_allclose(theta[:, 0], z[:, 0], rtol=0, atol=0)
        # |theta| < 20: the cumulative sum's rounding is ~4e-15 absolute, tiny increments included.
        np.testing.assert_allclose(np.diff(theta, axis=-1), np.exp(z[:, 1:]), rtol=1e-12, atol=1e-13)


# -- stop signals --------------------------------------------------------------------------------------------


def stop_reference(q, action, valid, stop_time, lam, rho, lapse=0.0):
    """REFERENCE §1 hazard model (with the lapse mixture of feedback/stop.py), one item and one step at a time (loops
    are fine in a test)."""
    out = np.zeros(len(stop_time))
    for i in range(len(stop_time)):
        cum, logp = 0.0, 0.0
        for t in range(q.shape[1]):
            regret = q[i, t].max() - q[i, t, action[i, t]] if valid[i, t] else 0.0
            cum = rho * cum + regret
            hazard = lapse + (1.0 - lapse) * (1.0 - math.exp(-lam * cum)) if valid[i, t] else 0.0
            if t == stop_time[i]:
                logp += math.log(hazard) if hazard > 0 else -math.inf
                break
            logp += math.log1p(-hazard)
        out[i] = logp
    return out


def test_stop_matches_loop_reference():
    problem = stop_problem(np.random.default_rng(9))
    b = problem["batch"]
    expected = stop_reference(
        problem["latents"]["q"], b["action"].numpy(), problem["valid"], b["stop_time"].numpy(), b["lambda"], b["rho"]
    )
    np.testing.assert_allclose(evaluate(problem).numpy(), expected, rtol=TOL, atol=TOL)


def test_stop_matches_loop_reference_with_gaps_in_validity():
    rng = np.random.default_rng(10)
    valid = np.array([[True, True, False, True, True, True, False, False]] * 4)
    q = rng.normal(size=(4, 8, NUM_ACTIONS))
    action = rng.integers(NUM_ACTIONS, size=(4, 8))
    action[:, 0] = q[:, 0].argmin(-1)
    stop_time = np.array([-1, 1, 3, 5])
    batch = {
        "valid": as_bool(valid),
        "action": as_int(action),
        "stop_time": as_int(stop_time),
        "lambda": 0.9,
        "rho": 0.3,
    }
    got = STOP.log_likelihood(batch, Latents(q=f64(q)), {})
    np.testing.assert_allclose(got.numpy(), stop_reference(q, action, valid, stop_time, 0.9, 0.3), rtol=TOL, atol=TOL)


def test_stop_with_a_lapse_matches_loop_reference():
    problem = stop_problem(np.random.default_rng(12))
    b = {**problem["batch"], "lapse": 0.03}
    expected = stop_reference(
        problem["latents"]["q"], b["action"].numpy(), problem["valid"], b["stop_time"].numpy(), b["lambda"], b["rho"],
        lapse=0.03,
    )
    got = STOP.log_likelihood(b, Latents(q=f64(problem["latents"]["q"])), {})
    np.testing.assert_allclose(got.numpy(), expected, rtol=TOL, atol=TOL)
    without = stop_reference(
        problem["latents"]["q"], b["action"].numpy(), problem["valid"], b["stop_time"].numpy(), b["lambda"], b["rho"]
    )
    assert np.abs(expected - without).min() > 1e-3  # the lapse changes every item's probability


@pytest.mark.parametrize("lapse", [0.0, 0.1])
def test_stop_probabilities_over_all_stop_times_sum_to_one(lapse):
    rng = np.random.default_rng(11)
    length = 8
    valid = np.array([[True, True, False, True, True, True, False, False]])  # a gap and end padding
    q = rng.normal(size=(1, length, NUM_ACTIONS))
    action = rng.integers(NUM_ACTIONS, size=(1, length))
    action[:, 0] = q[:, 0].argmin(-1)  # C_t > 0 at every valid step: no probability sits on the hazard floor
    logp = {}
    for tau in range(-1, length):
        batch = {
            "valid": as_bool(valid),
            "action": as_int(action),
            "stop_time": as_int([tau]),
            "lambda": 0.8,
            "rho": 0.5,
            "lapse": lapse,
        }
        logp[tau] = STOP.log_likelihood(batch, Latents(q=f64(q)), {})[0]
    total = sum(torch.exp(v) for v in logp.values())
    torch.testing.assert_close(total, scalar(1.0), rtol=0, atol=TOL)
    for tau in (2, 6, 7):  # invalid steps have zero hazard (REFERENCE §1)
        assert torch.exp(logp[tau]) == 0.0


def test_stop_at_zero_regret_is_finite_and_unlikely():
    # The chosen action is greedy at the only step: C_0 = 0, so P(stop at 0) = 0 exactly. The likelihood
    # floors the hazard (a NaN-free gradient for a confident Q-network): the result must be finite and tiny,
    # the gradient finite.
    q = f64([[[1.0, 0.0, -1.0, 0.5]]], grad=True)
    batch = {"valid": as_bool([[True]]), "action": as_int([[0]]), "stop_time": as_int([0]), "lambda": 1.0, "rho": 0.1}
    ll = STOP.log_likelihood(batch, Latents(q=q), {})
    (grad,) = torch.autograd.grad(ll.sum(), q)
    assert torch.isfinite(ll).all() and ll.item() < math.log(1e-6)
    assert torch.isfinite(grad).all()


def test_a_lapse_makes_a_stop_at_zero_regret_cost_log_lapse():
    # No barrier: P(stop at 0 | C_0 = 0) = lapse exactly, and the gradient is finite (zero in the greedy action's Q).
    q = f64([[[1.0, 0.0, -1.0, 0.5]]], grad=True)
    batch = {"valid": as_bool([[True]]), "action": as_int([[0]]), "stop_time": as_int([0]), "lambda": 1.0, "rho": 0.1,
             "lapse": 0.02}
    ll = STOP.log_likelihood(batch, Latents(q=q), {})
    (grad,) = torch.autograd.grad(ll.sum(), q)
    torch.testing.assert_close(ll, f64([math.log(0.02 + 0.98 * -math.expm1(-1e-8))]), rtol=1e-12, atol=0)
    assert torch.isfinite(grad).all()


# -- properties shared by all four types ---------------------------------------------------------------------

ALL = sorted(PROBLEMS)


def padded_values(rng, shape, valid, fill):
    """``shape`` random values, ``fill`` behind ``valid = False`` (broadcast over a trailing action axis)."""
    values = rng.normal(size=shape)
    mask = valid if valid.shape == shape else valid[..., None] & np.ones(shape, dtype=bool)
    if fill == "mixed":  # a different pathological value per padded entry
        junk = np.array([np.nan, np.inf, -np.inf, 1e300, -1e300, 1e4])
        return np.where(mask, values, junk[np.arange(values.size).reshape(shape) % junk.size])
    return np.where(mask, values, fill)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("fill", [0.0, 1e4, -1e300, np.inf, -np.inf, np.nan, "mixed"])
def test_padded_steps_change_nothing(name, fill):
    problem = PROBLEMS[name](np.random.default_rng(12))
    base = latent_leaves(problem)
    base_ll = evaluate(problem, base)
    base_grads = torch.autograd.grad(base_ll.sum(), list(base.values()))

    rng = np.random.default_rng(13)
    dirty = {}
    for key, values in problem["latents"].items():
        junk = padded_values(rng, values.shape, problem["valid"], fill)
        mask = problem["valid"] if problem["valid"].shape == values.shape else problem["valid"][..., None]
        dirty[key] = f64(np.where(mask, values, junk), grad=True)
    if "action" in problem["batch"]:  # padded actions may hold any index too
        action = problem["batch"]["action"].numpy()
        garbage = rng.integers(NUM_ACTIONS, size=action.shape)
        problem["batch"]["action"] = as_int(np.where(problem["valid"], action, garbage))
    ll = evaluate(problem, dirty)
    grads = torch.autograd.grad(ll.sum(), list(dirty.values()))

    torch.testing.assert_close(ll, base_ll, rtol=0, atol=TOL)
    for grad, base_grad in zip(grads, base_grads, strict=True):
        assert torch.isfinite(grad).all(), "a padded value leaked into the gradient"
        torch.testing.assert_close(grad, base_grad, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_latent(name):
    problem = PROBLEMS[name](np.random.default_rng(14))
    leaves = latent_leaves(problem)
    z = None
    params = None
    if "cutpoints_z" in problem["params"]:
        z = f64(problem["params"]["cutpoints_z"], grad=True)
        params = {"cutpoints": ordered_cutpoints(z)}
    ll = evaluate(problem, leaves, params)
    inputs = [*leaves.values(), *([z] if z is not None else [])]
    grads = torch.autograd.grad(ll.sum(), inputs)
    valid = torch.as_tensor(problem["valid"])
    for key, grad in zip(leaves, grads[: len(leaves)], strict=True):
        assert torch.isfinite(grad).all()
        per_step = grad.abs() if grad.shape == valid.shape else grad.abs().sum(-1)
        # every item's valid steps receive gradient (for stop: through the regret of each item up to its stop)
        assert (per_step * valid).sum(-1).min() > 0, f"no gradient reaches some item's {key}"
        assert (per_step[~valid] == 0).all(), f"gradient reaches padded {key}"
    if z is not None:
        assert torch.isfinite(grads[-1]).all() and (grads[-1].abs() > 0).all(), "no gradient to some cutpoint"


@pytest.mark.parametrize("name", ALL)
def test_sgd_lowers_the_loss(name):
    problem = PROBLEMS[name](np.random.default_rng(15))
    leaves = latent_leaves(problem)
    z = f64(problem["params"]["cutpoints_z"], grad=True) if "cutpoints_z" in problem["params"] else None
    parameters = [*leaves.values(), *([z] if z is not None else [])]
    optimizer = torch.optim.SGD(parameters, lr=0.05)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        params = {"cutpoints": ordered_cutpoints(z)} if z is not None else None
        loss = -evaluate(problem, leaves, params).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Plain gradient descent with a small step on a smooth (or piecewise smooth) loss never goes up; over 20
    # steps it must make real progress (the starting point is random, far from any optimum).
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.05 * abs(losses[0]), losses


# -- leading sample dimensions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_per_sample_nuisance_values_align_with_sample_dims(name):
    """Latents ``(S, item, ...)`` with one nuisance value per sample (``beta`` of shape ``(S,)``, cutpoints
    ``(S, K-1)``) give, sample by sample, what each sample gives alone. S = 5 is also the preference problem's
    item count, so a beta broadcast along the item axis instead of the sample axis would run silently."""
    rng = np.random.default_rng(16)
    problem = PROBLEMS[name](rng)
    samples = 5
    latents = {k: rng.normal(size=(samples, *v.shape)) for k, v in problem["latents"].items()}
    per_sample = []
    if "beta" in problem["params"]:
        values = rng.uniform(0.5, 3.0, size=samples)
        stacked = {"beta": f64(values)}
        per_sample = [{"beta": scalar(v)} for v in values]
    elif "cutpoints_z" in problem["params"]:
        z0 = problem["params"]["cutpoints_z"]
        z = z0 + rng.normal(size=(samples, z0.size))
        stacked = {"cutpoints": ordered_cutpoints(f64(z))}
        per_sample = [{"cutpoints": ordered_cutpoints(f64(zs))} for zs in z]
    else:
        stacked, per_sample = {}, [{}] * samples
    got = evaluate(problem, {k: f64(v) for k, v in latents.items()}, stacked)
    assert got.shape == (samples, len(problem["valid"]))
    for s in range(samples):
        alone = evaluate(problem, {k: f64(v[s]) for k, v in latents.items()}, per_sample[s])
        torch.testing.assert_close(got[s], alone, rtol=0, atol=TOL)
    if "beta" in stacked:  # Pyro's particle layout (P, 1): the trailing 1 is the item axis
        tensors = {k: f64(v) for k, v in latents.items()}
        pyro_style = evaluate(problem, tensors, {"beta": stacked["beta"][:, None]})
        torch.testing.assert_close(pyro_style, got, rtol=0, atol=TOL)


# -- extremes ------------------------------------------------------------------------------------------------


def assert_finite_with_finite_grads(ll, leaves):
    grads = torch.autograd.grad(ll.sum(), leaves)
    assert torch.isfinite(ll).all(), ll
    for grad in grads:
        assert torch.isfinite(grad).all(), grad


def test_pref_huge_beta_and_rewards():
    reward = f64([[[1e4, 1e4], [-1e4, -1e4]], [[0.5, 0.5], [-0.5, -0.5]]], grad=True)
    valid = as_bool(np.ones((2, 2, 2), dtype=bool))
    for beta, y in [(1e4, 1.0), (1e4, 0.0), (1.0, 0.0), (1e4, 0.5)]:
        batch = {"valid": valid, "preference": f64([y, y])}
        ll = PREF.log_likelihood(batch, Latents(reward=reward), {"beta": scalar(beta)})
        assert_finite_with_finite_grads(ll, [reward])
        d = beta * np.array([2e4, 1.0])
        expected = -np.log1p(np.exp(-d)) - (1 - y) * d  # y log s(d) + (1-y) log s(-d), with d >= 0
        np.testing.assert_allclose(ll.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_demo_huge_beta_and_q():
    q = f64([[[1e4, 0.0, -1e4], [0.0, 1.0, 0.5]]], grad=True)
    batch = {"valid": as_bool([[True, True]]), "action": as_int([[1, 1]])}
    ll = DEMO.log_likelihood(batch, Latents(q=q), {"beta": scalar(1e4)})
    assert_finite_with_finite_grads(ll, [q])
    # With these gaps every other action's share is below e^-5000: log pi(a) = -beta * (max Q - Q(a)) exactly.
    np.testing.assert_allclose(ll.detach().numpy(), [-1e4 * 1e4 - 0.0], rtol=1e-12)


def test_rating_huge_rewards_and_two_categories():
    reward = f64([[1e4, 1e4], [-1e4, -1e4], [1e4, 1e4], [-1e4, -1e4]], grad=True)
    z = f64([0.5], grad=True)
    valid = as_bool(np.ones((4, 2), dtype=bool))
    batch = {"valid": valid, "rating": as_int([1, 0, 0, 1])}
    ll = RATING.log_likelihood(batch, Latents(reward=reward), {"cutpoints": ordered_cutpoints(z)})
    assert_finite_with_finite_grads(ll, [reward, z])
    # K = 2 is a logistic regression: log sigmoid(u - theta) for k = 1, log sigmoid(theta - u) for k = 0.
    # Here |u - theta| ~ 1e4, so log sigmoid(x) is 0 for x = +1e4 and x itself for x = -1e4 (e^-9999 is below
    # the double precision of either).
    theta = 0.5
    expected = [0.0, 0.0, theta - 1e4, -1e4 - theta]
    np.testing.assert_allclose(ll.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_rating_extreme_middle_category_is_finite():
    # u far outside the cutpoints: P(middle) ~ e^-10000 underflows as a difference, not as a sum of logs.
    reward = f64([[1e4], [-1e4]], grad=True)
    z = f64([-1.0, 0.0, 0.0, 0.0], grad=True)
    batch = {"valid": as_bool([[True], [True]]), "rating": as_int([2, 2])}
    ll = RATING.log_likelihood(batch, Latents(reward=reward), {"cutpoints": ordered_cutpoints(z)})
    assert_finite_with_finite_grads(ll, [reward, z])
    assert (ll < -9000).all()


def test_stop_huge_q_and_lambda():
    q = f64([[[1e4, -1e4], [1e4, -1e4], [0.0, 0.0]]], grad=True)
    for tau in (-1, 0, 1):
        batch = {
            "valid": as_bool([[True, True, False]]),
            "action": as_int([[1, 1, 0]]),
            "stop_time": as_int([tau]),
            "lambda": 1e4,
            "rho": 0.9,
        }
        ll = STOP.log_likelihood(batch, Latents(q=q), {})
        assert_finite_with_finite_grads(ll, [q])
    # C = (2e4, 0.9 * 2e4 + 2e4): survival terms -lambda * C; a stop once the hazard is 1 costs nothing more.
    np.testing.assert_allclose(ll.detach().numpy(), [-1e4 * 2e4], rtol=1e-12)


def test_all_invalid_segments():
    """A segment with no valid step (validation rejects them, but a likelihood must not blow up):
    - pref/rating: the mean of nothing is taken as 0 (the prior mean), so the label keeps a proper
      distribution (log 0.5 for a pair of empty segments) and no gradient flows to the padded rewards;
    - demo/stop: an empty sum, log-likelihood exactly 0 (no actions to explain; "no stop" is certain)."""
    nan = np.nan
    reward = f64([[[nan, 1e300], [np.inf, nan]]], grad=True)
    none = as_bool(np.zeros((1, 2, 2), dtype=bool))
    for y in (1.0, 0.0, 0.4):
        ll = PREF.log_likelihood({"valid": none, "preference": f64([y])}, Latents(reward=reward), {"beta": scalar(1e4)})
        torch.testing.assert_close(ll, f64([math.log(0.5)]), rtol=0, atol=TOL)
        (grad,) = torch.autograd.grad(ll.sum(), reward)
        assert (grad == 0).all()

    reward = f64([[nan, -np.inf]], grad=True)
    z = f64([-0.5, 0.0], grad=True)
    total = 0.0
    for k in range(3):
        batch = {"valid": as_bool([[False, False]]), "rating": as_int([k])}
        ll = RATING.log_likelihood(batch, Latents(reward=reward), {"cutpoints": ordered_cutpoints(z)})
        assert_finite_with_finite_grads(ll, [reward, z])
        total = total + torch.exp(ll)
    torch.testing.assert_close(total, f64([1.0]), rtol=0, atol=TOL)
    expected_bottom = math.log(1.0 / (1.0 + math.exp(0.5)))  # P(k = 0 | u = 0) = sigmoid(theta_1 - 0)
    ll = RATING.log_likelihood(
        {"valid": as_bool([[False, False]]), "rating": as_int([0])},
        Latents(reward=reward),
        {"cutpoints": ordered_cutpoints(z)},
    )
    torch.testing.assert_close(ll, f64([expected_bottom]), rtol=0, atol=TOL)

    q = f64(np.full((1, 3, NUM_ACTIONS), nan), grad=True)
    empty = as_bool([[False, False, False]])
    for ft, extra in [(DEMO, {}), (STOP, {"stop_time": as_int([-1]), "lambda": 5.0, "rho": 0.5})]:
        batch = {"valid": empty, "action": as_int([[0, 1, 2]]), **extra}
        ll = ft.log_likelihood(batch, Latents(q=q), {"beta": scalar(2.0)} if ft is DEMO else {})
        torch.testing.assert_close(ll, f64([0.0]), rtol=0, atol=0)
        (grad,) = torch.autograd.grad(ll.sum(), q)
        assert (grad == 0).all()
