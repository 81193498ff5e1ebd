"""The one executor on Dask: the same outcomes as local processes, a worker that dies, and the baseline table on a
2-worker ``LocalCluster`` (the same table as the local executor, and complete when a worker is killed mid-table)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mavrl_ppl.experiments.baseline_table import build_table
from mavrl_ppl.experiments.executor import ClusterUnreachable, Task, check_cluster, local_cluster, run_tasks

from .test_baseline_table import ENV, FakeFit, nuts_score, svi_score
from .test_executor import die, plan, square, write_pid

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """Two single-threaded Dask worker processes on 127.0.0.1 (as ``--cluster local:2`` makes them), shared by the
    tests that kill no worker."""
    made = local_cluster(2)
    yield made
    made.close()


@pytest.fixture
def own_cluster() -> Iterator[object]:
    """A 2-worker cluster of the test's own, whose workers it may kill; Dask reruns a task whose worker died once
    (``allowed-failures`` 1; the default is 3) before failing it."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        made = local_cluster(2)
    yield made
    made.close()


# ------------------------------------------------------------------------------------------------ the executor


def test_dask_gives_the_local_outcomes(cluster: object) -> None:
    seen: list[str] = []
    outcomes = run_tasks(plan(), cluster=cluster, progress=False, on_done=lambda name, outcome: seen.append(name))
    local = run_tasks(plan(), in_process=True, progress=False)
    assert {k: (o.status, o.value) for k, o in outcomes.items()} == {k: (o.status, o.value) for k, o in local.items()}
    assert "RuntimeError: boom" in outcomes["b"].message and "b failed" in outcomes["d"].message
    assert sorted(seen) == ["a", "b", "c", "d", "e"] and seen.index("a") < seen.index("c")


