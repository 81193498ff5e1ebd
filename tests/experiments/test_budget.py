"""Subsets, the REFERENCE §3 allocations, and the equal-budget split (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mavrl_ppl.experiments.budget import (
    ALL_SUBSETS,
    FEEDBACK_TYPES,
    allocate_budget,
    default_budget,
    default_caps,
    fixed_counts,
    parse_subset,
    split_budget,
    subset_name,
)


def test_the_eleven_subsets():
    assert len(ALL_SUBSETS) == 11 == len(set(ALL_SUBSETS))
    assert ALL_SUBSETS[:4] == FEEDBACK_TYPES and ALL_SUBSETS[-1] == "all"
    assert sum(len(parse_subset(s)) == 2 for s in ALL_SUBSETS) == 6
    assert {frozenset(parse_subset(s)) for s in ALL_SUBSETS} == {
        frozenset(c) for c in ([t] for t in FEEDBACK_TYPES)
    } | {frozenset((a, b)) for i, a in enumerate(FEEDBACK_TYPES) for b in FEEDBACK_TYPES[i + 1:]} | {
        frozenset(FEEDBACK_TYPES)}


@pytest.mark.parametrize(("spec", "name"), [
    ("pdrs", "all"), ("all", "all"), ("pref_demo_rating_stop", "all"), ("srdp", "all"), ("p", "pref"),
    ("sr", "rating_stop"), ("rating_stop", "rating_stop"), ("stop+rating", "rating_stop"), ("pd", "pref_demo"),
    ("demo", "demo"), ("Stop", "stop"),
])
def test_subset_names(spec, name):
    assert subset_name(spec) == name
    assert subset_name(name) == name  # canonical names parse to themselves


@pytest.mark.parametrize("spec", ["", "x", "pp", "pref_pref", "pref_bogus", "pdx"])
def test_bad_subsets(spec):
    with pytest.raises(ValueError, match="bad subset"):
        parse_subset(spec)


def test_reference_allocations():
    assert fixed_counts("grid_trap", "all") == {"pref": 64, "demo": 1, "rating": 64, "stop": 256}
    assert fixed_counts("chain", "rs") == {"rating": 64, "stop": 256}
    assert fixed_counts("CartPole-v1", "pd") == {"pref": 256, "demo": 4}
    assert fixed_counts("Acrobot-v1", "stop") == {"stop": 64}
    assert fixed_counts("LunarLander-v3", "all") == {"pref": 256, "demo": 32, "rating": 256, "stop": 256}
    assert [default_budget(e) for e in ("grid_cliff", "CartPole-v1", "Acrobot-v1", "LunarLander-v3")] == [
        64, 64, 64, 256]
    assert default_caps("grid_sparse") == {"demo": 16} and default_caps("LunarLander-v3") == {"demo": 32}
    with pytest.raises(ValueError, match="no reference allocation"):
        fixed_counts("MountainCar-v0", "pref")


def test_allocation_examples():
    # equal shares of 64 over 3 types: 21.33 each -> largest remainder gives the extra unit to the first listed
    assert allocate_budget(64, {"pref": 1, "rating": 1, "stop": 1}) == {"pref": 22, "rating": 21, "stop": 21}
    # the demo cap binds and its excess goes to the others in proportion
    assert allocate_budget(64, {"pref": 1, "demo": 6, "stop": 1}, {"demo": 16}) == {"pref": 24, "demo": 16,
                                                                                      "stop": 24}
    # a lone capped type cannot spend the budget: it sits at its cap
    assert allocate_budget(64, {"demo": 1}, {"demo": 16}) == {"demo": 16}
    # zero weight still gets the minimum item
    assert allocate_budget(10, {"pref": 0, "stop": 1}) == {"pref": 1, "stop": 9}
    with pytest.raises(ValueError, match="below"):
        allocate_budget(3, {t: 1 for t in FEEDBACK_TYPES})
    with pytest.raises(ValueError, match="non-negative"):
        allocate_budget(10, {"pref": -1.0, "stop": 1})


subsets = st.lists(st.sampled_from(FEEDBACK_TYPES), min_size=1, max_size=4, unique=True)


@settings(max_examples=300, deadline=None)
@given(types=subsets, budget=st.integers(4, 2000), seed=st.integers(0, 2**32 - 1),
       cap=st.one_of(st.none(), st.integers(1, 300)), alpha=st.sampled_from([0.05, 0.3, 1.0, 5.0]))
def test_split_sums_to_budget_and_respects_caps(types, budget, seed, cap, alpha):
    caps = {} if cap is None else {"demo": cap}
    counts = split_budget(budget, types, np.random.default_rng(seed), caps, concentration=alpha)
    assert list(counts)[:4] == list(FEEDBACK_TYPES)
    assert all(isinstance(v, int) and v >= 0 for v in counts.values())
    assert all(counts[t] == 0 for t in FEEDBACK_TYPES if t not in types)  # inactive types get nothing
    assert all(counts[t] >= 1 for t in types)  # every active type has data
    if "demo" in caps and "demo" in types:
        assert counts["demo"] <= caps["demo"]
    room = sum(caps.get(t, budget) for t in types)
    assert sum(counts.values()) == min(budget, room)  # exactly the budget whenever the caps allow it


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=4),
       budget=st.integers(4, 5000), caps=st.lists(st.one_of(st.none(), st.integers(1, 500)), min_size=4, max_size=4))
def test_allocation_is_proportional_within_one_item(weights, budget, caps):
    names = list(FEEDBACK_TYPES[: len(weights)])
    cap_map = {n: c for n, c in zip(names, caps, strict=False) if c is not None}
    counts = allocate_budget(budget, dict(zip(names, weights, strict=True)), cap_map, minimum=0)
    assert sum(counts.values()) == min(budget, sum(cap_map.get(n, budget) for n in names))
    assert all(0 <= counts[n] <= cap_map.get(n, budget) for n in names)
    if not cap_map and sum(weights) > 0:  # uncapped: largest remainder is within one item of the exact share
        exact = np.array(weights) / sum(weights) * budget
        assert np.all(np.abs(np.array([counts[n] for n in names]) - exact) < 1.0 + 1e-9)


def test_split_is_determined_by_the_rng():
    a = split_budget(64, ["pref", "demo", "stop"], np.random.default_rng(7), {"demo": 16})
    b = split_budget(64, ["pref", "demo", "stop"], np.random.default_rng(7), {"demo": 16})
    c = split_budget(64, ["pref", "demo", "stop"], np.random.default_rng(8), {"demo": 16})
    assert a == b and a != c
