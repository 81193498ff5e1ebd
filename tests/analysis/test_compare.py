"""SVI-vs-NUTS comparison: known answers on synthetic posteriors, exact Wasserstein-1, and the CLI's refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import xarray as xr

from mavrl_ppl.analysis.compare import compare_posteriors, compare_runs, feedback_digest, main, wasserstein_1d
from mavrl_ppl.analysis.posterior import build_inference_data
from mavrl_ppl.envs.grids import make_tabular
from mavrl_ppl.feedback import TabularTeacher
from mavrl_ppl.feedback.data import load_feedback, save_feedback, simulate_feedback
from mavrl_ppl.netcdf import write_inference_data

SIZE = 3  # a 3x3 grid: 9 reward parameters


def reward_da(draws: np.ndarray) -> xr.DataArray:
    """(chain, draw, state) draws as the posterior ``reward`` DataArray."""
    return xr.DataArray(draws, dims=("chain", "draw", "state"))


@cache
def small_feedback(seed: int = 0, env: str = "grid_trap") -> dict[str, xr.Dataset]:
    """A tiny simulated feedback set on a 3x3 grid (cached: the tests only read it)."""
    mdp = make_tabular(env, size=SIZE)
    counts = {"pref": 4, "demo": 1, "rating": 4, "stop": 4}
    return simulate_feedback(TabularTeacher(mdp), counts, np.random.default_rng(seed))


def write_run(run_dir: Path, draws: np.ndarray, feedback: dict[str, xr.Dataset], *, env: str = "grid_trap",
              inference: str = "svi", seed: int = 0, metrics: dict | None = None) -> Path:
    """A run directory as ``python -m mavrl_ppl.fit`` writes it (posterior.nc, feedback.nc, metrics.json, config)."""
    mdp = make_tabular(env, size=SIZE)
    idata = build_inference_data(reward=draws, reward_dims=("state",), nuisance={}, sample_stats=None,
                                 feedback=feedback, mdp=mdp, attrs={"inference": inference, "seed": seed,
                                                                    "fit_seconds": 1.0})
    run_dir.mkdir(parents=True)
    write_inference_data(idata, run_dir / "posterior.nc")
    save_feedback(run_dir / "feedback.nc", feedback)
    values = {"inference": inference, "env": env, "seed": seed, "normalized_score": 50.0, "epic": 0.5,
              "fit_seconds": 1.0, "total_seconds": 2.0, **(metrics or {})}
    (run_dir / "metrics.json").write_text(json.dumps(values))
    (run_dir / "config.json").write_text(json.dumps({"env": env, "env_size": SIZE, "p_rand": 0.0, "seed": seed,
                                                     "inference": inference}))
    return run_dir


def test_identical_posteriors_agree_perfectly() -> None:
    draws = np.random.default_rng(0).normal(size=(2, 300, 9)) * np.linspace(0.5, 2, 9) + np.arange(9)
    ds = compare_posteriors(reward_da(draws), reward_da(draws.copy()))
    assert float(ds["correlation"]) == pytest.approx(1.0, abs=1e-12)
    assert float(ds["coverage_b_in_a"]) == 1.0
    assert float(ds["coverage_a_in_b"]) == 1.0
    np.testing.assert_array_equal(ds["wasserstein"].values, 0.0)
    assert float(ds["mean_abs_diff_sd"]) == 0.0
    assert ds["mean"].dims == ("run", "state")


@pytest.mark.parametrize("c", [0.25, 3.0])
def test_constant_shift_gives_w1_c_and_diff_c_over_sd(c: float) -> None:
    rng = np.random.default_rng(1)
    sd = np.linspace(0.5, 2.0, 9)
    draws = rng.normal(size=(2, 400, 9)) * sd
    ds = compare_posteriors(reward_da(draws), reward_da(draws + c))
    np.testing.assert_allclose(ds["wasserstein"].values, c, rtol=1e-12)
    sample_sd = draws.reshape(-1, 9).std(axis=0, ddof=1)
    np.testing.assert_allclose(ds["abs_diff_sd"].values, c / sample_sd, rtol=1e-10)
    assert float(ds["mean_abs_diff_sd"]) == pytest.approx(np.mean(c / sample_sd), rel=1e-10)
    assert float(ds["correlation"]) == pytest.approx(1.0, abs=1e-12)  # a shift does not change the correlation


def test_coverage_when_half_the_parameters_move_beyond_the_interval() -> None:
    rng = np.random.default_rng(2)
    draws = rng.uniform(-1.0, 1.0, size=(1, 1000, 8))  # 90% intervals within [-1, 1]
    shift = np.where(np.arange(8) < 4, 5.0, 0.0)  # far outside for the first four parameters
    ds = compare_posteriors(reward_da(draws), reward_da(draws + shift))
    assert float(ds["coverage_b_in_a"]) == 0.5
    assert float(ds["coverage_a_in_b"]) == 0.5
    np.testing.assert_array_equal(ds["b_mean_in_a"].values, np.arange(8) >= 4)
    np.testing.assert_allclose(ds["wasserstein"].values, shift, atol=1e-12)


def test_coverage_can_differ_between_the_two_directions() -> None:
    rng = np.random.default_rng(3)
    wide = rng.normal(size=(1, 2000, 5)) * 10.0
    narrow = rng.normal(size=(1, 2000, 5)) * 0.01 + 1.0  # its mean lies inside wide's interval, not the reverse
    ds = compare_posteriors(reward_da(wide), reward_da(narrow))
    assert float(ds["coverage_b_in_a"]) == 1.0
    assert float(ds["coverage_a_in_b"]) == 0.0


def test_w1_by_hand_and_against_scipy_with_unequal_sample_sizes() -> None:
    # a = {0, 1, 2}, b = {0, 3}: quantile steps at 1/3, 1/2, 2/3 -> 1/6 * 1 + 1/6 * 2 + 1/3 * 1 = 5/6
    assert float(wasserstein_1d(np.array([0.0, 1.0, 2.0]), np.array([0.0, 3.0]))) == pytest.approx(5 / 6)
    assert float(wasserstein_1d(np.array([0.0, 1.0]), np.array([0.0]))) == pytest.approx(0.5)
    rng = np.random.default_rng(4)
    a = rng.gamma(2.0, size=(137, 6))
    b = rng.normal(size=(60, 6))
    expected = [scipy.stats.wasserstein_distance(a[:, j], b[:, j]) for j in range(6)]
    np.testing.assert_allclose(wasserstein_1d(a, b), expected, rtol=1e-12)
    # through compare_posteriors: different chain/draw counts per run
    ds = compare_posteriors(reward_da(a.reshape(1, 137, 6)), reward_da(b.reshape(3, 20, 6)))
    np.testing.assert_allclose(ds["wasserstein"].values, expected, rtol=1e-12)


def test_reference_sd_is_chosen_run() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(1, 500, 4))
    b = rng.normal(size=(1, 500, 4)) * 4.0 + 1.0
    sd_a, sd_b = a[0].std(axis=0, ddof=1), b[0].std(axis=0, ddof=1)
    diff = np.abs(a[0].mean(axis=0) - b[0].mean(axis=0))
    np.testing.assert_allclose(compare_posteriors(reward_da(a), reward_da(b))["abs_diff_sd"], diff / sd_b)
    np.testing.assert_allclose(compare_posteriors(reward_da(a), reward_da(b), reference="a")["abs_diff_sd"],
                               diff / sd_a)


def test_mismatched_parameters_raise() -> None:
    with pytest.raises(ValueError, match="parameter dims differ"):
        compare_posteriors(reward_da(np.zeros((1, 5, 3))), reward_da(np.zeros((1, 5, 4))))


def test_feedback_digest_depends_on_content_not_on_the_file(tmp_path: Path) -> None:
    feedback = small_feedback()
    save_feedback(tmp_path / "a.nc", feedback)
    again = load_feedback(tmp_path / "a.nc")
    save_feedback(tmp_path / "b.nc", dict(reversed(list(again.items()))))
    assert feedback_digest(load_feedback(tmp_path / "b.nc")) == feedback_digest(feedback)
    changed = {**feedback, "rating": feedback["rating"].copy(deep=True)}
    changed["rating"]["rating"].values[0] = (changed["rating"]["rating"].values[0] + 1) % 5
    assert feedback_digest(changed) != feedback_digest(feedback)


NUTS_OK = {"converged": True, "rhat_max": 1.004, "ess_bulk_min": 900.0, "divergences": 0}


def _two_runs(tmp_path: Path, shift: float = 0.5) -> tuple[Path, Path, np.ndarray]:
    draws = np.random.default_rng(6).normal(size=(1, 200, SIZE * SIZE))
    a = write_run(tmp_path / "svi_run", draws, small_feedback(), inference="svi", metrics={"normalized_score": 70.0})
    b = write_run(tmp_path / "nuts_run", draws.reshape(2, 100, -1) + shift, small_feedback(), inference="nuts",
                  metrics={"normalized_score": 90.0, "epic": 0.25, **NUTS_OK})
    return a, b, draws


def test_compare_runs_reads_metrics_and_uses_nuts_as_reference(tmp_path: Path) -> None:
    a, b, _ = _two_runs(tmp_path)
    ds = compare_runs(a, b)
    np.testing.assert_allclose(ds["wasserstein"].values, 0.5, rtol=1e-10)
    np.testing.assert_array_equal(ds["normalized_score"].values, [70.0, 90.0])
    np.testing.assert_array_equal(ds["epic"].values, [0.5, 0.25])
    assert list(ds["inference"].values) == ["svi", "nuts"]
    assert ds.attrs["reference"].startswith("NUTS")
    assert ds.attrs["same_data"] == 1
    # NUTS in position A: still the reference
    assert compare_runs(b, a).attrs["reference"].startswith("NUTS")


def test_cli_writes_outputs_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _ = _two_runs(tmp_path)
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| correlation of posterior means | 1.0000 |" in text
    assert "| 70.00 |" in text and "| 90.00 |" in text
    for name in ("comparison.nc", "comparison.json", "compare_means.png", "compare_reward_maps.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["wasserstein_mean"] == pytest.approx(0.5)
    saved = xr.load_dataset(out / "comparison.nc", engine="h5netcdf")
    np.testing.assert_allclose(saved["wasserstein"].values, 0.5, rtol=1e-10)


def test_cli_refuses_different_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    draws = np.zeros((1, 10, SIZE * SIZE)) + np.arange(10)[None, :, None]
    a = write_run(tmp_path / "a", draws, small_feedback(0))
    b = write_run(tmp_path / "b", draws, small_feedback(1), inference="nuts")
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and str(b / "feedback.nc") in err
    assert "not the same feedback data" in err
    assert not (tmp_path / "cmp").exists()


def test_cli_refuses_a_different_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    draws = np.zeros((1, 10, SIZE * SIZE)) + np.arange(10)[None, :, None]
    a = write_run(tmp_path / "a", draws, small_feedback(0))
    b = write_run(tmp_path / "b", draws, small_feedback(0), env="grid_sparse", inference="nuts")
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not the same env" in err and str(b / "posterior.nc") in err


def test_an_env_size_left_to_the_env_matches_the_same_size_given(tmp_path: Path) -> None:
    # The README's pair: an SVI run with the env's own size (env_size null) and a NUTS run of its feedback.nc, whose
    # config records the size the data came from.
    a, b, _ = _two_runs(tmp_path)
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, "env_size": None}))
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    (a / "config.json").write_text(json.dumps({**config, "env_size": SIZE + 1}))  # two sizes named: refused
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp2")]) == 2


@pytest.mark.parametrize("missing", ["posterior.nc", "feedback.nc", "metrics.json"])
def test_cli_refuses_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str) -> None:
    a, b, _ = _two_runs(tmp_path)
    (b / missing).unlink()
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {b / missing}: no such file"


def test_module_entry_point_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mavrl_ppl.analysis.compare", str(tmp_path / "nope"),
                             str(tmp_path / "nope2")], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope' / 'posterior.nc'}: no such file"


def test_an_unconverged_nuts_reference_is_refused_unless_accepted(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    draws = np.random.default_rng(6).normal(size=(1, 200, SIZE * SIZE))
    a = write_run(tmp_path / "svi_run", draws, small_feedback(), inference="svi")
    bad = {"converged": False, "rhat_max": 1.2, "ess_bulk_min": 50.0, "divergences": 7}
    b = write_run(tmp_path / "nuts_run", draws.reshape(2, 100, -1), small_feedback(), inference="nuts", metrics=bad)
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not converge" in err and "R-hat max 1.200" in err
    assert "--allow-unconverged" in err
    assert not (tmp_path / "cmp").exists()
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp"), "--allow-unconverged"]) == 0
    assert "NOT converged: R-hat max 1.200, bulk ESS min 50, 7 divergences" in capsys.readouterr().out
    ok = write_run(tmp_path / "nuts_ok", draws.reshape(2, 100, -1), small_feedback(), inference="nuts", metrics=NUTS_OK)
    assert "converged: R-hat max 1.004" in str(compare_runs(a, ok)["nuts_verdict"].values[1])
