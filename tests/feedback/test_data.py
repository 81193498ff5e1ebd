"""Feedback data sets on disk and in memory (DESIGN §2): validation, NetCDF round trip, simulation.

Every malformed case starts from a valid simulated set, breaks exactly one thing and checks that the error
names the right group, variable and item. All comparisons here are exact (no tolerances): validation is
deterministic and NetCDF stores the bits it is given.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import xarray as xr

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import (
    FeedbackDataError,
    TabularTeacher,
    load_feedback,
    parse_counts,
    save_feedback,
    simulate_feedback,
    validate_feedback,
)

PAPER_COUNTS = {"pref": 64, "demo": 1, "rating": 64, "stop": 256}


@pytest.fixture(scope="module")
def teacher() -> TabularTeacher:
    return TabularTeacher(make_tabular("grid_trap"))


@pytest.fixture(scope="module")
def paper_set(teacher) -> dict[str, xr.Dataset]:
    return simulate_feedback(teacher, PAPER_COUNTS, np.random.default_rng(0))


@pytest.fixture
def fresh(paper_set) -> dict[str, xr.Dataset]:
    """A deep copy each test may break at will."""
    return {name: ds.copy(deep=True) for name, ds in paper_set.items()}


def raises_at(feedback, group, variable, item, match: str | None = None, path=None) -> FeedbackDataError:
    with pytest.raises(FeedbackDataError) as info:
        validate_feedback(feedback, path)
    err = info.value
    assert (err.group, err.variable, err.item) == (group, variable, item), str(err)
    if match is not None:
        assert match in str(err), str(err)
    return err


# ------------------------------------------------------------------------------------------ valid data


def test_simulated_paper_set_is_valid(paper_set):
    validate_feedback(paper_set)
    assert list(paper_set) == list(PAPER_COUNTS)
    assert {name: ds.sizes["item"] for name, ds in paper_set.items()} == PAPER_COUNTS


def test_padded_steps_may_hold_any_index(fresh):
    """Indices at padded steps are never read, so they are not checked (module docstring of data.py)."""
    stop = fresh["stop"]
    stop["valid"][8, 5:] = False
    stop["stop_time"][8] = 2
    stop["action"][8, 7] = 99
    stop["next_action"][8, 9] = -1
    stop["state"][8, 6] = -5
    stop["next_state"][8, 6] = 1000
    # After a terminal step Q(s', .) = 0: the next action is not read either.
    stop["terminal"][9, 3] = True
    stop["next_action"][9, 3] = -1
    validate_feedback(fresh)


# ------------------------------------------------------------------------------------- malformed data


def _drop(group, var):
    return lambda fb: fb.__setitem__(group, fb[group].drop_vars(var))


def _set(group, var, index, value):
    def mutate(fb):
        fb[group][var].values[index] = value

    return mutate


def _transpose(group, var, *dims):
    def mutate(fb):
        fb[group][var] = fb[group][var].transpose(*dims)

    return mutate


def _astype(group, var, dtype):
    def mutate(fb):
        fb[group][var] = fb[group][var].astype(dtype)

    return mutate


def _attr(group, name, value):
    def mutate(fb):
        if value is None:
            del fb[group].attrs[name]
        else:
            fb[group].attrs[name] = value

    return mutate


def _stop_at_padded_step(fb):
    fb["stop"]["valid"].values[5, 6:] = False
    fb["stop"]["stop_time"].values[5] = 7


def _several(*mutations):
    def mutate(fb):
        for m in mutations:
            m(fb)

    return mutate


MALFORMED = {
    # DESIGN §2, in its order
    "missing segment variable": (_drop("rating", "next_action"), "rating", "next_action", None, "missing"),
    "missing label": (_drop("pref", "preference"), "pref", "preference", None, "missing"),
    "missing half of state/next_state": (_drop("stop", "next_state"), "stop", "next_state", None, "missing"),
    "obs dims transposed": (
        _transpose("stop", "obs", "item", "obs_dim", "step"),
        "stop",
        "obs",
        None,
        "dims",
    ),
    "valid dims transposed": (
        _transpose("pref", "valid", "item", "step", "side"),
        "pref",
        "valid",
        None,
        "dims",
    ),
    "rating above K-1": (_set("rating", "rating", 7, 5), "rating", "rating", 7, "rating 5 is outside 0..4"),
    "rating negative": (_set("rating", "rating", 12, -1), "rating", "rating", 12, "outside 0..4"),
    "stop time at T": (_set("stop", "stop_time", 3, 10), "stop", "stop_time", 3, "outside -1..9"),
    "stop time below -1": (_set("stop", "stop_time", 40, -2), "stop", "stop_time", 40, "outside -1..9"),
    "stop at a padded step": (_stop_at_padded_step, "stop", "stop_time", 5, "invalid"),
    "preference above 1": (_set("pref", "preference", 2, 1.5), "pref", "preference", 2, "outside [0, 1]"),
    "preference below 0": (_set("pref", "preference", 9, -0.25), "pref", "preference", 9, "outside [0, 1]"),
    "NaN next_obs": (_set("pref", "next_obs", (4, 1, 3, 0), np.nan), "pref", "next_obs", 4, "side 1, step 3"),
    "inf obs": (_set("rating", "obs", (11, 2, 5), np.inf), "rating", "obs", 11, "not finite"),
    "NaN obs at a padded step": (
        _several(_set("stop", "valid", (6, slice(4, None)), False), _set("stop", "obs", (6, 8, 0), np.nan)),
        "stop",
        "obs",
        6,
        "not finite",
    ),
    "NaN label": (_set("pref", "preference", 13, np.nan), "pref", "preference", 13, "not finite"),
    "segment with no valid step": (_set("rating", "valid", 6, False), "rating", "valid", 6, "no valid step"),
    "pair side with no valid step": (_set("pref", "valid", (3, 1), False), "pref", "valid", 3, "side 1"),
    "demo episode with no valid step": (_set("demo", "valid", 0, False), "demo", "valid", 0, "no valid"),
    "action too large": (_set("stop", "action", (9, 2), 5), "stop", "action", 9, "outside 0..4"),
    "action negative": (_set("pref", "action", (2, 0, 4), -1), "pref", "action", 2, "side 0, step 4"),
    "next action too large": (_set("rating", "next_action", (4, 0), 7), "rating", "next_action", 4, "0..4"),
    "state outside the MDP": (_set("stop", "state", (1, 3), 100), "stop", "state", 1, "outside 0..99"),
    "demo action outside": (_set("demo", "action", (0, 0), 5), "demo", "action", 0, "outside 0..4"),
    # dtypes and attributes
    "float action": (_astype("stop", "action", np.float64), "stop", "action", None, "int dtype"),
    "int8 valid in memory": (_astype("rating", "valid", np.int8), "rating", "valid", None, "bool dtype"),
    "int preference": (_astype("pref", "preference", np.int64), "pref", "preference", None, "float dtype"),
    "num_actions missing": (_attr("pref", "num_actions", None), "pref", "num_actions", None, "missing"),
    "num_actions zero": (_attr("demo", "num_actions", 0), "demo", "num_actions", None, ">= 1"),
    "num_actions float": (_attr("demo", "num_actions", 5.0), "demo", "num_actions", None, ">= 1"),
    "lambda missing": (_attr("stop", "lambda", None), "stop", "lambda", None, "missing"),
    "lapse of one": (_attr("stop", "lapse", 1.0), "stop", "lapse", None, "[0, 1)"),
    "lapse text": (_attr("stop", "lapse", "often"), "stop", "lapse", None, "[0, 1)"),
    "num_categories missing": (_attr("rating", "num_categories", None), "rating", "num_categories", None, "missing"),
    "num_categories text": (_attr("rating", "num_categories", "five"), "rating", "num_categories", None, ">= 2"),
    "num_categories float": (_attr("rating", "num_categories", 4.7), "rating", "num_categories", None, ">= 2"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_data_names_group_variable_item(fresh, case):
    mutate, group, variable, item, match = MALFORMED[case]
    mutate(fresh)
    err = raises_at(fresh, group, variable, item, match)
    assert isinstance(err, ValueError)
    assert "\n" not in str(err)


def test_message_names_file_group_variable_item(fresh):
    fresh["rating"]["rating"].values[7] = 9
    err = raises_at(fresh, "rating", "rating", 7, path="feedback.nc")
    assert str(err) == "feedback.nc: group 'rating', variable 'rating', item 7: rating 9 is outside 0..4"
    assert err.path == "feedback.nc"
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.group, again.variable, again.item) == (str(err), "rating", "rating", 7)


def test_first_problem_is_reported(fresh):
    """Deterministic order: groups in mapping order, then check order, then the smallest item."""
    fresh["stop"]["action"].values[30, 0] = 9
    fresh["stop"]["action"].values[20, 5] = 9
    fresh["stop"]["stop_time"].values[10] = 99  # the type's own check runs after the index checks
    fresh["rating"]["rating"].values[50] = 9  # rating comes before stop in the mapping
    raises_at(fresh, "rating", "rating", 50)
    fresh["rating"]["rating"].values[50] = 0
    raises_at(fresh, "stop", "action", 20)


def test_unknown_group(fresh):
    fresh["ranking"] = fresh.pop("rating")
    err = raises_at(fresh, "ranking", None, None, "unknown feedback type")
    assert "pref" in str(err)


def test_side_must_have_two_entries(fresh):
    pref = fresh["pref"]
    fresh["pref"] = xr.concat([pref, pref.isel(side=[0])], dim="side", data_vars="all", coords="minimal")
    fresh["pref"]["preference"] = pref["preference"]
    raises_at(fresh, "pref", None, None, "'side' has size 3")


def test_empty_group_and_empty_set(fresh):
    fresh["rating"] = fresh["rating"].isel(item=slice(0, 0))
    raises_at(fresh, "rating", None, None, "no items")
    with pytest.raises(FeedbackDataError, match="no groups"):
        validate_feedback({})


def test_a_type_check_that_trips_is_a_data_error(fresh):
    import dataclasses

    from mavrl_ppl.feedback import get_feedback_type, register

    original = get_feedback_type("rating")

    def crashing_check(dataset):
        raise ValueError("the check itself broke")

    register(dataclasses.replace(original, check=crashing_check), overwrite=True)
    try:
        err = raises_at(fresh, "rating", None, None, "check failed")
    finally:
        register(original, overwrite=True)
    assert isinstance(err.__cause__, ValueError)


def test_not_a_dataset(fresh):
    fresh["pref"] = fresh["pref"]["obs"]
    raises_at(fresh, "pref", None, None, "expected an xarray.Dataset")


# ---------------------------------------------------------------------------------------------- NetCDF


def _assert_same_attrs(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key, value in a.items():
        back = b[key]
        assert type(back) is type(value), (key, type(value), type(back))
        if isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and back.shape == value.shape, key
            np.testing.assert_array_equal(back, value)
        else:
            assert back == value, key


def _assert_exact(saved: dict[str, xr.Dataset], loaded: dict[str, xr.Dataset]) -> None:
    assert list(loaded) == list(saved)
    for name, ds in saved.items():
        back = loaded[name]
        xr.testing.assert_identical(back, ds)
        _assert_same_attrs(ds.attrs, back.attrs)
        for var in ds.variables:
            assert back[var].dtype == ds[var].dtype, (name, var)
            assert back[var].dims == ds[var].dims, (name, var)
            _assert_same_attrs(ds[var].attrs, back[var].attrs)


def test_round_trip_is_exact(fresh, tmp_path):
    # Attributes NetCDF would change without care: 1-element and 0-d arrays, bools, Python int/float,
    # lists, tuples, float32 scalars, 2-D and bool arrays; a float variable with time-like units.
    fresh["rating"].attrs.update(
        flag=True,
        one=np.array([0.5]),
        zero_d=np.array(3, dtype=np.int32),
        grid=np.arange(6.0).reshape(2, 3),
        mask=np.array([True, False]),
        numbers=[1.0, 2.5],
        pair=(1, 2),
        names=["a", "bc"],
        f32=np.float32(0.25),
        note="héllo",
    )
    fresh["pref"]["preference"].attrs["units"] = "seconds"
    fresh["stop"]["item_id"] = ("item", np.arange(256, dtype=np.int32))  # extra variables are kept
    path = tmp_path / "feedback.nc"
    save_feedback(path, fresh)
    loaded = load_feedback(path)
    _assert_exact(fresh, loaded)
    assert loaded["rating"].attrs["true_cutpoints"].shape == (4,)
    assert loaded["pref"]["valid"].dtype == np.bool_ and loaded["stop"]["terminal"].dtype == np.bool_
    # Saving what was loaded gives the same data again (no stale encodings).
    save_feedback(path, loaded)
    _assert_exact(fresh, load_feedback(path))
    assert sorted(os.listdir(tmp_path)) == ["feedback.nc"]  # no temporary file left behind


def test_round_trip_keeps_group_order_and_single_cutpoint(teacher, tmp_path):
    data = simulate_feedback(
        teacher,
        {"stop": 8, "rating": 8, "pref": 4},
        np.random.default_rng(3),
        {"rating": {"num_categories": 2}},
    )
    assert data["rating"].attrs["true_cutpoints"].shape == (1,)
    save_feedback(tmp_path / "f.nc", data)
    _assert_exact(data, load_feedback(tmp_path / "f.nc"))


def test_load_selected_groups_only_and_a_missing_one_is_named(teacher, tmp_path):
    data = simulate_feedback(teacher, {"stop": 8, "rating": 8, "pref": 4}, np.random.default_rng(3))
    path = tmp_path / "f.nc"
    save_feedback(path, data)
    picked = load_feedback(path, groups=["pref", "stop"])
    assert list(picked) == ["stop", "pref"]  # the file's order
    _assert_exact({name: data[name] for name in picked}, picked)
    with pytest.raises(FeedbackDataError, match="no such group") as info:
        load_feedback(path, groups=["demo"])
    assert (info.value.path, info.value.group) == (str(path), "demo")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
def test_load_leaves_no_open_file(paper_set, tmp_path):
    path = str(tmp_path / "feedback.nc")
    save_feedback(path, paper_set)
    load_feedback(path)
    fds = os.listdir("/proc/self/fd")
    targets = [os.path.realpath(os.path.join("/proc/self/fd", fd)) for fd in fds]
    assert os.path.realpath(path) not in targets


def test_save_invalid_writes_nothing(fresh, paper_set, tmp_path):
    fresh["rating"]["rating"].values[7] = 9
    path = tmp_path / "feedback.nc"
    with pytest.raises(FeedbackDataError) as info:
        save_feedback(path, fresh)
    assert (info.value.path, info.value.group, info.value.item) == (str(path), "rating", 7)
    assert os.listdir(tmp_path) == []
    # An earlier file survives a failed save untouched.
    save_feedback(path, paper_set)
    before = path.read_bytes()
    with pytest.raises(FeedbackDataError):
        save_feedback(path, fresh)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["feedback.nc"]


def test_save_unstorable_attribute_writes_nothing(fresh, tmp_path):
    fresh["pref"].attrs["settings"] = {"beta": 5.0}
    with pytest.raises(FeedbackDataError) as info:
        save_feedback(tmp_path / "feedback.nc", fresh)
    assert (info.value.group, info.value.variable) == ("pref", "settings")
    assert os.listdir(tmp_path) == []


def _write_raw(path, feedback):
    """Write groups with plain xarray, bypassing save_feedback's validation (as another tool might)."""
    for index, (name, ds) in enumerate(feedback.items()):
        ds.to_netcdf(path, mode="w" if index == 0 else "a", group=name, engine="h5netcdf")


