"""The misspecification command on fake fits (an injected fit writing a known ``metrics.json``): the conditions'
settings, the plan, records and resumption, failures kept, the tables beside the published numbers, argument errors;
and (slow) one real cell through the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mavrl_ppl.errors import UsageError
from mavrl_ppl.experiments import misspec
from mavrl_ppl.experiments.misspec import CONDITIONS, build_misspec, condition_settings, plan_fits
from mavrl_ppl.runs import resolve_config

ENV = "grid_trap"
SEEDS = [0, 1, 2]
ALL_FOUR = "pref=64,demo=1,rating=64,stop=256"


def base_score(seed: int, types: int) -> float:
    return 60.0 + 10.0 * types + seed


def misspec_score(seed: int, corrupted: int) -> float:
    return 50.0 - 10.0 * corrupted + 2.0 * seed


class FakeFit:
    """Stands in for :func:`mavrl_ppl.runs.run`: checks the settings, writes ``metrics.json`` with a score that
    depends on the run's types and corrupted types, or raises for the runs named in ``fail``."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.fail = set(fail)
        self.calls: list[str] = []
        self.configs: dict[str, dict] = {}
        self.lock = threading.Lock()

    def __call__(self, config: dict, out: Path) -> dict:
        resolved = resolve_config(config)  # the settings a real run would get must be valid
        with self.lock:
            self.calls.append(out.name)
            self.configs[out.name] = resolved
        if out.name in self.fail:
            raise RuntimeError("boom: training diverged")
        types = len(resolved["feedback"].split(","))
        seed = int(resolved["seed"])
        score = misspec_score(seed, len(resolved["teacher"])) if resolved["teacher"] else base_score(seed, types)
        metrics = {"normalized_score": score, "fit_seconds": 1.0}
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(resolved))
        (out / "metrics.json").write_text(json.dumps(metrics))
        return {"metrics": metrics, "converged": True}


def test_conditions_are_the_papers() -> None:
    """REFERENCE_EXPERIMENTS §1: counts pref 64, demo 1, rating 64, stop 256; corruptions beta 0.01 / 0.1, c 0.1,
    rating noise sd 2; singles = only that type, pdrs_* = all four with one or all corrupted."""
    assert list(CONDITIONS) == ["pref", "demo", "rating", "stop", "pdrs_pref", "pdrs_demo", "pdrs_rating",
                                "pdrs_stop", "pdrs_all"]
    assert condition_settings("pref") == ("pref=64", {"pref": {"beta": 0.01}})
    assert condition_settings("demo") == ("demo=1", {"demo": {"beta": 0.1}})
    assert condition_settings("rating") == ("rating=64", {"rating": {"noise_sd": 2.0}})
    assert condition_settings("stop") == ("stop=256", {"stop": {"c": 0.1}})
    assert condition_settings("pdrs_demo") == (ALL_FOUR, {"demo": {"beta": 0.1}})
    assert condition_settings("pdrs_all") == (ALL_FOUR, {"pref": {"beta": 0.01}, "demo": {"beta": 0.1},
                                                         "rating": {"noise_sd": 2.0}, "stop": {"c": 0.1}})
    assert misspec.PUBLISHED["pdrs_demo"]["grid_trap"] == (95.3, 73.0, 9.0, 0.77)  # a spot check of the copy


def test_plan_shares_one_base_run_among_the_pdrs_conditions(tmp_path: Path) -> None:
    cells = [(ENV, c, s) for c in CONDITIONS for s in (0, 1)]
    fits = plan_fits(cells, tmp_path)
    names = [f.name for f in fits]
    assert len(names) == len(set(names)) == 2 * (9 + 5)  # per seed: 9 corrupted runs, 4 single + 1 PDRS Base runs
    assert f"base-pdrs_{ENV}_seed1" in names and f"misspec-pdrs_all_{ENV}_seed0" in names


def _build(out: Path, runner: FakeFit, seeds: list[int] = SEEDS) -> xr.Dataset:
    return build_misspec([ENV], list(CONDITIONS), seeds, out, jobs=1, fit=runner, progress=False, in_process=True)


