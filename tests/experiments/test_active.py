"""The simulated active-query loop (issue 23): budget, per-round records, the rules, resume, the command line."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace

import pytest

from mavrl_ppl.experiments.active import (
    LoopSpec,
    concat_feedback,
    finished_rounds,
    loop_directory,
    main,
    run_active,
    run_loop,
)

SVI = {"max_steps": 30, "eval_every": 10, "num_posterior_samples": 50}
COSTS = {"pref": 1.0, "demo": 3.0, "rating": 1.0, "stop": 1.0}
START = "pref=2,demo=0,rating=2,stop=2"  # cost 6
BUDGET = 11.0  # 5 left: batches of 2 cannot all be full, the last must stop at the budget
TIMING = ("seconds", "fit_seconds", "select_seconds")


def spec(records, acquisition, seed=0):
    return LoopSpec("grid_trap", seed, acquisition, BUDGET, COSTS, START, 2, 6, records, env_size=3, svi=SVI,
                    eig_draws=40)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("active")
    specs = [spec(out / "records", rule) for rule in ("eig", "policy", "random", "fixed")]
    summary = run_active(specs, out, in_process=True, progress=False)
    return out, specs, summary


def without_timing(record):
    return {k: v for k, v in record.items() if k not in TIMING}


def test_every_rule_spends_exactly_the_budget_with_one_record_per_round(finished):
    out, specs, summary = finished
    for s in specs:
        rounds = summary["results"][(s.env, s.acquisition, s.seed)]
        directory = loop_directory(s.records, s.env, s.acquisition, s.seed)
        files = sorted(p.name for p in directory.glob("round*.json"))
        assert files == [f"round{r}.json" for r in range(len(rounds))]
        assert [json.loads((directory / f).read_text()) for f in files] == json.loads(json.dumps(rounds))
        costs = [r["cost"] for r in rounds]
        assert costs[0] == 6.0  # the start set
        assert all(b > a for a, b in itertools.pairwise(costs)), costs
        assert costs[-1] == BUDGET and rounds[-1]["final"] and not rounds[-1]["asked"]
        assert all(not r["final"] for r in rounds[:-1])
        for before, after in itertools.pairwise(rounds):
            assert before["cost_after"] == after["cost"]  # what was asked is what the next round fitted
            assert 1 <= len(before["asked"]) <= 2
            added = {t: after["counts"].get(t, 0) - before["counts"].get(t, 0) for t in after["counts"]}
            asked = {t: sum(p["type"] == t for p in before["asked"]) for t in after["counts"]}
            assert added == asked
            assert after["cost"] == sum(n * COSTS[t] for t, n in after["counts"].items())
        for r in rounds:
            assert 0.0 <= r["epic"] <= 1.0 and r["regret"] >= 0.0 and r["normalized_score"] <= 100.0 + 1e-9
    for rule in ("eig", "policy"):
        gains = [p["eig"] for r in summary["results"][("grid_trap", rule, 0)] for p in r["asked"]]
        assert all(g is not None and g >= 0 for g in gains) and any(g > 0 for g in gains), (rule, gains)
    random = summary["results"][("grid_trap", "random", 0)]
    assert all(p["eig"] is None for r in random for p in r["asked"])
    assert (out / "active.png").stat().st_size > 10_000
    table = (out / "active.md").read_text()
    assert table.count("| grid_trap |") == 4 and "score at budget" in table


def test_fixed_rule_follows_the_paper_shares():
    from mavrl_ppl.experiments.active import _fixed_type

    # paper counts pref 64, demo 1, rating 64, stop 256: stop is asked until it has 4x the preferences
    assert _fixed_type({"pref": 2, "rating": 2, "stop": 2}, ["pref", "demo", "rating", "stop"]) == "stop"
    assert _fixed_type({"pref": 2, "rating": 2, "stop": 12}, ["pref", "demo", "rating", "stop"]) == "pref"
    assert _fixed_type({"pref": 2, "rating": 2, "stop": 12}, ["demo"]) == "demo"


def test_a_rerun_after_losing_the_last_round_reproduces_it(finished, tmp_path):
    _, specs, summary = finished
    for rule in ("eig", "random"):
        s = spec(tmp_path / rule, rule)
        source = loop_directory(specs[0].records, "grid_trap", rule, 0)
        target = loop_directory(s.records, "grid_trap", rule, 0)
        shutil.copytree(source, target)
        rounds = summary["results"][("grid_trap", rule, 0)]
        last = len(rounds) - 1
        (target / f"round{last - 1}.json").unlink()  # the last two rounds are lost: round last-1 is redone
        (target / f"round{last}.json").unlink()
        kept = (target / "round0.json").read_text()
        again = run_loop(s)
        assert (target / "round0.json").read_text() == kept  # continued, not started over
        assert [without_timing(r) for r in again] == [without_timing(r) for r in json.loads(json.dumps(rounds))]
        assert len(finished_rounds(target)) == len(rounds)


def test_records_alone_make_a_finished_loop_and_missing_data_step_back(finished, tmp_path):
    """The data files are not committed: a finished loop is read from its records without refitting; an unfinished
    one whose last round lost its data continues from the round before (and ends with the same records)."""
    _, specs, summary = finished
    rule = "random"
    rounds = json.loads(json.dumps(summary["results"][("grid_trap", rule, 0)]))
    s = spec(tmp_path / "records", rule)
    target = loop_directory(s.records, "grid_trap", rule, 0)
    shutil.copytree(loop_directory(specs[0].records, "grid_trap", rule, 0), target)
    for data in target.glob("round*.nc"):
        data.unlink()
    assert finished_rounds(target) == rounds
    assert run_loop(s) == rounds and not list(target.glob("round*.nc"))  # nothing refitted
    last = len(rounds) - 1
    (target / f"round{last}.json").unlink()  # now unfinished, and no round has data: start over
    assert finished_rounds(target) == []
    shutil.copy(loop_directory(specs[0].records, "grid_trap", rule, 0) / f"round{last - 2}.nc", target)
    assert len(finished_rounds(target)) == last - 1  # continues after round last-2, the latest with its data
    assert [without_timing(r) for r in run_loop(s)] == [without_timing(r) for r in rounds]


def test_concat_pads_segments_to_a_common_length():
    import numpy as np

    from mavrl_ppl.envs import make_tabular
    from mavrl_ppl.feedback import TabularTeacher, simulate_feedback

    teacher = TabularTeacher(make_tabular("grid_trap", size=4))
    a = simulate_feedback(teacher, {"demo": 1}, np.random.default_rng(0))
    b = simulate_feedback(teacher, {"demo": 2}, np.random.default_rng(1), {"demo": {"beta": 0.1}})
    joined = concat_feedback(a, b)["demo"]
    assert joined.sizes["item"] == 3
    steps = max(a["demo"].sizes["step"], b["demo"].sizes["step"])
    assert joined.sizes["step"] == steps
    assert joined["valid"].values.sum() == a["demo"]["valid"].values.sum() + b["demo"]["valid"].values.sum()
    assert joined["valid"].dtype == bool and joined["action"].dtype == a["demo"]["action"].dtype


@pytest.mark.parametrize("argv", [
    ["--acquisition", "eig", "bald"],
    ["--budget", "5"],  # below the start set's cost 16
    ["--costs", "pref=0,rating=1,stop=1"],
    ["--costs", "pref=1,rating=1"],  # the start set has stop items
    ["--start", "pref=0,rating=0,stop=0"],
    ["--seeds", "x"],
    ["--env", "CartPole-v1"],
    ["--env", "grid_nowhere"],
    ["--batch", "0"],
])
def test_bad_arguments_exit_2_with_one_line(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_records_made_with_other_settings_are_refused(tmp_path, capsys):
    directory = loop_directory(tmp_path / "records", "grid_trap", "random", 0)
    directory.mkdir(parents=True)
    (directory / "settings.json").write_text(json.dumps({"budget": 99.0}))
    argv = ["--env", "grid_trap", "--env-size", "3", "--acquisition", "random", "--seeds", "0", "--budget", "20",
            "--out", str(tmp_path), "--jobs", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "other settings" in err and "\n" not in err
    assert not list(directory.glob("round*"))


def test_warm_start_is_used_and_a_rerun_after_losing_rounds_reproduces_them(finished, tmp_path):
    """With --warm-start each round keeps its fitted parameters (round<r>.pt) and the next fit starts from them: the
    records differ from the cold loop's on the same pools, and a rerun that lost the last two rounds (record and
    parameters) redoes them exactly from the files."""
    summary = finished[2]
    s = replace(spec(tmp_path / "warm", "random"), warm_start=True)
    rounds = run_loop(s)
    directory = loop_directory(s.records, "grid_trap", "random", 0)
    assert sorted(p.name for p in directory.glob("round*.pt")) == [f"round{r}.pt" for r in range(len(rounds))]
    cold = summary["results"][("grid_trap", "random", 0)]
    assert [r["asked"] for r in rounds][:1] == [r["asked"] for r in cold][:1]  # round 0: same start, same fit
    assert [without_timing(r) for r in rounds[1:]] != [without_timing(r) for r in json.loads(json.dumps(cold))[1:]]
    last = len(rounds) - 1
    for r in (last - 1, last):
        (directory / f"round{r}.json").unlink()
    (directory / f"round{last}.pt").unlink()
    again = run_loop(s)
    assert [without_timing(r) for r in again] == [without_timing(r) for r in json.loads(json.dumps(rounds))]
