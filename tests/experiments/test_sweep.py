"""The sweep command: search space, allocations, study bookkeeping, resuming, and workers sharing one journal."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mavrl_ppl.experiments import sweep
from mavrl_ppl.inference.svi import SVISettings

TINY = ["--env", "chain", "--max-steps", "10", "--eval-every", "5", "--seeds", "1", "--quiet"]
SEARCHED_TYPES = {"learning_rate": float, "kl_weight": float, "td_weight": float, "batch_size": int, "hidden": int}


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=sweep.open_storage(storage))


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if sweep.is_counted(t)]


def test_search_space_follows_the_current_defaults():
    d = SVISettings()
    space = sweep.search_space(d)
    assert set(space) == {n for n in SEARCHED_TYPES if getattr(d, n) > 0} - {"td_weight"}  # planner: no Bellman term
    assert "td_weight" in sweep.search_space(SVISettings(q_model="network"))
    for name, dist in space.items():
        assert name in {f.name for f in dataclasses.fields(SVISettings)}
        assert dist._contains(dist.to_internal_repr(getattr(d, name)))  # the defaults are a point of the space
    moved = sweep.search_space(SVISettings(learning_rate=0.5, hidden=10, batch_size=32))
    assert moved["learning_rate"].low == pytest.approx(0.05) and moved["learning_rate"].high == pytest.approx(5.0)
    assert moved["hidden"].choices == (5, 10, 20) and moved["batch_size"].choices == (8, 16, 32, 64, 128)
    budget = sweep.search_space(d, ("pref", "demo"), "budget")
    assert {"alloc_pref", "alloc_demo"} <= set(budget)
    assert not any(k.startswith("alloc_") for k in sweep.search_space(d, ("pref",), "budget"))


def spec(mode: str = "fixed", subset: str = "all", **kw) -> sweep.CellSpec:
    args = sweep.build_parser().parse_args(["--subset", subset, "--mode", mode, *TINY, *kw.get("extra", [])])
    return sweep.spec_from_args(args)


def test_counts_per_mode():
    assert sweep.counts_for(spec(), {}) == {"pref": 64, "demo": 1, "rating": 64, "stop": 256}
    b = spec("budget", "pds")
    assert b.budget == 64 and b.caps == {"demo": 16}
    counts = sweep.counts_for(b, {"alloc_pref": 0.9, "alloc_demo": 1e-6, "alloc_stop": 0.5})
    assert sum(counts.values()) == 64 and counts["demo"] == 16  # demo's large weight hits its cap
    assert counts["stop"] > counts["pref"]  # -log(0.5) > -log(0.9)
    assert sweep.counts_for(spec("budget", "demo"), {}) == {"demo": 16}
    # the study's base settings hold every unsearched SVISettings field, resolved now (not hard-coded)
    assert set(spec().base_settings) == {f.name for f in dataclasses.fields(SVISettings)} - set(
        SEARCHED_TYPES) - {"progress_bar"}
    assert spec().base_settings["max_steps"] == 10


def test_study_records_trials_and_continues(tmp_path, capsys):
    storage = str(tmp_path / "s.journal")
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "2", *TINY]) == 0
    study = load(storage, "cell")
    first = study.get_trials()
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    defaults = SVISettings()
    assert first[0].params == {k: getattr(defaults, k) for k in first[0].params}  # trial 0: the defaults
    for t in first:
        assert set(SEARCHED_TYPES) >= set(t.params) and t.user_attrs["counts"] == {"pref": 64, "rating": 64}
        assert t.value == pytest.approx(t.user_attrs["holdout_nll"])  # --holdout fresh is the objective
        assert math.isfinite(t.user_attrs["validation_nll"]) and math.isfinite(t.user_attrs["normalized_score"])
        assert t.user_attrs["fit_seconds"] > 0 and t.user_attrs["worker_pid"] == os.getpid()
    assert first[0].params != first[1].params
    # the same command with more trials continues the study; finished trials are untouched
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "3", *TINY]) == 0
    again = load(storage, "cell").get_trials()
    assert len(again) == 3 and [(t.number, t.value, t.params) for t in again[:2]] == [
        (t.number, t.value, t.params) for t in first]
    # and once N trials are finished it does nothing
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "3", *TINY]) == 0
    assert len(load(storage, "cell").get_trials()) == 3
    # a different cell under the same name is refused (exit 2), the study unchanged
    capsys.readouterr()
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "4", "--objective",
                       "score", *TINY]) == 2
    assert "objective" in capsys.readouterr().err
    assert len(load(storage, "cell").get_trials()) == 3


def test_bad_arguments_exit_2(tmp_path, capsys):
    storage = str(tmp_path / "s.journal")
    base = [*TINY, "--trials", "1", "--storage", storage]  # later flags win
    assert sweep.main([*base, "--subset", "pqx"]) == 2
    assert sweep.main([*base, "--subset", "p", "--env", "grid_nowhere"]) == 2
    assert sweep.main([*base, "--subset", "p", "--budget", "10"]) == 2
    assert sweep.main([*base, "--subset", "p", "--trials", "0"]) == 2
    assert sweep.main([*base, "--subset", "pr", "--mode", "budget", "--holdout", "split"]) == 2
    assert capsys.readouterr().err.count("error:") == 5
    assert not Path(storage).exists() or not optuna.study.get_all_study_names(sweep.open_storage(storage))


def test_failed_trials_are_kept_with_their_error(tmp_path, monkeypatch):
    calls = []
    real = sweep.evaluate_settings

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the loss became nan at step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "evaluate_settings", flaky)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"  # an RDB URL works as well as a journal file
    assert sweep.main(["--subset", "stop", "--mode", "budget", "--storage", storage, "--study", "b", "--trials",
                       "3", *TINY]) == 0
    trials = load(storage, "b").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"] == "RuntimeError: the loss became nan at step 3"
    assert all(sweep.is_counted(t) for t in trials)  # a failed fit is a finished trial: counted, not retried
    assert trials[0].user_attrs["counts"] == {"stop": 64}  # one type in budget mode: the whole budget


def test_score_objective_maximises_the_score(tmp_path):
    storage = str(tmp_path / "s.journal")
    assert sweep.main(["--subset", "d", "--storage", storage, "--study", "sc", "--trials", "1", "--objective",
                       "score", *TINY]) == 0
    study = load(storage, "sc")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.trials[0].value == pytest.approx(study.trials[0].user_attrs["normalized_score"])


def worker(storage: str, trials: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mavrl_ppl.experiments.sweep", "--subset", "pdrs", "--storage", storage,
           "--study", "shared", "--trials", str(trials), *TINY, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"})


@pytest.mark.slow  # ~24 s: two worker processes x 6 trials on a journal file; CI runs three on one PostgreSQL study
def test_two_workers_share_one_journal(tmp_path):
    storage = str(tmp_path / "shared.journal")
    procs = [worker(storage, 6, "--max-steps", "20"), worker(storage, 6, "--max-steps", "20")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    trials = load(storage, "shared").get_trials()
    done = counted(load(storage, "shared"))
    assert len(done) == 6 and all(t.state == TrialState.COMPLETE for t in done)
    assert len({t.number for t in done}) == 6
    pids = {t.user_attrs["worker_pid"] for t in done}
    assert pids == {p.pid for p in procs}  # both workers did some of the work
    keys = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(keys)) == 6  # no two trials fitted the same hyper-parameters
    # any extra trial is a surplus one closed before fitting, never a seventh fit
    assert all("surplus" in t.user_attrs and "counts" not in t.user_attrs for t in trials if t not in done)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_trials_are_failed_and_not_counted(tmp_path):
    """What a rerun does with the RUNNING trials of dead workers (the fast stand-in for the SIGKILL test below)."""
    storage = str(tmp_path / "s.journal")
    assert sweep.main([*TINY, "--subset", "r", "--storage", storage, "--study", "st", "--trials", "1"]) == 0
    study = load(storage, "st")
    dead = study.ask()  # a worker on this host that died mid-trial
    dead.set_user_attr("worker_host", sweep.socket.gethostname())
    dead.set_user_attr("worker_pid", dead_pid())
    silent = study.ask()  # a worker elsewhere whose heartbeat stopped 20 minutes ago
    silent.set_user_attr("worker_host", "elsewhere")
    silent.set_user_attr("heartbeat", time.time() - 1200)
    alive = study.ask()  # a live worker elsewhere
    alive.set_user_attr("worker_host", "elsewhere")
    alive.set_user_attr("heartbeat", time.time())
    assert sweep.main([*TINY, "--subset", "r", "--storage", storage, "--study", "st", "--trials", "3"]) == 0
    trials = {t.number: t for t in load(storage, "st").get_trials()}
    assert trials[dead.number].state == TrialState.FAIL and "is gone" in trials[dead.number].user_attrs["interrupted"]
    assert trials[silent.number].state == TrialState.FAIL
    assert "no heartbeat" in trials[silent.number].user_attrs["interrupted"]
    assert trials[alive.number].state == TrialState.RUNNING  # still someone's work: counted as running
    # 3 wanted: trial 0, the live worker's trial (running), and one new trial
    assert sum(map(sweep.is_counted, trials.values())) == 2 and len(trials) == 5


@pytest.mark.slow
def test_killed_worker_loses_nothing_and_the_rerun_continues(tmp_path):
    storage = str(tmp_path / "killed.journal")
    slow = ["--max-steps", "40"]  # long enough trials to be killed in the middle of one
    proc = worker(storage, 3, *slow)
    deadline = time.time() + 240
    snapshot = []
    while time.time() < deadline:
        time.sleep(0.2)
        if not Path(storage).exists():
            continue
        try:
            study = load(storage, "shared")
        except KeyError:
            continue
        trials = study.get_trials()
        if any(t.state == TrialState.COMPLETE for t in trials) and trials[-1].state == TrialState.RUNNING \
                and "worker_pid" in trials[-1].user_attrs:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            snapshot = [t for t in load(storage, "shared").get_trials() if t.state == TrialState.COMPLETE]
            break
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    assert 1 <= len(snapshot) < 3
    rerun = worker(storage, 3, *slow)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    study = load(storage, "shared")
    done = counted(study)
    assert len(done) == 3
    by_number = {t.number: t for t in study.get_trials()}
    for t in snapshot:  # every trial finished before the kill is kept as it was
        assert by_number[t.number].state == TrialState.COMPLETE and by_number[t.number].value == t.value
    interrupted = [t for t in study.get_trials() if "interrupted" in t.user_attrs]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    assert "is gone" in interrupted[0].user_attrs["interrupted"] and not sweep.is_counted(interrupted[0])


def test_a_connection_lost_mid_retry_is_named_by_the_database_error():
    """Optuna retries a failed trial listing inside its ``except``; with the database gone the retry raises
    ``PendingRollbackError``, whose context holds the real cause (seen in CI on a PostgreSQL shutdown)."""
    import sqlalchemy.exc

    class AdminShutdown(Exception):  # stands in for psycopg.errors.AdminShutdown
        pass

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, AdminShutdown("terminating connection\n due to admin"))
    try:
        try:
            raise lost
        except sqlalchemy.exc.OperationalError:
            raise sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")  # noqa: B904 (implicit context, as in SQLAlchemy)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        text = sweep.describe_storage_error(exc)
    assert text == "OperationalError: terminating connection due to admin"
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = ValueError("disk full")
    assert sweep.describe_storage_error(wrapped) == "ValueError: disk full"


def test_optunas_misleading_retry_warning_is_dropped_and_others_kept():
    drop = sweep._DropLostConnectionRetry()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("optuna.storages._rdb.storage", logging.WARNING, "", 0, msg, None, None)

    assert not drop.filter(record("Caught an error from sqlalchemy: (psycopg.errors.AdminShutdown) ..."))
    assert drop.filter(record("Heartbeat of trial 3 failed"))


def test_a_study_made_before_a_new_setting_continues_while_it_is_at_its_default(tmp_path, capsys):
    storage = str(tmp_path / "s.journal")
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "1", *TINY]) == 0
    study = load(storage, "cell")
    spec = json.loads(study.user_attrs["spec"])
    for key in ("guide", "guide_rank"):  # as stored by a version without these settings
        del spec["base_settings"][key]
    study.set_user_attr("spec", json.dumps(spec))
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "2", *TINY]) == 0
    assert len(load(storage, "cell").get_trials()) == 2
    # a stored setting that differs is still refused
    spec["base_settings"]["guide"] = "fullrank"
    study.set_user_attr("spec", json.dumps(spec))
    capsys.readouterr()
    assert sweep.main(["--subset", "pr", "--storage", storage, "--study", "cell", "--trials", "3", *TINY]) == 2
    assert "base_settings.guide: study 'fullrank' vs now 'meanfield'" in capsys.readouterr().err


def test_a_trial_no_worker_claimed_is_marked_lost_only_after_the_grace():
    # A worker that dies between asking for a trial and setting its host and pid leaves it RUNNING and unclaimed;
    # a claimed trial of a live worker (this process) is never marked, however short the grace.
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="claims")
    orphan = study.ask()
    mine = study.ask()
    mine.set_user_attr("worker_host", socket.gethostname())
    mine.set_user_attr("worker_pid", os.getpid())
    assert sweep.fail_stale_trials(study, storage, stale_after=600.0, unclaimed_after=600.0) == []
    assert sweep.fail_stale_trials(study, storage, stale_after=600.0, unclaimed_after=0.0) == [orphan.number]
    states = {t.number: t for t in study.get_trials()}
    assert states[orphan.number].state == TrialState.FAIL
    assert "no worker claimed it" in states[orphan.number].user_attrs["interrupted"]
    assert not sweep.is_counted(states[orphan.number])
    assert states[mine.number].state == TrialState.RUNNING