def test_load_invalid_file_raises_with_path(fresh, tmp_path):
    fresh["stop"]["stop_time"].values[17] = 12
    path = tmp_path / "bad.nc"
    _write_raw(path, fresh)
    with pytest.raises(FeedbackDataError) as info:
        load_feedback(path)
    err = info.value
    assert (err.path, err.group, err.variable, err.item) == (str(path), "stop", "stop_time", 17)
    assert str(err).startswith(f"{path}: group 'stop', variable 'stop_time', item 17: ")


def test_load_unknown_group_raises(fresh, tmp_path):
    path = tmp_path / "f.nc"
    _write_raw(path, {"pref": fresh["pref"], "ranking": fresh["rating"]})
    with pytest.raises(FeedbackDataError) as info:
        load_feedback(path)
    assert (info.value.group, info.value.variable, info.value.item) == ("ranking", None, None)


def test_load_restores_bools_written_as_integers(fresh, tmp_path):
    """Another writer may store bools as 0/1 int8 without xarray's dtype marker."""
    path = tmp_path / "f.nc"
    raw = fresh["rating"].copy()
    raw["valid"] = raw["valid"].astype(np.int8)
    raw["terminal"] = raw["terminal"].astype(np.int8)
    _write_raw(path, {"rating": raw})
    with xr.open_dataset(path, group="rating", engine="h5netcdf") as plain:
        assert plain["valid"].dtype == np.int8  # the premise: xarray alone gives int8 back
    loaded = load_feedback(path)
    assert loaded["rating"]["valid"].dtype == np.bool_
    np.testing.assert_array_equal(loaded["rating"]["valid"], fresh["rating"]["valid"])


