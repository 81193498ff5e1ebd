"""The baseline table on fake run directories (an injected fit): scheduling, reuse, failures, Post-Hoc, tables."""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from analysis.test_compare import SIZE, small_feedback, write_run

from mavrl_ppl.analysis.compare import feedback_digest
from mavrl_ppl.envs.grids import make_tabular
from mavrl_ppl.experiments.baseline_table import build_table, parse_seeds, plan_fits
from mavrl_ppl.feedback.data import load_feedback

ENV = "grid_trap"
SEEDS = [0, 1, 2]
# FakeFit's run directories, written once per process and copied after that: writing a run's netCDF files is a large
# part of these tests' time.
_WRITTEN_RUNS = Path(tempfile.mkdtemp(prefix="fake-fits-"))
atexit.register(shutil.rmtree, _WRITTEN_RUNS, ignore_errors=True)
SINGLE_OFFSET = {"pref": 1.5, "demo": -1.5, "rating": 0.7, "stop": -0.7}  # sums to zero: Post-Hoc mean = truth


def svi_score(seed: int) -> float:
    return 10.0 * seed + 5.0


def nuts_score(seed: int) -> float:
    return 3.0 * seed + 80.0


class FakeFit:
    """Stands in for :func:`mavrl_ppl.runs.run`: writes a run directory with known contents, or raises.

    SVI and NUTS posteriors of a seed are the same draws (so they agree perfectly); a single-type run's draws are the
    true reward plus that type's offset (the four offsets sum to zero)."""

    def __init__(self, *, fail: Sequence[str] = (), unconverged: Sequence[str] = ()) -> None:
        self.fail, self.unconverged = set(fail), set(unconverged)
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, config: dict, out: Path) -> dict:
        seed, inference = int(config["seed"]), config["inference"]
        with self.lock:
            self.calls.append(out.name)
        assert config["env"] == ENV
        if out.name in self.fail:
            raise RuntimeError("boom: training diverged")
        run = out.name.split("_", 1)[0]
        feedback = small_feedback(seed)
        if run.startswith("svi-"):
            feedback = {run.removeprefix("svi-"): feedback[run.removeprefix("svi-")]}
        if run != "svi":
            assert Path(config["data"]).is_file()  # the data must exist before the run starts
        else:
            assert "data" not in config
        flagged = out.name in self.unconverged
        cached = _WRITTEN_RUNS / f"{out.name}-{inference}-{flagged}"
        if cached.is_dir():  # the same name, back end and verdict always write the same files
            shutil.copytree(cached, out)
            metrics = json.loads((cached.parent / f"{cached.name}.json").read_text())
        else:
            metrics = self._write(out, run, seed, inference, flagged, feedback)
            (cached.parent / f"{cached.name}.json").write_text(json.dumps(metrics))
            shutil.copytree(out, cached)
        if run != "svi":  # the run's feedback.nc is the file it was given, as the real fit writes it
            shutil.copyfile(config["data"], out / "feedback.nc")
        return {"metrics": metrics, "converged": not flagged}

    @staticmethod
    def _write(out: Path, run: str, seed: int, inference: str, flagged: bool, feedback: dict) -> dict:
        truth = make_tabular(ENV, size=SIZE).group_rewards
        noise = np.random.default_rng(seed).normal(scale=0.3, size=(1, 50, truth.size))
        if run.startswith("svi-"):
            offset = SINGLE_OFFSET[run.removeprefix("svi-")] * np.sign(np.arange(truth.size) - 3.5)
            draws = truth + offset + noise - noise.mean(axis=1, keepdims=True)  # posterior mean = truth + offset
            metrics = {"fit_seconds": 1.0}
        elif inference == "nuts":
            draws = (truth + noise).reshape(2, 25, -1)
            metrics = {"normalized_score": nuts_score(seed), "epic": 0.1, "fit_seconds": 100.0,
                       "rhat_max": 1.3 if flagged else 1.001, "divergences": 0, "converged": not flagged}
        else:
            draws = truth + noise
            metrics = {"normalized_score": svi_score(seed), "epic": 0.2 + 0.1 * seed, "fit_seconds": 10.0}
        write_run(out, draws, feedback, inference=inference, seed=seed, metrics=metrics)
        return metrics