def test_dask_tasks_run_in_the_workers(cluster: object, tmp_path: Path) -> None:
    tasks = [Task(f"t{i}", write_pid, (str(tmp_path / f"{i}.pid"),)) for i in range(4)]
    pids = {o.value for o in run_tasks(tasks, cluster=cluster, progress=False).values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # long-lived workers: at most one pid per worker


def test_a_task_that_kills_every_worker_it_meets_fails_the_rest_run(own_cluster: object) -> None:
    """Dask reruns a task whose worker died (``allowed-failures`` times); one that kills every worker it is given
    ends ``failed`` with Dask's ``KilledWorker``, its dependents skipped, the other tasks unharmed."""
    tasks = [Task("dies", die), Task("after", square, (7,)), Task("child", square, (2,), depends_on="dies")]
    outcomes = run_tasks(tasks, cluster=own_cluster, progress=False)
    assert outcomes["dies"].status == "failed" and "KilledWorker" in outcomes["dies"].message
    assert "every Dask worker that ran it died" in outcomes["dies"].message
    assert "on 2 different workers" in outcomes["dies"].message  # tried, and tried again once
    assert outcomes["after"].value == 49 and outcomes["child"].status == "skipped"


def test_cluster_arguments_are_checked() -> None:
    assert check_cluster("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786" and check_cluster("local:3") == "local:3"
    for bad in ("local:0", "local:x", "myhost:8786", "tcp://"):
        with pytest.raises(ValueError, match="bad cluster"):
            check_cluster(bad)
    with pytest.raises(ValueError, match="exclude"):
        run_tasks([], in_process=True, cluster="local:1", progress=False)


def test_an_unreachable_scheduler_is_one_clear_error() -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(
            ClusterUnreachable, match=r"cannot reach the Dask scheduler tcp://127\.0\.0\.1:9"):
        run_tasks([Task("a", square, (1,))], cluster="tcp://127.0.0.1:9", progress=False)


def test_losing_the_scheduler_mid_run_is_one_clear_error(tmp_path: Path) -> None:
    """A scheduler of its own (separate processes, as on a real cluster), killed after the first task finishes."""
    file = tmp_path / "scheduler.json"
    local = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                               "--scheduler-file", str(file), *local], stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 120
        while not file.is_file() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the file is written in one go, but give it a moment
        address = json.loads(file.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", *local], stderr=subprocess.DEVNULL))
        finished: list[str] = []

        def kill_scheduler(name: str, outcome: object) -> None:
            finished.append(name)
            if len(finished) == 1:
                procs[0].kill()

        tasks = [Task(f"t{i}", time.sleep, (0.3,)) for i in range(20)]
        with pytest.raises(ClusterUnreachable, match=r"lost the Dask scheduler .* tasks unfinished"):
            run_tasks(tasks, cluster=address, progress=False, on_done=kill_scheduler)
        assert 1 <= len(finished) < 20
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------------ the table


@dataclass
class LoggedFit:
    """A picklable stand-in for the table's fit (``FakeFit``'s run directories), for Dask workers: each call writes
    ``<log>/<run>.<pid>.<n>`` first (so the test sees which process runs what), sleeps ``pause`` seconds, then
    writes the run directory atomically (as the real fit does: a worker killed mid-write leaves no half run)."""

    log: Path
    pause: float = 0.0
    fail: list[str] = field(default_factory=list)

    def __call__(self, config: dict, out: Path) -> dict:
        self.log.mkdir(parents=True, exist_ok=True)
        n = len(list(self.log.glob(f"{out.name}.*")))
        (self.log / f"{out.name}.{os.getpid()}.{n}").touch()
        time.sleep(self.pause)
        work = out.parent / f".work-{uuid.uuid4().hex}" / out.name
        try:
            result = FakeFit(fail=self.fail)(config, work)
            shutil.rmtree(out, ignore_errors=True)
            work.rename(out)
        finally:
            shutil.rmtree(work.parent, ignore_errors=True)
        return result


def calls(log: Path) -> list[tuple[str, int]]:
    """(run directory, pid) of every fit started, oldest first."""
    markers = sorted(log.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return [(p.name.split(".")[0], int(p.name.split(".")[1])) for p in markers]


SEEDS = [0, 1]  # 12 fits a table
COMPARED = ("status", "run_status", "run_message", "normalized_score", "epic", "fit_seconds", "correlation",
            "coverage_svi_in_nuts", "coverage_nuts_in_svi", "normalized_score_mean", "normalized_score_se", "n_ok")


def assert_same_table(a: xr.Dataset, b: xr.Dataset, timed: bool = True) -> None:
    """The same table (``timed=False``: but for the fit seconds, which real fits measure)."""
    for name in COMPARED:
        if timed or name != "fit_seconds":
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.slow  # ~21 s: a 12-fit table twice plus its netCDF reading; the executor-level Dask tests above stay fast
def test_the_table_on_dask_is_the_local_table(cluster: object, tmp_path: Path) -> None:
    fail = [f"svi-stop_{ENV}_seed1"]
    local = build_table([ENV], SEEDS, tmp_path / "local", fit=FakeFit(fail=fail), progress=False, in_process=True)
    fit = LoggedFit(tmp_path / "log", fail=fail)
    dask = build_table([ENV], SEEDS, tmp_path / "dask", fit=fit, progress=False, cluster=cluster)
    assert_same_table(local, dask)
    ran = calls(tmp_path / "log")
    assert len(ran) == 12 and {pid for _, pid in ran}.isdisjoint({os.getpid()})
    assert "failed" in set(dask["run_status"].values.ravel())  # the failed fit is kept, not retried by Dask
    assert "on the Dask cluster LocalCluster tcp://127.0.0.1:" in (tmp_path / "dask" / "baseline_table.md").read_text()
    # the run directories are reused as with the local executor: nothing but the failed fit runs again
    build_table([ENV], SEEDS, tmp_path / "dask", fit=LoggedFit(tmp_path / "log2"), progress=False, cluster=cluster)
    assert [run for run, _ in calls(tmp_path / "log2")] == fail


@pytest.mark.slow  # ~20 s; a task whose worker dies is also tested on the executor alone (fast)
def test_killing_a_worker_mid_table_still_completes_it(own_cluster: object, tmp_path: Path) -> None:
    log = tmp_path / "log"
    killed: list[tuple[str, int]] = []

    def kill_one_worker_mid_fit() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            started = calls(log) if log.is_dir() else []
            if len(started) >= 3:  # mid-table: a few fits in, most still to come; the newest is mid-pause
                run, pid = started[-1]
                os.kill(pid, signal.SIGKILL)
                killed.append((run, pid))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_fit)
    killer.start()
    try:
        table = build_table([ENV], SEEDS, tmp_path / "dask", fit=LoggedFit(log, pause=1.0), progress=False,
                            cluster=own_cluster)
    finally:
        killer.join()
    assert killed, "no worker was killed"
    run, pid = killed[0]
    assert pid != os.getpid()
    assert set(table["run_status"].values.ravel()) == {"ok"}  # every fit of the table finished
    np.testing.assert_array_equal(table["normalized_score"].sel(env=ENV, approach="svi").values,
                                  [svi_score(s) for s in SEEDS])
    np.testing.assert_array_equal(table["normalized_score"].sel(env=ENV, approach="nuts").values,
                                  [nuts_score(s) for s in SEEDS])
    np.testing.assert_allclose(table["normalized_score"].sel(env=ENV, approach="posthoc").values, 100.0)
    ran = calls(log)
    assert len(ran) >= 13  # 12 fits, and at least the killed one twice
    assert any(r == run and p != pid for r, p in ran)  # the killed fit ran again, in another worker process


def test_cli_cluster_flag(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mavrl_ppl.experiments.baseline_table", "--envs", ENV, "--seeds", "0", "--out",
            str(tmp_path / "out"), "--quiet"]
    bad = subprocess.run([*base, "--cluster", "somewhere"], capture_output=True, text=True, check=False, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad cluster 'somewhere'")
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    gone = subprocess.run([*base, "--cluster", "tcp://127.0.0.1:9"], capture_output=True, text=True, check=False,
                          timeout=300, env=env)
    assert gone.returncode == 1, gone.stderr[-2000:]
    assert gone.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Dask scheduler tcp://127.0.0.1:9")
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_real_table_through_a_dask_local_cluster(tmp_path: Path) -> None:
    """Real SVI, NUTS and single-type fits (tiny settings) in long-lived Dask workers: NUTS runs in a worker whose JAX
    may be up already, and the table holds the same numbers as with local worker processes."""
    (tmp_path / "svi.toml").write_text("[svi]\nmax_steps = 20\nnum_posterior_samples = 50\n")
    (tmp_path / "nuts.toml").write_text("[nuts]\nnum_warmup = 50\nnum_samples = 50\nnum_chains = 2\n")
    base = [sys.executable, "-m", "mavrl_ppl.experiments.baseline_table", "--envs", ENV, "--seeds", "0", "--env-size",
            "3", "--feedback", "pref=8,demo=1,rating=8,stop=16", "--svi-config", str(tmp_path / "svi.toml"),
            "--nuts-config", str(tmp_path / "nuts.toml"), "--quiet"]
    tables = {}
    for name, flags in (("dask", ["--cluster", "local:2"]), ("local", ["--jobs", "2"])):
        result = subprocess.run([*base, "--out", str(tmp_path / name), *flags], capture_output=True, text=True,
                                check=False, timeout=3600)
        assert result.returncode == 0, result.stderr[-3000:]
        tables[name] = xr.load_dataset(tmp_path / name / "baseline_table.nc", engine="h5netcdf")
    dask = tables["dask"].sel(env=ENV)
    assert set(dask["run_status"].values.ravel()) <= {"ok", "unconverged"}, dask["run_message"].values
    assert np.isfinite(dask["normalized_score"].values).all() and np.isfinite(dask["correlation"].values).all()
    assert "on the Dask cluster local:2" in (tmp_path / "dask" / "baseline_table.md").read_text()
    assert_same_table(tables["local"], tables["dask"], timed=False)