def test_load_missing_or_foreign_file(tmp_path):
    with pytest.raises(FeedbackDataError, match="no such file") as info:
        load_feedback(tmp_path / "nope.nc")
    assert (info.value.path, info.value.group, info.value.variable) == (str(tmp_path / "nope.nc"), None, None)
    text = tmp_path / "notes.nc"
    text.write_text("pref=64\n")
    with pytest.raises(FeedbackDataError, match="cannot read as NetCDF") as info:
        load_feedback(text)
    assert (info.value.path, info.value.variable, info.value.item) == (str(text), None, None)
    empty = tmp_path / "empty.nc"
    xr.Dataset().to_netcdf(empty, engine="h5netcdf")
    with pytest.raises(FeedbackDataError, match="no feedback groups"):
        load_feedback(empty)


# ------------------------------------------------------------------------------------------ simulation


def test_same_seed_same_data_other_seed_other_data(teacher, paper_set):
    again = simulate_feedback(teacher, PAPER_COUNTS, np.random.default_rng(0))
    for name in PAPER_COUNTS:
        xr.testing.assert_identical(again[name], paper_set[name])
    other = simulate_feedback(teacher, PAPER_COUNTS, np.random.default_rng(1))
    for name in PAPER_COUNTS:
        assert not other[name].identical(paper_set[name]), name
        assert not np.array_equal(other[name]["state"].values, paper_set[name]["state"].values), name