def _build(out: Path, runner: FakeFit, jobs: int = 2) -> xr.Dataset:
    """The table on one env, that env selected."""
    return build_table([ENV], SEEDS, out, jobs=jobs, fit=runner, progress=False, in_process=True).sel(env=ENV)


def test_parse_seeds() -> None:
    assert parse_seeds(["0-3"]) == [0, 1, 2, 3]
    assert parse_seeds(["0-2,7", "5"]) == [0, 1, 2, 5, 7]
    with pytest.raises(ValueError, match="bad seed"):
        parse_seeds(["x"])
    with pytest.raises(ValueError, match="bad seed range"):
        parse_seeds(["3-1"])


def test_plan_has_six_fits_per_env_and_seed(tmp_path: Path) -> None:
    fits = plan_fits(["grid_trap", "grid_cliff"], [0, 1], tmp_path)
    assert len(fits) == 2 * 2 * 6
    names = {f.name for f in fits}
    assert "svi_grid_cliff_seed1" in names and "svi-stop_grid_trap_seed0" in names and "nuts_grid_trap_seed1" in names
    nuts = next(f for f in fits if f.name == "nuts_grid_trap_seed0")
    assert nuts.depends_on == "svi_grid_trap_seed0" and nuts.data == tmp_path / "runs/svi_grid_trap_seed0/feedback.nc"


