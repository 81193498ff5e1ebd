"""Per-type criticism (issue 24 part 3): the checks' known answers, the verdicts on clean vs corrupted runs, the
``--json`` object, a user-registered type, and the command's refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mavrl_ppl.analysis.criticize import (
    PPC_Z,
    PPC_Z_HIGH,
    CriticismError,
    TypeCriticism,
    criticize_run,
    decide,
    importance_leave_out,
    lppd,
    main,
    predictive_check,
    reward_shift,
    summary_dict,
    to_text,
)
from mavrl_ppl.feedback.data import load_feedback, save_feedback
from mavrl_ppl.runs import run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plackett_luce.py"
#: A small, quick run: 5x5 grid_trap, SVI (100 steps, 400 draws), every built-in type; fits in seconds.
SMALL = {"env": "grid_trap", "env_size": 5, "feedback": "pref=32,demo=1,rating=32,stop=64", "seed": 0,
         "svi": {"max_steps": 100, "num_posterior_samples": 400}}
EVIDENCE = ("items", "elpd_loo", "elpd_per_item", "p_loo", "pareto_k_max", "share_k_high", "ppc_z", "ppc_p",
            "importance_pareto_k", "importance_shift", "refit_shift", "refit_others_delta_lppd", "heldout_z")


# ---------------------------------------------------------------------------------------------- known answers


def _tables(rng: np.random.Generator, labels_from: str) -> tuple[np.ndarray, np.ndarray]:
    """200 draws x 300 units x 3 labels, peaked predictive (0.8 on a unit's own label); observed labels drawn from
    the predictive itself, uniformly, or always the unit's most probable label (a teacher more deterministic than
    the model)."""
    draws, units, k = 200, 300, 3
    favourite = rng.integers(0, k, units)
    prob = np.full((units, k), 0.1)
    prob[np.arange(units), favourite] = 0.8
    lp = np.broadcast_to(np.log(prob), (draws, units, k)).copy()
    if labels_from == "model":
        labels = (rng.random(units)[:, None] > np.cumsum(prob, 1)).sum(1)
    elif labels_from == "favourite":
        labels = favourite
    else:
        labels = rng.integers(0, k, units)
    return lp[:, np.arange(units), labels], lp


def test_predictive_check_is_calibrated_on_the_models_own_labels_and_flags_uniform_ones() -> None:
    rng = np.random.default_rng(0)
    # own labels: z is approximately N(0, 1) (300 independent units), so |z| < 3 but for a 0.3 % chance
    zs = [predictive_check(*_tables(rng, "model"))["z"] for _ in range(5)]
    assert all(abs(z) < 3 for z in zs), zs
    # uniform labels: expected log-prob log(0.8)/3 + 2 log(0.1)/3 = -1.61 vs -0.64 under replication, ~1 nat per unit
    bad = predictive_check(*_tables(rng, "uniform"))
    assert bad["z"] < -10 and bad["p"] < 1e-6 and bad["excess"] == pytest.approx(-0.97, abs=0.15)


def test_labels_more_predictable_than_the_models_replications_are_conflicting_too() -> None:
    rng = np.random.default_rng(0)
    # always the favourite: log 0.8 per unit against 0.8 log 0.8 + 0.2 log 0.1 = -0.64 expected, sd 0.8 per unit,
    # so z = 300 * 0.42 / (0.8 * sqrt(300)) ~ +9, far above PPC_Z_HIGH
    sure = predictive_check(*_tables(rng, "favourite"))
    assert sure["z"] > PPC_Z_HIGH + 3 and sure["excess"] == pytest.approx(0.42, abs=0.02)
    verdict, reason = decide({"ppc_z": sure["z"], "ppc_p": sure["p"], "ppc_excess": sure["excess"]})
    assert verdict == "conflicting" and "more predictable" in reason
    for z in (PPC_Z, 0.0, PPC_Z_HIGH):  # the thresholds themselves are inside the consistent range
        assert decide({"ppc_z": z, "ppc_p": 0.5, "ppc_excess": 0.0})[0] == "consistent"
    assert decide({"ppc_z": PPC_Z - 0.1, "ppc_p": 0.0, "ppc_excess": -1.0})[0] == "conflicting"


def test_lppd_and_reward_shift_known_answers() -> None:
    ll = np.log(np.array([[0.2, 0.5], [0.4, 0.5]]))  # 2 draws x 2 items
    assert lppd(ll) == pytest.approx(math.log(0.3) + math.log(0.5))
    assert lppd(ll, np.log([1.0, 0.0 + 1e-300])) == pytest.approx(math.log(0.2) + math.log(0.5))
    draws = np.random.default_rng(1).normal(size=(4000, 3)) * [1.0, 2.0, 0.5]
    assert reward_shift(draws, draws.mean(0)) == 0.0
    assert reward_shift(draws, draws.mean(0) + draws.std(0, ddof=1)) == pytest.approx(1.0)


def test_importance_weights_of_an_uninformative_type_change_nothing_and_an_informative_one_moves_the_mean() -> None:
    rng = np.random.default_rng(2)
    reward = rng.normal(size=(1000, 4))
    others = {"b": rng.normal(-1.0, 0.1, size=(1000, 5))}
    flat = importance_leave_out(reward, {"a": np.full((1000, 3), -0.7), **others}, "a")
    assert flat["importance_shift"] == pytest.approx(0.0, abs=1e-12)
    assert flat["importance_others_delta_lppd"] == pytest.approx(0.0, abs=1e-9)
    # a type that liked draws with a high first reward: leaving it out moves that mean down
    informative = importance_leave_out(reward, {"a": reward[:, :1] * 0.5, **others}, "a")
    assert informative["importance_shift"] > 0.05 and informative["importance_pareto_k"] < 0.7


# ---------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("criticize") / "clean"
    run(SMALL, out)
    return out


def test_json_is_an_object_keyed_by_type_with_a_verdict_and_its_evidence(clean_run: Path, capsys) -> None:
    assert main([str(clean_run), "--json", "--no-refit"]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not standard JSON: {c}"))
    assert list(report) == list(load_feedback(clean_run / "feedback.nc"))
    for name, entry in report.items():
        assert entry["verdict"] in ("consistent", "conflicting"), name
        assert set(EVIDENCE) <= set(entry), sorted(set(EVIDENCE) - set(entry))
        assert entry["items"] == entry["items"] // 1 > 0 and 0.0 <= entry["share_k_high"] <= 1.0
        assert entry["elpd_loo"] < 0 and 0.0 <= entry["ppc_p"] <= 1.0
        assert entry["refit_shift"] is None  # --no-refit: no refit numbers, not made-up ones
    # the text report is the same evidence: one verdict line per type, first
    text = to_text({name: TypeCriticism(e["verdict"], e["reason"], e) for name, e in report.items()})
    assert [line.split()[:2] for line in text.splitlines()[: len(report)]] == [[t, e["verdict"]]
                                                                              for t, e in report.items()]


@pytest.mark.parametrize("case", ["missing", "not_a_run", "no_posterior"])
def test_a_bad_run_directory_is_one_line_naming_it_and_exit_2(tmp_path: Path, case: str, capsys,
                                                              clean_run: Path) -> None:
    target = tmp_path / "run"
    if case == "not_a_run":
        target.mkdir()
    elif case == "no_posterior":
        target.mkdir()
        for name in ("config.json", "metrics.json", "feedback.nc"):
            (target / name).write_bytes((clean_run / name).read_bytes())
    assert main([str(target), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and "Traceback" not in err, err


def test_a_user_registered_type_gets_a_verdict_with_no_extra_code(tmp_path: Path) -> None:
    from mavrl_ppl.feedback import unregister

    out = tmp_path / "ranking"
    try:
        run({**SMALL, "feedback": "ranking=32,stop=64", "plugin": [str(EXAMPLE)]}, out)
        report = summary_dict(criticize_run(out, refit=False))
    finally:
        unregister("ranking")
    assert set(report) == {"ranking", "stop"}
    ranking = report["ranking"]
    assert ranking["verdict"] in ("consistent", "conflicting") and ranking["items"] == 32
    # its labels (the 6 orders of 3 segments) were enumerated from its own likelihood: a real PPC number
    assert ranking["ppc_z"] is not None and math.isfinite(ranking["ppc_z"])


def test_an_unreadable_plugin_is_a_criticism_error_naming_it(clean_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("metrics.json", "feedback.nc", "posterior.nc"):
        (broken / name).write_bytes((clean_run / name).read_bytes())
    config = json.loads((clean_run / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "plugin": [str(tmp_path / "gone.py")]}))
    with pytest.raises(CriticismError, match=r"gone\.py"):
        criticize_run(broken, refit=False)


def corrupt_preferences(run_dir: Path, seed: int) -> Path:
    """The run's feedback with coin-flip preference labels (a source that says nothing about the reward)."""
    feedback = load_feedback(run_dir / "feedback.nc")
    pref = feedback["pref"].copy(deep=True)
    pref["preference"].values[:] = np.random.default_rng(seed).integers(0, 2, pref.sizes["item"])
    path = run_dir.parent / f"{run_dir.name}_pref_flipped.nc"
    save_feedback(path, {**feedback, "pref": pref})
    return path


