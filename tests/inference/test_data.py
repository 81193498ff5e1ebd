"""Train/validation splits and the cycling minibatches, tested directly (not through a fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mavrl_ppl.inference.data import CyclingBatches, split_items


def test_split_holds_out_the_floor_of_the_fraction_and_covers_every_item_once():
    train, val = split_items(23, 0.2, np.random.default_rng(0))
    assert len(val) == 4 and len(train) == 19  # floor(0.2 * 23)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(23))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, no repeats


def test_split_is_a_function_of_the_generator_state():
    first = split_items(50, 0.3, np.random.default_rng(7))
    again = split_items(50, 0.3, np.random.default_rng(7))
    other = split_items(50, 0.3, np.random.default_rng(8))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("num_items", [1, 4])
def test_small_sets_stay_whole_in_training(num_items):
    train, val = split_items(num_items, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(train, np.arange(num_items))
    assert len(val) == 0


def test_a_zero_fraction_holds_nothing_out():
    train, val = split_items(30, 0.0, np.random.default_rng(0))
    assert len(train) == 30 and len(val) == 0


def _epoch(batches: CyclingBatches, name: str, steps: int) -> list[torch.Tensor]:
    return [batches.next(name) for _ in range(steps)]


def test_each_item_appears_once_per_epoch():
    batches = CyclingBatches({"pref": 12, "stop": 7}, 4, torch.Generator().manual_seed(0))
    for _ in range(3):  # three epochs of "pref": 3 batches of 4 each
        drawn = _epoch(batches, "pref", 3)
        assert all(len(b) == 4 and torch.all(b[1:] > b[:-1]) for b in drawn)  # sorted within a batch
        assert torch.equal(torch.sort(torch.cat(drawn)).values, torch.arange(12))
    # 7 items in batches of 4: one full batch per epoch; the 3 left over are dropped, not carried over.
    seen = torch.cat(_epoch(batches, "stop", 1))
    assert len(seen) == 4 and len(set(seen.tolist())) == 4


def test_epochs_are_reshuffled():
    batches = CyclingBatches({"pref": 12}, 4, torch.Generator().manual_seed(0))
    epochs = [torch.cat(_epoch(batches, "pref", 3)) for _ in range(4)]
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])


def test_a_set_smaller_than_the_batch_comes_whole_without_using_the_generator():
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    batches = CyclingBatches({"demo": 3}, 8, generator)
    for _ in range(3):
        assert torch.equal(batches.next("demo"), torch.arange(3))
    assert torch.equal(generator.get_state(), before)


def test_state_round_trip_resumes_the_identical_sequence():
    sizes = {"pref": 10, "rating": 9}
    batches = CyclingBatches(sizes, 3, torch.Generator().manual_seed(5))
    for _ in range(4):  # part-way into an epoch of each type
        batches.next("pref")
        batches.next("rating")
    state = batches.state()
    expected = [(batches.next("pref"), batches.next("rating")) for _ in range(10)]
    # a fresh object, seeded differently: only the loaded state decides what comes next
    resumed = CyclingBatches(sizes, 3, torch.Generator().manual_seed(99))
    resumed.load_state(state)
    got = [(resumed.next("pref"), resumed.next("rating")) for _ in range(10)]
    for (a_pref, a_rating), (b_pref, b_rating) in zip(expected, got, strict=True):
        assert torch.equal(a_pref, b_pref) and torch.equal(a_rating, b_rating)
    fresh = CyclingBatches(sizes, 3, torch.Generator().manual_seed(99))
    assert any(not torch.equal(fresh.next("pref"), e[0]) for e in expected[:3])
