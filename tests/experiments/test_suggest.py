"""A person in the loop (issue 23): ``active suggest`` -> a person fills the query file -> ``fit --data`` continues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from commands import fit_here, run_here

from mavrl_ppl.experiments.active import main as active_main
from mavrl_ppl.experiments.suggest import suggest_queries
from mavrl_ppl.feedback import get_feedback_type
from mavrl_ppl.feedback.data import FeedbackDataError, load_feedback, save_feedback, validate_feedback

TINY = ["--env", "grid_trap", "--env-size", "3", "--feedback", "pref=8,demo=1,rating=8,stop=8", "--max-steps", "30",
        "--num-posterior-samples", "60", "--quiet"]


def suggest(*args: str):
    return run_here(active_main, "suggest", *args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suggest") / "run"
    done = fit_here(*TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def queries(run):
    path = run.parent / "queries.nc"
    done = suggest(str(run), "--k", "5", "--pool", "16", "--draws", "40", "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path, done.stdout


def test_suggest_fill_fit_round_trip(run, queries, tmp_path):
    path, stdout = queries
    before = load_feedback(run / "feedback.nc")
    asked = load_feedback(path, allow_unanswered=True)
    assert list(asked) == list(before)  # the run's groups, in its order
    new = {name: np.flatnonzero(~ds["answered"].values) for name, ds in asked.items()}
    assert sum(len(v) for v in new.values()) == 5
    assert len(new["demo"]) == 0 and "not asked: demo" in stdout  # an episode is not a label on given segments
    for name, ds in asked.items():
        old = before[name].sizes["item"]
        assert list(new[name]) == list(range(old, ds.sizes["item"]))  # appended after the run's items
        kept = ds.isel(item=slice(0, old)).drop_vars(["answered", "query_eig"])
        xr.testing.assert_identical(kept, before[name])  # the run's data untouched
        assert np.isnan(ds["query_eig"].values[:old]).all()
        assert (ds["query_eig"].values[old:] >= 0).all()  # a gain (clipped Monte Carlo) is never negative
    # The command line says what it wrote, one line per query, best first.
    ranks = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in ranks] == [1, 2, 3, 4, 5]

    refused = fit_here("--data", str(path), "--out", str(tmp_path / "too_early"), "--quiet")
    first = min((name, int(items[0])) for name, items in new.items() if len(items))
    assert refused.returncode == 2
    assert "unanswered" in refused.stderr and f"item {first[1]}" in refused.stderr
    assert not (tmp_path / "too_early").exists()

    # A person answers: every preference the other way round from the placeholder, every rating 0, no stop.
    answers = {"pref": lambda v: 1 - v, "rating": lambda v: 0 * v, "stop": lambda v: 0 * v - 1}
    for name, items in new.items():
        if len(items):
            label = get_feedback_type(name).label
            asked[name][label].values[items] = answers[name](asked[name][label].values[items])
            asked[name]["answered"].values[items] = True
    filled = tmp_path / "answered.nc"
    save_feedback(filled, asked)
    done = fit_here("--data", str(filled), "--out", str(tmp_path / "next"), "--quiet")
    assert done.returncode == 0, done.stderr
    fitted = load_feedback(tmp_path / "next" / "feedback.nc")
    for name, ds in asked.items():  # the fit saw every item with the person's labels
        label = get_feedback_type(name).label
        np.testing.assert_array_equal(fitted[name][label].values, ds[label].values)


def test_same_run_and_seed_give_the_same_queries(run, queries, tmp_path):
    path, _ = queries
    again = tmp_path / "again.nc"
    assert suggest(str(run), "--k", "5", "--pool", "16", "--draws", "40", "--out", str(again)).returncode == 0
    a, b = load_feedback(path, allow_unanswered=True), load_feedback(again, allow_unanswered=True)
    for name in a:
        xr.testing.assert_identical(a[name], b[name])


@pytest.mark.parametrize(("args", "message"), [
    (["--costs", "demo=10"], "no type to ask about"),
    (["--k", "0"], "--k must be >= 1"),
    (["--costs", "pref=-1"], "positive and finite"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(run, tmp_path, args, message):
    out = tmp_path / "q.nc"
    done = suggest(str(run), "--out", str(out), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_an_existing_query_file_is_never_overwritten(run, queries):
    path, _ = queries
    before = path.read_bytes()
    done = suggest(str(run), "--out", str(path))
    assert done.returncode == 2 and "exists" in done.stderr
    assert path.read_bytes() == before


def test_not_a_run_is_one_line(tmp_path):
    done = suggest(str(tmp_path), "--out", str(tmp_path / "q.nc"))
    assert done.returncode == 2 and "not a finished run" in done.stderr


def test_unreadable_query_file_stays_a_feedback_error(queries):
    path, _ = queries
    with pytest.raises(FeedbackDataError, match="answered"):
        load_feedback(path)


def test_a_user_registered_type_is_asked_with_no_extra_code(tmp_path):
    """The run's --plugin is imported again; its type's candidates are scored and picked like the built-in ones, with a
    placeholder label its own check accepts (the file validates once the flags say answered)."""
    plugin = Path(__file__).resolve().parents[2] / "examples" / "plackett_luce.py"
    run = tmp_path / "run"
    done = fit_here("--plugin", str(plugin), "--env", "grid_trap", "--env-size", "3", "--feedback",
                    "ranking=12,pref=4", "--max-steps", "20", "--num-posterior-samples", "40", "--quiet",
                    "--out", str(run))
    assert done.returncode == 0, done.stderr
    result = suggest_queries(run, 3, {"ranking": 1.0}, pool=12, draws=30)
    assert list(result.offered) == ["ranking"] and result.not_offered == {}  # pref has no cost: not asked
    assert [p["type"] for p in result.picks] == ["ranking"] * 3
    ranking = result.feedback["ranking"]
    assert list(np.flatnonzero(~ranking["answered"].values)) == [12, 13, 14]
    ranking["answered"].values[:] = True
    validate_feedback(result.feedback)  # the placeholders are rankings the type accepts


def test_policy_target_asks_as_many_queries_with_gains_about_the_best_actions(run, tmp_path):
    path = tmp_path / "policy.nc"
    done = suggest(str(run), "--k", "5", "--pool", "16", "--draws", "40", "--target", "policy", "--out", str(path))
    assert done.returncode == 0, done.stderr
    asked = load_feedback(path, allow_unanswered=True)
    gains = np.concatenate([ds["query_eig"].values[~ds["answered"].values] for ds in asked.values()])
    # each pick's gain about the best actions is at most the entropy of those actions: non-negative and finite
    assert len(gains) == 5 and np.all(np.isfinite(gains)) and np.all(gains >= 0)
