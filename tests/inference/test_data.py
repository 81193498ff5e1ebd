"""Train/validation splits and the minibatch sources, tested directly (not through a fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mavrl_ppl.inference.data import CyclingBatches, Minibatches, split_feedback, split_items, take, to_tensors


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


@pytest.fixture(scope="module")
def feedback():
    from mavrl_ppl.envs import make_tabular
    from mavrl_ppl.feedback import TabularTeacher
    from mavrl_ppl.feedback.data import simulate_feedback

    mdp = make_tabular("grid_trap", size=4)
    return simulate_feedback(TabularTeacher(mdp), {"pref": 10, "demo": 1, "stop": 6}, np.random.default_rng(0))


def test_split_feedback_holds_out_per_type_and_skips_types_without_validation_items(feedback):
    split = split_feedback(feedback, 0.2, np.random.default_rng(3))
    assert split.num_items() == {"pref": 8, "demo": 1, "stop": 5}
    assert set(split.held_out) == {"pref", "stop"}  # one demo episode stays whole in training
    assert {n: b["valid"].shape[0] for n, b in split.held_out.items()} == {"pref": 2, "stop": 1}
    # the same draws as split_items, type after type in the data's order
    rng = np.random.default_rng(3)
    for name in feedback:
        train_idx, val_idx = split_items(feedback[name].sizes["item"], 0.2, rng)
        whole = to_tensors(name, feedback[name])
        assert torch.equal(split.train[name]["obs"], whole["obs"][torch.from_numpy(train_idx)])
        if len(val_idx):
            assert torch.equal(split.held_out[name]["obs"], whole["obs"][torch.from_numpy(val_idx)])


def test_with_nothing_held_out_validation_scores_the_training_sets(feedback):
    split = split_feedback(feedback, 0.0, np.random.default_rng(0))
    assert split.held_out is split.train


def test_minibatches_give_each_type_its_items_with_their_indices(feedback):
    split = split_feedback(feedback, 0.0, np.random.default_rng(0))
    minibatches = Minibatches(split.train, 4, torch.Generator().manual_seed(0))
    for _ in range(3):
        batches = minibatches()
        assert list(batches) == list(feedback)
        for name, (indices, batch) in batches.items():
            expected = take(split.train[name], indices)
            assert all(torch.equal(batch[k], v) for k, v in expected.items() if isinstance(v, torch.Tensor))
        assert batches["demo"][1] is split.train["demo"]  # a whole set passes without a copy
        assert len(batches["pref"][0]) == 4
