"""The transfer experiment: argument parsing, a tiny real run end to end (records, tables, figures, resume), failures
counted, and the command's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mavrl_ppl.experiments.baseline_table import run_fit
from mavrl_ppl.experiments.transfer import (
    IMITATION,
    SUBSETS,
    SettingsMismatch,
    build_parser,
    make_plan,
    parse_levels,
    parse_subsets,
    run_transfer,
)

TINY = ["--env", "grid_trap", "--env-size", "4", "--levels", "0,0.4", "--seeds", "0",
        "--feedback", "pref=8,demo=1,rating=8,stop=8"]
SVI = "[svi]\nmax_steps = 20\neval_every = 10\nnum_posterior_samples = 20\n"


def test_parse_levels() -> None:
    assert parse_levels("0:0.8:0.1", "grid_trap") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert parse_levels("0,0.4", "grid_cliff") == [0.0, 0.4]
    assert parse_levels("1:2:0.5", "Acrobot-v1") == [1.0, 1.5, 2.0]
    for bad, match in [("0:1", "start:stop:step"), ("x", "bad --levels"), ("0,1.5", "p_rand"), ("0,0", "repeated"),
                       ("0:0.8:-0.1", "step"), ("", "no levels")]:
        with pytest.raises(ValueError, match=match):
            parse_levels(bad, "grid_trap")
    with pytest.raises(ValueError, match="asymmetry"):
        parse_levels("0,1", "Acrobot-v1")


def test_parse_subsets() -> None:
    assert parse_subsets("all") == [*SUBSETS, IMITATION] and len(SUBSETS) == 11
    assert parse_subsets("demo+pref, pref+demo+rating+stop,imitation") == ["pref+demo", "pdrs", IMITATION]
    with pytest.raises(ValueError, match="unknown subset"):
        parse_subsets("pref+pref")
    with pytest.raises(ValueError, match="unknown subset"):
        parse_subsets("ranking")


def _plan(tmp_path: Path, *extra: str, svi: str = SVI):
    (tmp_path / "svi.toml").write_text(svi)
    args = build_parser().parse_args([*TINY, "--svi-config", str(tmp_path / "svi.toml"), "--out",
                                      str(tmp_path / "out"), *extra])
    return make_plan(args)


class Counting:
    """:func:`run_fit` that counts its calls (and can be told to fail one run)."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, config: dict, out: Path) -> dict:
        self.calls.append(out.name)
        if self.fail is not None and out.name.startswith(self.fail):
            raise RuntimeError("boom: training diverged")
        return run_fit(config, out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset, list[str]]:
    """One tiny real transfer run (3 fits on a 4x4 trap grid, 2 levels), shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("transfer")
    fit = Counting()
    ds = run_transfer(_plan(tmp_path, "--subsets", "pdrs,pref,imitation"), fit=fit, progress=False, in_process=True)
    return tmp_path, ds, fit.calls


def test_tiny_transfer_end_to_end_and_resume(tiny: tuple[Path, xr.Dataset, list[str]]) -> None:
    tmp_path, ds, calls = tiny
    plan = _plan(tmp_path, "--subsets", "pdrs,pref,imitation")
    # The all-types run simulates; pref is cut from it; imitation needs the demo-only fit
    assert sorted(calls) == ["svi-demo_grid_trap_seed0", "svi-pref_grid_trap_seed0", "svi_grid_trap_seed0"]
    out = plan.out
    for name in ("transfer.nc", "transfer.md", "transfer.tex", "transfer.png", "transfer_grid_trap.png"):
        assert (out / name).is_file(), name
    records = sorted(p.name for p in (out / "records").iterdir())
    assert records == [f"grid_trap_seed0_{s}.json" for s in ("imitation", "pdrs", "pref")]
    assert (ds["status"] == "ok").all()
    score = ds["normalized_return"].sel(env="grid_trap", seed=0)
    assert np.isfinite(score.values).all() and score.shape == (3, 2)
    # Level 0 is the training env: the transfer score of a fitted subset is the run's own normalised score
    for subset in ("pdrs", "pref"):
        run = "svi" if subset == "pdrs" else f"svi-{subset}"
        metrics = json.loads((plan.runs / f"{run}_grid_trap_seed0" / "metrics.json").read_text())
        assert float(score.sel(subset=subset)[0]) == pytest.approx(metrics["normalized_score"], abs=1e-9)
    # Imitation at level 0 = the demo fit re-planned in the same dynamics: the demo run's own score too
    demo = json.loads((plan.runs / "svi-demo_grid_trap_seed0" / "metrics.json").read_text())
    assert float(score.sel(subset=IMITATION)[0]) == pytest.approx(demo["normalized_score"], abs=1e-9)
    ceiling = ds["optimal_normalized"].sel(env="grid_trap").values
    assert ceiling[0] == pytest.approx(100.0) and ceiling[1] < 100.0  # noise costs even the true reward
    text = (out / "transfer.md").read_text()
    assert "UNPERTURBED" in text and "| PDRS (all four) | 1/1 |" in text and "Failed cells: 0 of 3" in text
    reread = xr.load_dataset(out / "transfer.nc", engine="h5netcdf")
    assert list(reread["level"].sel(env="grid_trap").values) == [0.0, 0.4]

    # Again: every cell comes from its record, nothing is fitted or evaluated
    again = Counting()
    ds2 = run_transfer(plan, fit=again, progress=False, in_process=True, plots=False)
    assert again.calls == [] and ds2.attrs["cells_from_records"] == 3 and ds2.attrs["fits_run"] == 0
    np.testing.assert_array_equal(ds2["normalized_return"].values, ds["normalized_return"].values)
    # A new level: the finished runs are reused (no refit), only the new level is evaluated
    more = _plan(tmp_path, "--subsets", "pdrs,pref,imitation", "--levels", "0,0.4,0.8")
    ds3 = run_transfer(more, fit=again, progress=False, in_process=True, plots=False)
    assert again.calls == [] and ds3.attrs["fits_reused"] == 3 and ds3.attrs["cells_evaluated"] == 3
    np.testing.assert_array_equal(ds3["normalized_return"].values[..., :2], ds["normalized_return"].values)
    # Other fit settings: the records do not match, and the finished runs are refused rather than silently reused
    other = _plan(tmp_path, "--subsets", "pdrs,pref,imitation", svi=SVI.replace("max_steps = 20", "max_steps = 30"))
    with pytest.raises(SettingsMismatch, match="svi_grid_trap_seed0: a finished run fitted with other settings"):
        run_transfer(other, fit=again, progress=False, in_process=True, plots=False)
    assert again.calls == []
    (tmp_path / "svi.toml").write_text(SVI)


def test_a_failed_fit_is_counted_and_shown(tiny: tuple[Path, xr.Dataset, list[str]], tmp_path: Path) -> None:
    runs = tiny[0] / "out" / "runs"  # the all-types and pref runs are reused from there; the pair's fit fails
    plan = _plan(tmp_path, "--subsets", "pdrs,pref,pref+stop", "--runs", str(runs))
    fit = Counting(fail="svi-pref+stop")
    ds = run_transfer(plan, fit=fit, progress=False, in_process=True, plots=False)
    assert fit.calls == ["svi-pref+stop_grid_trap_seed0"]
    status = ds["status"].sel(env="grid_trap", seed=0)
    assert list(status.values) == ["ok", "ok", "failed"]
    np.testing.assert_array_equal(ds["normalized_return"].sel(subset=["pdrs", "pref"]).values,
                                  tiny[1]["normalized_return"].sel(subset=["pdrs", "pref"]).values)
    assert "boom: training diverged" in str(ds["message"].sel(env="grid_trap", seed=0, subset="pref+stop").values)
    assert int(ds["n_ok"].sel(env="grid_trap", subset="pref+stop")[0]) == 0
    text = (plan.out / "transfer.md").read_text()
    assert "Failed cells: 1 of 3" in text and "boom" in text
    assert not (plan.out / "records" / "grid_trap_seed0_pref+stop.json").exists()  # retried next time


@pytest.mark.parametrize(("levels", "message"), [("0:1", "bad --levels"), ("0,2", "p_rand of grid_trap must lie"),
                                                 ("0,0", "repeated")])
def test_cli_bad_levels_exit_2_with_one_line(tmp_path: Path, levels: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mavrl_ppl.experiments.transfer", "--env", "grid_trap",
                             "--levels", levels, "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_command_end_to_end_and_again_without_refitting(tmp_path: Path) -> None:
    (tmp_path / "svi.toml").write_text(SVI)
    cmd = [sys.executable, "-m", "mavrl_ppl.experiments.transfer", *TINY, "--subsets", "pdrs,demo,imitation",
           "--svi-config", str(tmp_path / "svi.toml"), "--out", str(tmp_path / "out"), "--jobs", "2", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "| Demo | 1/1 |" in first.stdout
    assert len(list((tmp_path / "out" / "records").iterdir())) == 3
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 fits run" in again.stdout and "3 taken from their records" in again.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")
def test_acrobot_transfer_retrains_ppo_in_the_perturbed_env(tmp_path: Path) -> None:
    """Control path: fit on stock Acrobot, PPO retrained (a few thousand steps) at two asymmetries, imitation from
    the demo fit's Q-network."""
    (tmp_path / "svi.toml").write_text("[svi]\nmax_steps = 20\neval_every = 10\nnum_posterior_samples = 20\n")
    args = build_parser().parse_args(["--env", "Acrobot-v1", "--levels", "1,2", "--seeds", "0", "--subsets",
                                      "pdrs,imitation", "--feedback", "pref=16,demo=1,rating=16,stop=16",
                                      "--svi-config", str(tmp_path / "svi.toml"), "--ppo-timesteps", "4096",
                                      "--eval-episodes", "4", "--out", str(tmp_path / "out")])
    ds = run_transfer(make_plan(args), progress=False, in_process=True, plots=False)
    assert (ds["status"] == "ok").all(), ds["message"].values
    assert np.isfinite(ds["normalized_return"].values).all()
    assert np.isnan(ds["optimal_normalized"].values).all()