def test_each_type_has_its_own_stream(teacher, paper_set):
    """A type's data do not depend on which other types are simulated (like-for-like single-type runs)."""
    alone = simulate_feedback(teacher, {"stop": 256, "pref": 64}, np.random.default_rng(0))
    xr.testing.assert_identical(alone["pref"], paper_set["pref"])
    xr.testing.assert_identical(alone["stop"], paper_set["stop"])
    assert list(alone) == ["stop", "pref"]


def test_simulate_counts_settings_and_errors(teacher):
    rng = np.random.default_rng(5)
    data = simulate_feedback(teacher, {"pref": 3, "demo": 0, "rating": 2}, rng, {"pref": {"beta": 1.5}})
    assert list(data) == ["pref", "rating"]
    assert data["pref"].attrs["beta"] == 1.5
    assert dict(data["pref"].sizes) == {"item": 3, "side": 2, "step": 10, "obs_dim": 100}
    assert data["rating"].attrs["num_categories"] == 5  # the type's default
    with pytest.raises(KeyError, match="ranking"):
        simulate_feedback(teacher, {"pref": 2, "ranking": 2}, rng)
    with pytest.raises(KeyError, match="ranking"):
        simulate_feedback(teacher, {"pref": 2}, rng, {"ranking": {}})
    with pytest.raises(ValueError, match="non-negative"):
        simulate_feedback(teacher, {"pref": -1}, rng)
    with pytest.raises(ValueError, match=r"gossip.*known.*lapse"):  # a setting the stop simulator does not take
        simulate_feedback(teacher, {"stop": 2}, rng, {"stop": {"gossip": 1}})


