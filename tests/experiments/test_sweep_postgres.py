"""Sweep workers on one PostgreSQL study, for real: a throwaway server (``tests/postgres.py``), worker processes
sharing it, a worker killed mid-trial, and the database stopped mid-study and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from postgres import PostgresServer

from mavrl_ppl.experiments import sweep

# Their own CI step (`pytest -m postgres`, .ci/run): a server of their own, and three sweep workers that need the
# machine's two cores to themselves more than the default suite's two test workers can give them.
pytestmark = pytest.mark.postgres

TINY = ["--env", "chain", "--eval-every", "5", "--seeds", "1", "--quiet"]


def worker(storage: str, trials: int, max_steps: int, study: str = "pg") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mavrl_ppl.experiments.sweep", "--subset", "pdrs", "--storage", storage,
           "--study", study, "--trials", str(trials), "--max-steps", str(max_steps), *TINY]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"})


def trials_of(storage: str, study: str = "pg") -> list[FrozenTrial]:
    rdb = sweep.open_storage(storage)
    try:
        return optuna.load_study(study_name=study, storage=rdb).get_trials()
    except KeyError:  # not created yet
        return []
    finally:  # close this process's connections (the server may be stopped next)
        rdb.remove_session()
        rdb.engine.dispose()


def wait_for(condition: Callable[[list[FrozenTrial]], bool], storage: str, procs: list[subprocess.Popen],
             timeout: float = 120.0) -> list[FrozenTrial]:
    """Poll the study until ``condition(trials)`` holds (fails if every worker exits first or time runs out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        trials = trials_of(storage)
        if condition(trials):
            return trials
        if all(p.poll() is not None for p in procs):
            errors = [p.communicate()[1][-1500:] for p in procs]
            pytest.fail(f"the workers exited before the condition held: {errors}")
        time.sleep(0.2)
    pytest.fail("timed out waiting for the study")


def complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def test_postgresql_url_opens_with_psycopg(postgres_url: str) -> None:
    storage = sweep.open_storage(postgres_url)
    assert storage.engine.dialect.driver == "psycopg" and postgres_url.startswith("postgresql://")
    storage.engine.dispose()


def test_three_workers_share_one_postgresql_study(postgres_url: str) -> None:
    procs = [worker(postgres_url, 6, 10) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outs]
    trials = trials_of(postgres_url)
    done = [t for t in trials if sweep.is_counted(t)]
    assert len(done) == 6 and all(t.state == TrialState.COMPLETE for t in done)
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6  # no two trials fitted the same point
    pids = {t.user_attrs["worker_pid"] for t in done}
    assert pids <= {p.pid for p in procs} and len(pids) >= 2  # the work was shared
    assert all("surplus" in t.user_attrs and "counts" not in t.user_attrs for t in trials if t not in done)


def test_a_worker_killed_mid_trial_is_marked_and_the_others_finish(postgres_url: str) -> None:
    victim, other = worker(postgres_url, 4, 60), worker(postgres_url, 4, 60)  # trials of a few seconds

    def victim_mid_trial(trials: list[FrozenTrial]) -> bool:
        return bool(complete(trials)) and any(t.state == TrialState.RUNNING and
                                              t.user_attrs.get("worker_pid") == victim.pid for t in trials)

    trials = wait_for(victim_mid_trial, postgres_url, [victim, other])
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    snapshot = complete(trials_of(postgres_url))
    killed = next(t.number for t in trials if t.state == TrialState.RUNNING and
                  t.user_attrs.get("worker_pid") == victim.pid)
    _, err = other.communicate(timeout=300)
    assert victim.returncode == -signal.SIGKILL
    assert other.returncode == 0, err[-2000:]
    study = {t.number: t for t in trials_of(postgres_url)}
    assert sum(map(sweep.is_counted, study.values())) == 4
    assert study[killed].state == TrialState.FAIL and not sweep.is_counted(study[killed])
    assert f":{victim.pid} is gone" in study[killed].user_attrs["interrupted"]
    for t in snapshot:  # nothing finished before the kill changed
        assert study[t.number].state == TrialState.COMPLETE and study[t.number].value == t.value


def test_the_database_going_away_stops_workers_cleanly_and_the_study_continues(
        private_postgres: PostgresServer) -> None:
    url = private_postgres.create_database("study")
    procs = [worker(url, 6, 60), worker(url, 6, 60)]
    wait_for(lambda trials: len(complete(trials)) >= 2, url, procs)
    private_postgres.stop("fast")  # every connection closed; what was committed is on disk
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 1, err[-2000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: the study storage {url} failed: "), err[-2000:]
        assert "OperationalError" in lines[0] and "rerun to continue" in lines[0]
    private_postgres.start()
    before = trials_of(url)
    finished = complete(before)
    assert len(finished) >= 2
    rerun = worker(url, 6, 60)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    after = {t.number: t for t in trials_of(url)}
    assert sum(map(sweep.is_counted, after.values())) == 6
    for t in finished:  # every trial finished before the database went away is kept as it was
        assert after[t.number].state == TrialState.COMPLETE and after[t.number].value == t.value
    for t in before:  # trials cut off by the outage are marked interrupted, never counted
        if t.state == TrialState.RUNNING:
            assert after[t.number].state == TrialState.FAIL and "is gone" in after[t.number].user_attrs["interrupted"]
    assert not any(t.state == TrialState.RUNNING for t in after.values())