def test_table_failures_unconverged_posthoc_and_resume(tmp_path: Path) -> None:
    failing = "svi-rating_grid_trap_seed1"
    runner = FakeFit(fail=[failing], unconverged=["nuts_grid_trap_seed2"])
    ds = _build(tmp_path, runner)
    assert len(runner.calls) == 18 and len(set(runner.calls)) == 18

    st = ds["status"]
    assert list(st.sel(approach="svi").values) == ["ok"] * 3
    assert list(st.sel(approach="nuts").values) == ["ok", "ok", "unconverged"]
    assert list(st.sel(approach="posthoc").values) == ["ok", "failed", "ok"]
    assert failing in str(ds["message"].sel(seed=1, approach="posthoc").values)
    assert "boom: training diverged" in str(ds["run_message"].sel(seed=1, run="svi-rating").values)
    assert "R-hat max 1.300" in str(ds["run_message"].sel(seed=2, run="nuts").values)
    assert int(ds["nuts_unconverged"]) == 1

    # mean +- SE over seeds from the metrics files; unconverged NUTS kept, failed Post-Hoc left out
    svi = np.array([svi_score(s) for s in SEEDS])
    cell = ds.sel(approach="svi")
    assert float(cell["normalized_score_mean"]) == pytest.approx(svi.mean())
    assert float(cell["normalized_score_se"]) == pytest.approx(svi.std(ddof=1) / np.sqrt(3))
    nuts = np.array([nuts_score(s) for s in SEEDS])
    assert float(ds["normalized_score_mean"].sel(approach="nuts")) == pytest.approx(nuts.mean())
    assert list(ds["n_ok"].values) == [3, 3, 2]

    # Post-Hoc: the single-type means average to the true reward -> score 100, EPIC 0, fit time = sum of 4 fits
    posthoc = ds.sel(approach="posthoc", seed=[0, 2])
    np.testing.assert_allclose(posthoc["normalized_score"].values, 100.0, atol=1e-9)
    np.testing.assert_allclose(posthoc["epic"].values, 0.0, atol=1e-6)
    np.testing.assert_allclose(posthoc["fit_seconds"].values, 4.0)
    assert np.isnan(float(ds["normalized_score"].sel(approach="posthoc", seed=1)))

    # SVI and NUTS posteriors are the same draws: perfect agreement
    np.testing.assert_allclose(ds["correlation"].values, 1.0, atol=1e-12)
    np.testing.assert_array_equal(ds["coverage_nuts_in_svi"].values, 1.0)
    np.testing.assert_array_equal(ds["coverage_svi_in_nuts"].values, 1.0)

    # the single-type runs fitted exactly their group of the all-types data
    svi_feedback = load_feedback(tmp_path / "runs/svi_grid_trap_seed0/feedback.nc")
    single = load_feedback(tmp_path / "runs/svi-pref_grid_trap_seed0/feedback.nc")
    assert list(single) == ["pref"] and feedback_digest(single) == feedback_digest({"pref": svi_feedback["pref"]})

    for suffix in ("nc", "md", "tex", "png"):
        assert (tmp_path / f"baseline_table.{suffix}").stat().st_size > 0
    markdown = (tmp_path / "baseline_table.md").read_text()
    assert "boom: training diverged" in markdown and "unconverged" in markdown and "Total wall time" in markdown
    assert f"| {ENV} | MAVRL-SVI | 3/3 | {svi.mean():.1f} ± {svi.std(ddof=1) / np.sqrt(3):.1f} |" in markdown
    assert r"\begin{tabular}" in (tmp_path / "baseline_table.tex").read_text()
    saved = xr.load_dataset(tmp_path / "baseline_table.nc", engine="h5netcdf").sel(env=ENV)
    assert list(saved["status"].sel(approach="posthoc").values) == ["ok", "failed", "ok"]
    assert saved.attrs["wall_seconds"] > 0

    # resume: only the failed fit runs again; then nothing at all
    again = FakeFit()
    ds = _build(tmp_path, again)
    assert again.calls == [failing]
    assert list(ds["status"].sel(approach="posthoc").values) == ["ok"] * 3
    assert list(ds["status"].sel(approach="nuts").values) == ["ok", "ok", "unconverged"]  # flag survives reuse
    assert bool(ds["run_reused"].sel(seed=0, run="svi")) and not bool(ds["run_reused"].sel(seed=1, run="svi-rating"))
    third = FakeFit(fail=[f"svi_{ENV}_seed{s}" for s in SEEDS])
    _build(tmp_path, third, jobs=1)
    assert third.calls == []


def test_failed_svi_run_skips_its_dependents(tmp_path: Path) -> None:
    runner = FakeFit(fail=["svi_grid_trap_seed0"])
    ds = build_table([ENV], [0, 1], tmp_path, jobs=1, fit=runner, progress=False, in_process=True).sel(env=ENV)
    assert len(runner.calls) == 1 + 6  # seed 0: only the SVI run; seed 1: all six
    assert set(ds["run_status"].sel(seed=0).values) == {"failed", "skipped"}
    assert str(ds["run_status"].sel(seed=0, run="svi").values) == "failed"
    assert "svi_grid_trap_seed0 failed" in str(ds["run_message"].sel(seed=0, run="nuts").values)
    assert list(ds["n_ok"].values) == [1, 1, 1]
    assert np.isnan(float(ds["normalized_score_se"].sel(approach="svi")))  # one seed: no SE
    assert "n/a" in (tmp_path / "baseline_table.md").read_text()


def test_cli_rejects_bad_seeds(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mavrl_ppl.experiments.baseline_table", "--envs", ENV, "--seeds",
                             "5-1", "--out", str(tmp_path)], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == "error: bad seed range '5-1'"