def test_parse_counts():
    assert parse_counts("pref=64,demo=1,rating=64,stop=256") == PAPER_COUNTS
    assert list(parse_counts(" stop = 2 , pref=0")) == ["stop", "pref"]
    assert parse_counts("pref=3", known=["pref", "demo"]) == {"pref": 3}


@pytest.mark.parametrize(
    "spec, piece",
    [
        ("pref=64,demo", "'demo'"),
        ("pref=64,=3", "'=3'"),
        ("pref=6x4", "'pref=6x4'"),
        ("pref=1.5", "'pref=1.5'"),
        ("rating=-1", "'rating=-1'"),
        ("pref=1,pref=2", "'pref=2'"),
        ("pref=1,,stop=2", "''"),
        ("", "''"),
    ],
)
def test_parse_counts_names_the_bad_piece(spec, piece):
    with pytest.raises(ValueError, match=f"bad feedback count {piece}"):
        parse_counts(spec)


def test_parse_counts_unknown_type():
    with pytest.raises(ValueError, match=r"'ranking=4'.*unknown feedback type"):
        parse_counts("pref=1,ranking=4", known=["pref", "demo"])


# ------------------------------------------------------------------------------------------ query files


def test_unanswered_queries_are_refused_by_name_unless_allowed(fresh, tmp_path):
    """A query file (``answered`` False on some items) is refused with the count and the items; allowed explicitly it
    saves and loads, and once every item is answered it is ordinary data."""
    n = fresh["pref"].sizes["item"]
    flag = np.ones(n, dtype=bool)
    flag[[5, 9]] = False
    fresh["pref"] = fresh["pref"].assign(answered=("item", flag))
    err = raises_at(fresh, "pref", "answered", 5, match=f"2 of {n} queries are unanswered (items 5, 9)")
    assert "'preference'" in str(err)  # names the label to fill in
    path = tmp_path / "queries.nc"
    with pytest.raises(FeedbackDataError, match="unanswered"):
        save_feedback(path, fresh)
    assert not path.exists()
    save_feedback(path, fresh, allow_unanswered=True)
    with pytest.raises(FeedbackDataError, match="items 5, 9"):
        load_feedback(path)
    back = load_feedback(path, allow_unanswered=True)
    assert back["pref"]["answered"].dtype == bool and list(np.flatnonzero(~back["pref"]["answered"].values)) == [5, 9]
    back["pref"]["answered"].values[:] = True
    validate_feedback(back)


def test_an_answered_flag_of_the_wrong_kind_is_named(fresh):
    fresh["rating"] = fresh["rating"].assign(answered=("item", np.ones(fresh["rating"].sizes["item"], dtype=int)))
    raises_at(fresh, "rating", "answered", None, match="must be a bool variable")
