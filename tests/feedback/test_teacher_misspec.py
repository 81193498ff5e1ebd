"""Teacher != model (REFERENCE_EXPERIMENTS §1): a teacher setting changes the labels the stated way while the data-set
attributes the model reads stay the model's assumption; both are recorded and survive ``feedback.nc`` and
``config.json``.

Statistics as in ``test_teachers.py``: z-scores of observed label counts against the probabilities a teacher implies,
|z| < 4.5 (two-sided tail 7e-6); each check is also shown to REJECT the other teacher (the model's assumption), so it
can fail. Seeds are fixed.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from feedback.test_teachers import Z_MAX, cumulative_regret_loop, sigmoid, true_reward, valid_mean, z_scores
from mavrl_ppl import runs
from mavrl_ppl.envs import make_grid, make_tabular
from mavrl_ppl.errors import UsageError
from mavrl_ppl.feedback import TabularTeacher, get_feedback_type, load_feedback, save_feedback, simulate_feedback


def test_near_random_preference_labels_with_the_models_beta_kept() -> None:
    """beta_data = 0.01: labels agree with the true-reward preference ~50 % of the time, not ~the 5.0 teacher's."""
    n = 3000
    teacher = TabularTeacher(make_tabular("grid_trap"))
    ds = simulate_feedback(teacher, {"pref": n}, np.random.default_rng(7), teacher_settings={"pref": {"beta": 0.01}})[
        "pref"]
    assert ds.attrs["beta"] == 5.0 and ds.attrs["teacher_beta"] == 0.01  # the model's assumption; the teacher's
    means = valid_mean(true_reward(teacher, ds), ds["valid"].values)
    diff = means[:, 0] - means[:, 1]
    untied = diff != 0
    agree = (ds["preference"].values[untied] == (diff[untied] > 0)).astype(float)
    # P(agree) = sigmoid(beta |diff|): at 0.01 within 0.011 of one half on this grid (|diff| <= 4.1 here), so the
    # share of agreeing labels is one half up to that and 4.5 binomial standard errors (0.041 at ~1900 items).
    bias = sigmoid(0.01 * np.abs(diff).max()) - 0.5
    assert bias < 0.011 and untied.sum() > 1500
    assert abs(agree.mean() - 0.5) < Z_MAX * np.sqrt(0.25 / untied.sum()) + bias
    assert abs(z_scores(agree, sigmoid(0.01 * np.abs(diff[untied])))[0]) < Z_MAX
    assert abs(z_scores(agree, sigmoid(5.0 * np.abs(diff[untied])))[0]) > Z_MAX  # the model's teacher is rejected
    # Same stream as the well-specified teacher: the same segment pairs, only the labels differ.
    clean = simulate_feedback(teacher, {"pref": n}, np.random.default_rng(7))["pref"]
    np.testing.assert_array_equal(clean["state"].values, ds["state"].values)
    assert clean.attrs == {k: v for k, v in ds.attrs.items() if not k.startswith("teacher_")}


def test_near_random_demonstrator_with_the_models_beta_kept() -> None:
    """beta_data = 0.1: the demonstrator's actions follow softmax(0.1 Q*), not softmax(10 Q*); attrs say beta 10."""
    teacher = TabularTeacher(make_grid("trap", 5))
    ds = simulate_feedback(teacher, {"demo": 30}, np.random.default_rng(8), teacher_settings={"demo": {"beta": 0.1}})[
        "demo"]
    assert ds.attrs["beta"] == 10.0 and ds.attrs["teacher_beta"] == 0.1
    valid = ds["valid"].values
    s, a = ds["state"].values[valid], ds["action"].values[valid]

    def worst(beta: float) -> float:
        logits = beta * teacher.q_star[s]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return max(abs(z_scores((a == k).astype(float), p[:, k])[0]) for k in range(p.shape[1]))

    assert worst(0.1) < Z_MAX
    assert worst(10.0) > Z_MAX