@pytest.fixture(scope="module")
def flipped_run(clean_run: Path) -> Path:
    out = clean_run.parent / "pref_flipped"
    run({"data": str(corrupt_preferences(clean_run, seed=0)), "seed": 0, "svi": SMALL["svi"]}, out)
    return out


def test_coin_flip_preferences_are_flagged_and_nothing_is_on_the_clean_data(clean_run: Path, flipped_run: Path) -> None:
    # Measured on this run (seed 0): clean ppc_z of pref / demo / rating / stop +1.1 / +0.7 / +1.1 / +2.9, corrupted
    # pref -5.3 with the others at +0.1..+3.2: every margin to PPC_Z = -2.5 is at least 2.6 units of z.
    clean = summary_dict(criticize_run(clean_run, refit=False))
    assert [t for t, e in clean.items() if e["verdict"] == "conflicting"] == [], clean
    flipped = summary_dict(criticize_run(flipped_run, refit=False))
    assert [t for t, e in flipped.items() if e["verdict"] == "conflicting"] == ["pref"], flipped
    assert flipped["pref"]["ppc_excess"] < clean["pref"]["ppc_excess"] - 0.1  # coin flips: less probable labels


@pytest.mark.slow
def test_leaving_each_type_out_refits_it_and_keeps_the_refits(flipped_run: Path, tmp_path: Path) -> None:
    report = summary_dict(criticize_run(flipped_run, keep_refits=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"without_{t}.nc" for t in sorted(report)]
    for name, entry in report.items():
        assert entry["refit_shift"] > 0 and entry["refit_seconds"] > 0 and entry["heldout_z"] is not None, name
    # coin flips carry no information: the others' posterior predicts them worse than it predicts the clean
    # demonstration and ratings (per label, against its own replications); holds on this seed-0 run
    assert report["pref"]["heldout_excess"] < min(report[t]["heldout_excess"] for t in ("demo", "rating"))
    assert report["pref"]["verdict"] == "conflicting"
    again = summary_dict(criticize_run(flipped_run, keep_refits=tmp_path))  # kept refits: the same numbers
    assert again["pref"]["refit_shift"] == report["pref"]["refit_shift"]
