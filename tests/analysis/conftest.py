"""Fixtures shared by the analysis tests."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, simulate_feedback


@pytest.fixture(scope="module")
def problem():
    """A 4x4 grid with a random move now and then, all four types (two demonstrations), stop lapse 0.05, the
    preference rationality inferred; posterior-like draws around the true reward: ``(mdp, feedback, reward,
    nuisance)``, the draws ``(chain 2, draw 40, ...)``."""
    mdp = make_tabular("grid_trap", size=4, p_rand=0.1)
    feedback = simulate_feedback(TabularTeacher(mdp), {"pref": 12, "demo": 2, "rating": 12, "stop": 16},
                                 np.random.default_rng(0), {"stop": {"lapse": 0.05}})
    feedback["pref"] = feedback["pref"].copy()
    del feedback["pref"].attrs["beta"]
    rng = np.random.default_rng(1)
    draws = 40
    reward = mdp.group_rewards + 0.7 * rng.normal(size=(2, draws, mdp.num_states))
    nuisance = {"pref_beta": np.exp(0.5 * rng.normal(size=(2, draws))),
                "rating_cutpoints": np.sort(2.0 * rng.normal(size=(2, draws, 4)), axis=-1)}
    return mdp, feedback, reward, nuisance
