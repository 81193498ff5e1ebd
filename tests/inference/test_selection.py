"""Which state a fit returns: the latest validation pass not distinguishable from the held-out minimum."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from mavrl_ppl.inference.training import SELECT_STANDARD_ERRORS, Best


@pytest.fixture(autouse=True)
def one_parameter():
    """``Best`` snapshots Pyro's param store; a parameter whose value tells which pass was kept."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def at_pass(best: Best, items: list[float], step: int) -> Best:
    pyro.get_param_store()["marker"] = torch.tensor(float(step))
    return best.after(torch.tensor(items, dtype=torch.float64), step)


def kept(best: Best) -> tuple[int, float]:
    return best.step, float(best.params["marker"])


def start() -> Best:
    return Best(math.inf, 0, 0, {})


def test_a_later_pass_within_the_noise_of_the_minimum_is_kept_and_patience_still_counts():
    # Differences +0.1, -0.1, +0.3, -0.1: mean 0.05, paired SE = sd / 2 = 0.1: 0.5 SE worse, well inside 2 SE.
    best = at_pass(start(), [1.0, 1.0, 1.0, 1.0], 20)
    best = at_pass(best, [1.1, 0.9, 1.3, 0.9], 40)
    assert kept(best) == (40, 40.0)
    assert best.loss == pytest.approx(1.0) and best.stale == 1  # the minimum and its patience are the first pass's


def test_a_pass_clearly_worse_than_the_minimum_is_not_kept():
    # Every item 0.5 worse give or take 0.01: the mean difference is ~100 standard errors.
    best = at_pass(start(), [1.0, 1.0, 1.0, 1.0], 20)
    best = at_pass(best, [1.5, 1.51, 1.49, 1.5], 40)
    assert kept(best) == (20, 20.0) and best.stale == 1


def test_the_threshold_is_two_paired_standard_errors():
    # Differences d, d, d + 2e, d - 2e: sd = e * sqrt(8/3), SE = sd / 2. Put the mean just each side of 2 SE.
    assert SELECT_STANDARD_ERRORS == 2.0
    e = 0.1
    se = e * math.sqrt(8 / 3) / 2
    for mean, expect in ((2 * se * 0.99, 40), (2 * se * 1.01, 20)):
        best = at_pass(start(), [1.0, 1.0, 1.0, 1.0], 20)
        best = at_pass(best, [1 + mean, 1 + mean, 1 + mean + 2 * e, 1 + mean - 2 * e], 40)
        assert best.step == expect, mean


def test_a_new_minimum_is_kept_and_resets_patience_and_later_passes_compare_with_it():
    best = at_pass(start(), [1.0, 1.0, 1.0], 20)
    best = at_pass(best, [0.5, 0.5, 0.5], 40)
    assert kept(best) == (40, 40.0) and best.stale == 0 and best.loss == pytest.approx(0.5)
    best = at_pass(best, [0.9, 0.9, 0.91], 60)  # fine against step 20's losses, clearly worse than the new minimum
    assert kept(best) == (40, 40.0) and best.stale == 1


def test_a_single_held_out_item_keeps_the_latest_finite_pass():
    best = at_pass(start(), [1.0], 20)
    best = at_pass(best, [3.0], 40)  # no standard error from one item: the passes cannot be told apart
    assert kept(best) == (40, 40.0)
    best = at_pass(best, [math.inf], 60)
    assert kept(best) == (40, 40.0) and best.stale == 2