@pytest.mark.slow
def test_real_table_on_a_small_grid_trap(tmp_path: Path) -> None:
    """End to end: real SVI, NUTS and single-type fits (tiny settings) through the command line."""
    (tmp_path / "svi.toml").write_text("[svi]\nmax_steps = 60\nnum_posterior_samples = 100\n")
    (tmp_path / "nuts.toml").write_text("[nuts]\nnum_warmup = 100\nnum_samples = 100\nnum_chains = 2\n")
    out = tmp_path / "table"
    cmd = [sys.executable, "-m", "mavrl_ppl.experiments.baseline_table", "--envs", ENV, "--seeds", "0", "--env-size",
           "4", "--feedback", "pref=16,demo=1,rating=16,stop=32", "--svi-config", str(tmp_path / "svi.toml"),
           "--nuts-config", str(tmp_path / "nuts.toml"), "--out", str(out), "--jobs", "2", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    assert result.returncode == 0, result.stderr
    ds = xr.load_dataset(out / "baseline_table.nc", engine="h5netcdf").sel(env=ENV)
    assert set(ds["run_status"].values.ravel()) <= {"ok", "unconverged"}, ds["run_message"].values
    assert np.isfinite(ds["normalized_score"].values).all()
    assert np.isfinite(ds["correlation"].values).all()
    metrics = json.loads((out / "runs" / f"nuts_{ENV}_seed0" / "metrics.json").read_text())
    assert float(ds["fit_seconds"].sel(approach="nuts", seed=0)) == pytest.approx(metrics["fit_seconds"])
    # resume: a second invocation reuses every run
    again = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 0 and "0 fits run, 6 reused" in again.stdout


def test_a_nuts_run_is_judged_by_its_recorded_verdict() -> None:
    from mavrl_ppl.experiments.baseline_table import _converged

    # Chains apart in log density only: parameter R-hat passes, the run's own verdict (rhat_lp 1.2) does not.
    assert not _converged({"rhat_max": 1.004, "divergences": 0, "rhat_lp": 1.2, "converged": False})
    assert _converged({"rhat_max": 1.004, "divergences": 0, "rhat_lp": 1.002, "converged": True})
    # No verdict recorded: not trusted.
    assert not _converged({"rhat_max": 1.004, "divergences": 0})


def test_records_finish_a_table_without_the_runs_and_only_for_the_same_settings(tmp_path: Path, monkeypatch) -> None:
    records = tmp_path / "records"
    first = FakeFit(fail=["svi-demo_grid_trap_seed2"], unconverged=["nuts_grid_trap_seed1"])
    ds1 = build_table([ENV], SEEDS, tmp_path / "a", jobs=2, fit=first, progress=False, records=records, in_process=True)
    # a record per finished cell; seed 2 has a failed fit, so none (it must be retried)
    assert sorted(p.name for p in records.iterdir()) == [f"{ENV}_seed0.json", f"{ENV}_seed1.json"]
    saved = json.loads((records / f"{ENV}_seed1.json").read_text())
    assert saved["runs"]["nuts"]["status"] == "unconverged" and saved["runs"]["nuts"]["metrics"]["rhat_max"] == 1.3

    # Another machine: the run directories are gone. Only seed 2 is fitted; seeds 0 and 1 come from their records.
    shutil.rmtree(tmp_path / "a")
    second = FakeFit()
    ds2 = build_table([ENV], SEEDS, tmp_path / "b", jobs=2, fit=second, progress=False, records=records,
                      in_process=True)
    assert sorted(second.calls) == sorted(f"{run}_{ENV}_seed2" for run in
                                          ("svi", "nuts", "svi-pref", "svi-demo", "svi-rating", "svi-stop"))
    assert (records / f"{ENV}_seed2.json").is_file()
    for name in ("normalized_score", "epic", "fit_seconds", "correlation", "coverage_svi_in_nuts", "status"):
        np.testing.assert_array_equal(ds2[name].sel(seed=[0, 1]).values, ds1[name].sel(seed=[0, 1]).values)
    assert list(ds2["status"].sel(env=ENV, approach="nuts").values) == ["ok", "unconverged", "ok"]
    assert list(ds2["status"].sel(env=ENV, approach="posthoc").values) == ["ok"] * 3
    assert bool(ds2["run_reused"].sel(env=ENV, seed=0, run="svi"))
    assert not bool(ds2["run_reused"].sel(env=ENV, seed=2, run="svi"))
    assert "2 env-seed cells from their records" in (tmp_path / "b" / "baseline_table.md").read_text()

    # Other settings (here the allocation) do not match the records: every cell is fitted again.
    third = FakeFit()
    build_table([ENV], [0], tmp_path / "c", jobs=1, fit=third, progress=False, records=records, in_process=True,
                feedback="pref=8,demo=1,rating=8,stop=8")
    assert len(third.calls) == 6

    # Records made under another default stop model are not reused either; the table states the model.
    import mavrl_ppl.feedback.stop

    assert ds2.attrs["stop_lapse"] == mavrl_ppl.feedback.stop.LAPSE
    assert "Stop model: lapse 0 (the paper's lapse-free model)." in (tmp_path / "b" / "baseline_table.md").read_text()
    monkeypatch.setattr(mavrl_ppl.feedback.stop, "LAPSE", 0.01)
    fourth = FakeFit()
    ds4 = build_table([ENV], [0], tmp_path / "d", jobs=1, fit=fourth, progress=False, records=records,
                      in_process=True)
    assert len(fourth.calls) == 6 and ds4.attrs["stop_lapse"] == 0.01
    assert "Stop model: lapse 0.01 (simulated and modelled" in (tmp_path / "d" / "baseline_table.md").read_text()


def test_a_record_from_before_the_stop_lapse_setting_counts_as_the_lapse_free_model(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    import mavrl_ppl.feedback.stop

    records = tmp_path / "records"
    build_table([ENV], [0], tmp_path / "a", jobs=1, fit=FakeFit(), progress=False, records=records, in_process=True)
    path = records / f"{ENV}_seed0.json"
    record = json.loads(path.read_text())
    del record["settings"]["stop_lapse"]  # as the records of benchmarks/baseline_table_records were written
    path.write_text(json.dumps(record))
    for lapse, refits in ((0.0, 0), (0.01, 6)):
        monkeypatch.setattr(mavrl_ppl.feedback.stop, "LAPSE", lapse)
        again = FakeFit()
        build_table([ENV], [0], tmp_path / f"b{lapse}", jobs=1, fit=again, progress=False, records=records,
                    in_process=True)
        assert len(again.calls) == refits, lapse


def test_cli_names_a_broken_record_and_exits_2(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    (records / f"{ENV}_seed0.json").write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "mavrl_ppl.experiments.baseline_table", "--envs", ENV, "--seeds",
                             "0", "--out", str(tmp_path / "out"), "--records", str(records), "--quiet"],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {records / f'{ENV}_seed0.json'}: not a baseline-table record")
    assert not (tmp_path / "out").exists()


def test_a_fit_killed_in_the_tables_runs_leaves_nothing_once_the_table_runs_again(tmp_path: Path) -> None:
    """SIGKILL (an out-of-memory kill, a lost node) cannot clean up: the table's next fit into the same directory
    removes what the killed one left."""
    import signal
    import time

    from mavrl_ppl.experiments.baseline_table import run_fit

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    out = runs_dir / f"svi_{ENV}_seed0"
    tiny = ["--env", ENV, "--env-size", "3", "--feedback", "pref=8,rating=8", "--num-posterior-samples", "20"]
    killed = subprocess.Popen([sys.executable, "-m", "mavrl_ppl.fit", *tiny, "--max-steps", "1000000", "--patience",
                               "1000000", "--quiet", "--out", str(out)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(runs_dir.iterdir()) and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert [p.name.startswith(f".{out.name}.") for p in runs_dir.iterdir()] == [True]  # the killed fit's left-over
    result = run_fit({"env": ENV, "env_size": 3, "feedback": "pref=8,rating=8",
                      "svi": {"max_steps": 20, "num_posterior_samples": 20}}, out)
    assert result["converged"] and sorted(p.name for p in runs_dir.iterdir()) == [out.name]