def test_stop_teacher_c_scales_its_lambda_and_the_model_keeps_c_2() -> None:
    """c = 0.1: lambda_teacher = 0.1 / ref and the model's lambda = 2.0 / ref (ref = median peak cumulative regret,
    computed here by a loop); stop times follow the teacher's hazard, not the model's."""
    n, rho = 3000, 0.1
    teacher = TabularTeacher(make_grid("cliff", 6))
    ds = simulate_feedback(teacher, {"stop": n}, np.random.default_rng(9), teacher_settings={"stop": {"c": 0.1}})[
        "stop"]
    valid = ds["valid"].values
    cum = cumulative_regret_loop(teacher.q_star, ds["state"].values, ds["action"].values, valid, rho)
    ref = np.median(np.where(valid, cum, -np.inf).max(-1))
    np.testing.assert_allclose(ds.attrs["lambda"], 2.0 / ref, rtol=1e-12)
    np.testing.assert_allclose(ds.attrs["teacher_lambda"], 0.1 / ref, rtol=1e-12)
    assert (ds.attrs["c"], ds.attrs["teacher_c"], ds.attrs["rho"], ds.attrs["lapse"]) == (2.0, 0.1, rho, 0.0)
    stopped = (ds["stop_time"].values >= 0).astype(float)

    def z(lam: float) -> float:
        p_stop = 1.0 - np.exp(-lam * np.where(valid, cum, 0.0).sum(-1))
        return np.abs(z_scores(stopped, p_stop, np.digitize(p_stop, [0.2, 0.4, 0.6, 0.8]))).max()

    assert z(ds.attrs["teacher_lambda"]) < Z_MAX
    # The model's lambda (20x) predicts a stop in > 99 % of the segments; the teacher stopped in ~41 %.
    p_model = 1.0 - np.exp(-ds.attrs["lambda"] * np.where(valid, cum, 0.0).sum(-1))
    assert p_model.mean() > 0.99 and stopped.mean() < 0.6


def test_rating_noise_is_thresholded_at_the_clean_cutpoints() -> None:
    """noise_sd = 2: the cutpoints are the quantiles of the CLEAN judgements u + logistic; the label is the bin of
    judgement + N(0, 2^2). Rebuilt here from the same generator in the simulator's stated draw order."""
    n, sd, K = 2000, 2.0, 5
    teacher = TabularTeacher(make_grid("cliff", 6))
    ds = get_feedback_type("rating").simulate(teacher, n, np.random.default_rng(10), noise_sd=sd)
    rng = np.random.default_rng(10)
    segments = teacher.segments((n,), 10, rng)
    clean = valid_mean(teacher.mdp.group_rewards[segments["state"]], segments["valid"]) + rng.logistic(size=n)
    noisy = clean + sd * rng.standard_normal(n)
    cut = np.quantile(clean, np.arange(1, K) / K)
    np.testing.assert_allclose(ds.attrs["true_cutpoints"], cut, rtol=1e-12)
    assert not np.allclose(np.quantile(noisy, np.arange(1, K) / K), cut, atol=0.1)  # the noisy quantiles differ
    np.testing.assert_array_equal(ds["rating"].values, (noisy[:, None] > cut).sum(-1))
    assert ds.attrs["noise_sd"] == sd
    # Through simulate_feedback the model's attributes carry no noise; the teacher's is beside them.
    data = simulate_feedback(teacher, {"rating": n}, np.random.default_rng(11), teacher_settings={"rating": {
        "noise_sd": sd}})["rating"]
    plain = simulate_feedback(teacher, {"rating": n}, np.random.default_rng(11))["rating"]
    assert "noise_sd" not in data.attrs and data.attrs["teacher_noise_sd"] == sd
    np.testing.assert_array_equal(data.attrs["true_cutpoints"], plain.attrs["true_cutpoints"])
    changed = (data["rating"].values != plain["rating"].values).mean()
    assert 0.3 < changed < 0.9, changed  # sd 2 against clean judgements of sd ~2: most labels move, not all


