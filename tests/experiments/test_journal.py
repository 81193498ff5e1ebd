"""A sweep's journal file after a worker died in the middle of a write (issue 27): the damaged tail is cut off with
one warning line and the study goes on; damage before the last record is one error line (exit 2). The fits are
replaced by a stand-in: only the bookkeeping is under test."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mavrl_ppl.errors import DamagedFileError
from mavrl_ppl.experiments import sweep, tables

TINY = ["--env", "chain", "--max-steps", "10", "--eval-every", "5", "--seeds", "1", "--quiet", "--subset", "pr"]
TORN = b'{"op_code":6,"worker_id":"1f2e-killed","trial_id":2,"user_attr":{"heart'


def fake_evaluation(spec, settings, counts, seeds, **kwargs):
    """A fit's record without the fit: the value depends on the learning rate, so trials differ."""
    value = 1.0 + abs(math.log(settings.learning_rate))
    keys = ("validation_nll", "holdout_nll", "normalized_score", "epic", "fit_seconds", "steps", "best_step")
    return {"seed": list(seeds), "error": [None for _ in seeds], **{k: [value for _ in seeds] for k in keys}}


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "evaluate_settings", fake_evaluation)
    path = tmp_path / "studies.journal"
    assert sweep.main([*TINY, "--storage", str(path), "--study", "cell", "--trials", "2"]) == 0
    return path


def trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="cell", storage=sweep.open_storage(path)).get_trials()


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize("tail", [TORN, b"garbage\n", b'{"not": "a record"}\n' + TORN], ids=["torn", "garbage", "two"])
def test_a_damaged_tail_is_cut_off_and_the_study_continues(study, capsys, tail):
    before = [(t.number, t.state, t.value) for t in trials(study)]
    whole = study.read_bytes()
    with open(study, "ab") as handle:
        handle.write(tail)
    capsys.readouterr()
    assert sweep.main([*TINY, "--storage", str(study), "--study", "cell", "--trials", "3"]) == 0
    err = capsys.readouterr().err
    assert len(warnings_in(err)) == 1 and "cut a damaged tail off the journal" in err and str(study) in err
    after = trials(study)
    assert [(t.number, t.state, t.value) for t in after[:2]] == before  # nothing before the damage is lost
    assert sum(map(sweep.is_counted, after)) == 3 and after[2].state == TrialState.COMPLETE
    aside = list(study.parent.glob("studies.journal.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == tail  # the cut bytes are kept
    assert study.read_bytes().startswith(whole)
    assert sweep.main([*TINY, "--storage", str(study), "--study", "cell", "--trials", "3"]) == 0
    assert warnings_in(capsys.readouterr().err) == []  # repaired once, for good


def test_damage_before_the_last_record_is_one_error_line(study, capsys):
    lines = study.read_bytes().splitlines(keepends=True)
    study.write_bytes(b"".join([*lines[:3], b"garbage\n", *lines[3:]]))
    damaged = study.read_bytes()
    capsys.readouterr()
    assert sweep.main([*TINY, "--storage", str(study), "--study", "cell", "--trials", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {study}: line 4 of the journal is not a whole record")
    with pytest.raises(DamagedFileError, match="restore the file from a copy"):
        sweep.open_storage(study)
    assert tables.main(["--storage", str(study), "--quiet", "--out", str(study.parent / "t")]) == 2
    assert study.read_bytes() == damaged  # nothing is changed


def test_a_write_after_a_worker_was_killed_mid_write_repairs_the_tail_first(study):
    """A live worker appends after another one died in the middle of its write: the torn line is cut off before the
    new record is written, so the two never run together into one unreadable line."""
    storage = sweep.open_storage(study)
    with open(study, "ab") as handle:
        handle.write(TORN)
    live = optuna.load_study(study_name="cell", storage=storage)
    live.set_user_attr("note", "written after the torn line")
    assert trials(study) and optuna.load_study(study_name="cell", storage=sweep.open_storage(study)).user_attrs[
        "note"] == "written after the torn line"
    assert TORN not in study.read_bytes()


def test_the_table_command_reads_a_journal_with_a_torn_tail(study, capsys, monkeypatch):
    with open(study, "ab") as handle:
        handle.write(TORN)
    capsys.readouterr()
    assert tables.main(["--storage", str(study), "--seeds", "1", "--quiet", "--out", str(study.parent / "t")]) == 0
    assert len(warnings_in(capsys.readouterr().err)) == 1
