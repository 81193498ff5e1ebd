"""Run directories (issue 27): one run per ``--out`` at a time, ``--out`` checked before any work, no left-overs of
dead runs. These tests drive :func:`mavrl_ppl.rundirs.claim_run_directory` directly (no fitting); ``test_fit.py``
and ``test_fit_faults.py`` drive the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mavrl_ppl.errors import UsageError
from mavrl_ppl.rundirs import claim_path, claim_run_directory, clean_stale_claims

WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from mavrl_ppl.errors import UsageError
    from mavrl_ppl.rundirs import claim_run_directory
    out, start, hold, how = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    time.sleep(max(0.0, start - time.time()))  # every writer starts at the same moment
    try:
        with claim_run_directory(out, overwrite=how == "overwrite") as work:
            (work / "who").write_text(str(os.getpid()))
            if how == "die":
                os.kill(os.getpid(), 9)
            time.sleep(hold)
    except UsageError as exc:
        print("error:", exc, file=sys.stderr)
        sys.exit(2)
    print("wrote", out, file=sys.stderr)
""")


def writer(out: Path, start: float, hold: float = 2.0, how: str = "plain") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(start), str(hold), how],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_claim_publishes_the_run_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "run"
    with claim_run_directory(out) as work:
        (work / "config.json").write_text("{}")
        assert claim_path(out).is_dir() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (out / "config.json").read_text() == "{}"


def test_a_failed_run_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), claim_run_directory(tmp_path / "run") as work:
        (work / "half").write_text("x")
        raise RuntimeError("the fit failed")
    assert list(tmp_path.iterdir()) == []


def test_a_second_claim_of_the_same_out_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    with claim_run_directory(out) as work:
        (work / "config.json").write_text("first")
        with pytest.raises(UsageError, match=f"another run is writing it \\(pid {os.getpid()} on"), \
                claim_run_directory(out, overwrite=True, wait=0.2):
            pytest.fail("the second claim must not start")
    assert (out / "config.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_existing_out_file_and_foreign_directories_are_refused_up_front(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("old")
    with pytest.raises(UsageError, match="already exists"), claim_run_directory(tmp_path / "run"):
        pytest.fail("not reached")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(UsageError, match="is not a directory"), claim_run_directory(tmp_path / "file",
                                                                                    overwrite=True):
        pytest.fail("not reached")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="not a run directory"), claim_run_directory(tmp_path / "home",
                                                                                     overwrite=True):
        pytest.fail("not reached")
    with pytest.raises(UsageError, match="file is not a directory"), claim_run_directory(tmp_path / "file" / "x"):
        pytest.fail("not reached")
    assert (tmp_path / "file").read_text() == "precious" and (tmp_path / "home" / "thesis.tex").exists()
    with claim_run_directory(tmp_path / "run", overwrite=True) as work:  # a run directory is replaced
        (work / "config.json").write_text("new")
    assert (tmp_path / "run" / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "home", "run"]


def test_concurrent_writers_end_with_exactly_the_runs_they_reported(tmp_path):
    """4 writers into 4 directories and 2 (and 2 with overwrite) into one, all starting at the same moment."""
    start = time.time() + 1.5
    outs = [tmp_path / f"d{i}" for i in range(4)] + [tmp_path / "same"] * 2 + [tmp_path / "over"] * 2
    procs = [writer(out, start, how="overwrite" if out.name == "over" else "plain") for out in outs]
    results = [(p, p.communicate(timeout=60)[1]) for p in procs]
    wrote = {}
    for out, (proc, err) in zip(outs, results, strict=True):
        assert proc.returncode in (0, 2) and len(err.strip().splitlines()) == 1, err
        if proc.returncode == 0:
            assert out not in wrote, f"two writers reported writing {out}"
            wrote[out] = proc.pid
        else:
            assert "another run is writing it" in err, err
    assert set(wrote) == set(outs)  # one writer of each directory won, the other stopped at once
    for out, pid in wrote.items():
        assert (out / "who").read_text() == str(pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d0", "d1", "d2", "d3", "over", "same"]


def test_the_left_overs_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    killed = writer(tmp_path / "killed", time.time(), how="die")
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    claim = claim_path(tmp_path / "killed")
    assert (claim / "work" / "who").is_file()  # what SIGKILL leaves: the claim and its half-written run
    with claim_run_directory(tmp_path / "other") as work:  # any later run into the same parent
        (work / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    # and a rerun into the killed run's own directory takes its claim over
    killed = writer(tmp_path / "killed", time.time(), how="die")
    killed.communicate(timeout=60)
    with claim_run_directory(tmp_path / "killed") as work:
        assert list(work.iterdir()) == []
        (work / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "other"]


def test_live_claims_are_never_cleaned(tmp_path):
    with claim_run_directory(tmp_path / "live") as work:
        (work / "x").write_text("1")
        assert clean_stale_claims(tmp_path) == []
        assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '[".live.lock"]'