def test_table_records_failures_and_resume(tmp_path: Path) -> None:
    failing = f"misspec-pdrs_demo_{ENV}_seed1"
    runner = FakeFit(fail=(failing,))
    ds = _build(tmp_path, runner).sel(env=ENV)
    assert len(runner.calls) == len(set(runner.calls)) == 3 * 14

    # The corrupted run differs from its Base run only by the teacher: same seed, counts, env, SVI settings.
    bad, good = runner.configs[f"misspec-pdrs_demo_{ENV}_seed0"], runner.configs[f"base-pdrs_{ENV}_seed0"]
    assert bad["teacher"] == {"demo": {"beta": 0.1}} and good["teacher"] == {}
    assert {k: v for k, v in bad.items() if k != "teacher"} == {k: v for k, v in good.items() if k != "teacher"}
    assert runner.configs[f"base-stop_{ENV}_seed2"]["feedback"] == "stop=256"

    # Means and SEs over seeds of the fake's known scores; the failed fit is left out of the mean and counted.
    seeds = np.array(SEEDS, dtype=float)
    cell = ds.sel(condition="pdrs_all")
    assert float(cell["score_mean"].sel(role="base")) == pytest.approx(np.mean(60 + 40 + seeds))
    assert float(cell["score_mean"].sel(role="misspec")) == pytest.approx(np.mean(50 - 40 + 2 * seeds))
    assert float(cell["score_se"].sel(role="misspec")) == pytest.approx(np.std(2 * seeds, ddof=1) / np.sqrt(3))
    assert float(cell["ratio"]) == pytest.approx(np.mean(10 + 2 * seeds) / np.mean(100 + seeds))
    demo = ds.sel(condition="pdrs_demo", role="misspec")
    assert list(demo["status"].values) == ["ok", "failed", "ok"] and int(demo["n_ok"]) == 2
    assert float(demo["score_mean"]) == pytest.approx(np.mean([misspec_score(s, 1) for s in (0, 2)]))
    assert "boom: training diverged" in str(demo["message"].sel(seed=1).values)

    markdown = (tmp_path / "misspec.md").read_text()
    # seeds 0 and 2 of 50 - 10 + 2 seed: 40, 44 -> 42.0 ± 2.0; Base 100 + seed -> 101.0 ± 0.6; 42 / 101 = 0.42
    assert "| PDRS, Demo corrupt | 101.0 ± 0.6 | 42.0 ± 2.0 (2/3 ok) | 0.42 |" in markdown
    assert "| PDRS, Demo corrupt | 95.3 | 73.0 ± 9.0 | 0.77 |" in markdown  # the published row, Trap columns
    assert "boom: training diverged" in markdown and "Wall time" in markdown
    tex = (tmp_path / "misspec.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2 and "\\midrule\nPDRS, Pref corrupt &" in tex
    assert (tmp_path / "misspec.png").stat().st_size > 10_000
    saved = xr.load_dataset(tmp_path / "misspec.nc", engine="h5netcdf")
    assert saved["status"].sel(env=ENV, condition="pdrs_demo", seed=1, role="misspec").item() == "failed"

    # A record per complete cell (26 of 27: the failed cell is retried, never recorded as done).
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 26 and not (tmp_path / "records" / "pdrs_demo" / f"{ENV}_seed1.json").exists()

    # Resume: only the failed fit runs again; then, with the run directories gone, the records finish the table.
    again = FakeFit()
    ds = _build(tmp_path, again).sel(env=ENV)
    assert again.calls == [failing]
    assert int(ds["n_ok"].sel(condition="pdrs_demo", role="misspec")) == 3
    shutil.rmtree(tmp_path / "runs")
    third = FakeFit(fail=tuple(f"base-pdrs_{ENV}_seed{s}" for s in SEEDS))
    ds = _build(tmp_path, third).sel(env=ENV)
    assert third.calls == [] and (ds["status"] == "ok").all()
    # Other settings: another env size refits (its records do not match) ...
    fourth = FakeFit()
    build_misspec([ENV], ["stop"], [0], tmp_path, env_size=4, fit=fourth, progress=False, in_process=True)
    assert sorted(fourth.calls) == [f"base-stop_{ENV}_seed0", f"misspec-stop_{ENV}_seed0"]
    # ... but a finished run made with other settings is refused, not reused into the table.
    shutil.rmtree(tmp_path / "records" / "stop")
    with pytest.raises(UsageError, match=r"base-stop_grid_trap_seed0 was made with other settings \(env_size: 4, "
                                         r"now None\)"):
        build_misspec([ENV], ["stop"], [0], tmp_path, fit=FakeFit(), progress=False, in_process=True)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "3-1"], "error: bad seed range '3-1'"),
    (["--condition", "pdrs_nothing"], "error: unknown condition 'pdrs_nothing'; known: pref, demo, rating, stop, "
                                      "pdrs_pref, pdrs_demo, pdrs_rating, pdrs_stop, pdrs_all"),
    (["--env", "grid_nowhere"], "error: unknown tabular env 'grid_nowhere'"),
    (["--jobs", "0"], "error: --jobs must be >= 1, got 0"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert misspec.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_one_real_cell_through_the_command_line(tmp_path: Path) -> None:
    """Real SVI fits (tiny settings) of one PDRS cell; the second call reuses both runs."""
    (tmp_path / "svi.toml").write_text("[svi]\nmax_steps = 40\nnum_posterior_samples = 50\n")
    cmd = [sys.executable, "-m", "mavrl_ppl.experiments.misspec", "--env", ENV, "--env-size", "4", "--condition",
           "pdrs_demo", "--seeds", "0", "--svi-config", str(tmp_path / "svi.toml"), "--out", str(tmp_path / "t"),
           "--jobs", "2", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1200)
    assert done.returncode == 0, done.stderr
    ds = xr.load_dataset(tmp_path / "t" / "misspec.nc", engine="h5netcdf")
    assert (ds["status"] == "ok").all() and np.isfinite(ds["score"]).all()
    from mavrl_ppl.feedback.data import load_feedback

    demo = load_feedback(tmp_path / "t" / "runs" / f"misspec-pdrs_demo_{ENV}_seed0" / "feedback.nc")["demo"]
    assert (demo.attrs["beta"], demo.attrs["teacher_beta"]) == (10.0, 0.1)
    again = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 0 and "0 fits run, 0 reused, 1 cells from their records" in again.stdout