TEACHER_TOML = '[teacher.pref]\nbeta = 0.01\n[teacher.demo]\nbeta = 0.1\n[teacher.stop]\nc = 0.1\n[teacher.rating]\n' \
               'noise_sd = 2.0\n'
TINY = {"env_size": 3, "seed": 4, "feedback": "pref=8,demo=1,rating=8,stop=8"}


def test_teacher_settings_round_trip_through_feedback_nc_and_config_json(tmp_path) -> None:
    """A TOML [teacher] table through resolve_config, the simulation, and the files write_run writes."""
    toml = tomllib.loads(TEACHER_TOML)
    problem = runs.make_problem(runs.resolve_config({**toml, **TINY}))
    (tmp_path / "config.json").write_text(json.dumps(problem.config))  # as write_run writes it
    save_feedback(tmp_path / "feedback.nc", problem.feedback)
    assert json.loads((tmp_path / "config.json").read_text())["teacher"] == toml["teacher"]
    assert_teacher_and_model_recorded(load_feedback(tmp_path / "feedback.nc"))


@pytest.mark.slow
def test_a_real_run_records_teacher_and_model(tmp_path) -> None:
    """The same through runs.run (a tiny real fit, ~15 s with its imports)."""
    toml = tomllib.loads(TEACHER_TOML)
    result = runs.run({**toml, **TINY, "svi": {"max_steps": 4, "eval_every": 2, "num_posterior_samples": 10}},
                      tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["teacher"] == toml["teacher"]
    assert_teacher_and_model_recorded(load_feedback(tmp_path / "run" / "feedback.nc"))
    assert np.isfinite(result.metrics["normalized_score"])


def assert_teacher_and_model_recorded(feedback: dict) -> None:
    assert (feedback["pref"].attrs["beta"], feedback["pref"].attrs["teacher_beta"]) == (5.0, 0.01)
    assert (feedback["demo"].attrs["beta"], feedback["demo"].attrs["teacher_beta"]) == (10.0, 0.1)
    assert (feedback["stop"].attrs["c"], feedback["stop"].attrs["teacher_c"]) == (2.0, 0.1)
    assert feedback["stop"].attrs["lambda"] == pytest.approx(20 * feedback["stop"].attrs["teacher_lambda"])
    assert feedback["rating"].attrs["teacher_noise_sd"] == 2.0 and "noise_sd" not in feedback["rating"].attrs


def test_fit_command_line_teacher_flag_builds_the_table() -> None:
    from mavrl_ppl.fit import build_parser, settings_from_args

    args = build_parser().parse_args(["--teacher", "pref.beta=0.01", "--teacher", "rating.noise_sd=2"])
    assert settings_from_args(args)["teacher"] == {"pref": {"beta": 0.01}, "rating": {"noise_sd": 2}}
    with pytest.raises(UsageError, match=r"^--teacher 'pref': expected TYPE\.SETTING=VALUE"):
        settings_from_args(build_parser().parse_args(["--teacher", "pref"]))


@pytest.mark.parametrize("settings, message", [
    ({"teacher": {"pref": {"beta": 0.01}}, "data": "x.nc"}, "apply to simulated feedback, not to --data"),
    ({"teacher": {"pref": 0.01}}, r"\[teacher\] must hold one table per feedback type"),
])
def test_teacher_settings_refused_where_they_cannot_apply(settings: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        runs.resolve_config(settings)


@pytest.mark.parametrize("teacher, message", [
    ({"demo": {"beta": 0.1}}, "teacher settings for demo, which is not simulated"),
    ({"pref": {"bta": 0.1}}, r"unknown simulator setting\(s\) \['bta'\]"),
])
def test_teacher_settings_refused_before_any_fit(teacher: dict, message: str) -> None:
    config = runs.resolve_config({"env_size": 3, "feedback": "pref=8", "teacher": teacher})
    with pytest.raises(UsageError, match=message):
        runs.make_problem(config)
