"""Control envs: settings, vectorised rollouts and segment cutting, and the control teacher's feedback."""

from __future__ import annotations

import numpy as np
import pytest

from mavrl_ppl.envs.allocation import paper_allocation
from mavrl_ppl.envs.control import (
    CONTROL_ENVS,
    boltzmann_policy_fn,
    cut_segments,
    first_episodes,
    is_control_env,
    mixture_policy,
    normalized_score,
    rollout_stream,
    visited_points,
)
from mavrl_ppl.feedback.control_teacher import ControlTeacher
from mavrl_ppl.feedback.data import simulate_feedback, validate_feedback
from mavrl_ppl.feedback.segments import segment_means


def upright_q(obs: np.ndarray) -> np.ndarray:
    """A stand-in CartPole expert: push towards where the pole falls (keeps it up for hundreds of steps)."""
    s = np.asarray(obs)[..., 2] + 0.5 * np.asarray(obs)[..., 3]
    return 10.0 * np.stack([-s, s], axis=-1)


def test_settings_and_normalisers():
    assert is_control_env("CartPole-v1") and is_control_env("LunarLander-v3") and not is_control_env("grid_trap")
    assert paper_allocation("CartPole-v1") == "pref=256,demo=4,rating=256,stop=64"
    assert paper_allocation("LunarLander-v3") == "pref=256,demo=32,rating=256,stop=256"
    for name, spec in CONTROL_ENVS.items():
        assert spec.gamma == 0.999 and spec.segment_length == 32
        assert normalized_score(name, spec.uniform_return) == pytest.approx(0.0)
        assert normalized_score(name, spec.optimal_return) == pytest.approx(100.0)
    assert normalized_score("CartPole-v1", 260.939) == pytest.approx(50.0, abs=1e-3)


def test_stream_records_episode_ends_and_next_steps():
    stream = rollout_stream("CartPole-v1", 3, 80, boltzmann_policy_fn(None, 0.0, 2), np.random.default_rng(0))
    assert stream["obs"].shape == (3, 80, 4) and stream["action"].shape == (3, 80)
    ends = stream["terminated"] | stream["truncated"]
    assert stream["terminated"].any()  # random CartPole episodes last ~20 steps
    # Within an episode the next observation/action are the following step's; at an end they are not.
    inside = ~ends[:, :-1]
    np.testing.assert_array_equal(stream["next_obs"][:, :-1][inside], stream["obs"][:, 1:][inside])
    np.testing.assert_array_equal(stream["next_action"][:, :-1][inside], stream["action"][:, 1:][inside])
    # The final observation of a pole that fell is outside the alive region (|angle| > 0.2095 or |x| > 2.4).
    final = stream["next_obs"][stream["terminated"]]
    assert ((np.abs(final[:, 2]) > 0.2095) | (np.abs(final[:, 0]) > 2.4)).all()
    np.testing.assert_array_equal(stream["reward"], 1.0)


def test_cut_segments_continue_terminations_as_absorbing():
    rng = np.random.default_rng(1)
    stream = rollout_stream("CartPole-v1", 4, 120, boltzmann_policy_fn(None, 0.0, 2), rng)
    seg = cut_segments(stream, (50, 2), 32, 2, rng)
    assert seg["obs"].shape == (50, 2, 32, 4) and seg["valid"].shape == (50, 2, 32)
    assert seg["valid"][..., 0].all() and not seg["terminal"].any()
    absorbing = seg["absorbing"]
    assert absorbing.any() and (~absorbing).any()
    # Absorbing steps come after the live ones, repeat one (fallen) observation and carry reward 0.
    first = np.argmax(absorbing, axis=-1)
    has = absorbing.any(-1)
    steps = np.arange(32)
    np.testing.assert_array_equal(absorbing[has], steps[None, :] >= first[has][:, None])
    fallen = seg["obs"][absorbing]
    assert ((np.abs(fallen[:, 2]) > 0.2095) | (np.abs(fallen[:, 0]) > 2.4)).all()
    np.testing.assert_array_equal(seg["reward"], np.where(absorbing, 0.0, 1.0))
    # The step that ends the episode leads into the absorbing observation.
    end = absorbing[..., 1:] & ~absorbing[..., :-1]
    np.testing.assert_array_equal(seg["next_obs"][..., :-1, :][end], seg["obs"][..., 1:, :][end])


def test_first_episodes_are_whole_padded_episodes():
    rng = np.random.default_rng(2)
    stream = rollout_stream("CartPole-v1", 5, 500, boltzmann_policy_fn(upright_q, 10.0, 2), rng, until_first_end=True)
    demo = first_episodes(stream)
    lengths = demo["valid"].sum(-1)
    assert demo["valid"].shape[1] == lengths.max()
    np.testing.assert_array_equal(demo["valid"], np.arange(lengths.max())[None, :] < lengths[:, None])
    assert lengths.min() > 100  # the stand-in expert balances far longer than a random policy
    assert not demo["absorbing"].any() and np.isfinite(demo["obs"]).all()


@pytest.fixture(scope="module")
def cartpole_feedback():
    teacher = ControlTeacher("CartPole-v1", upright_q)
    counts = {"pref": 24, "demo": 2, "rating": 20, "stop": 16}
    settings = {name: {"segment_length": 32} for name in ("pref", "rating", "stop")}
    return teacher, simulate_feedback(teacher, counts, np.random.default_rng(0), settings)


def test_simulated_control_feedback_has_declared_shapes_and_validates(cartpole_feedback):
    _, feedback = cartpole_feedback
    validate_feedback(feedback)
    assert dict(feedback["pref"].sizes) == {"item": 24, "side": 2, "step": 32, "obs_dim": 4}
    assert feedback["rating"].sizes["item"] == 20 and feedback["rating"].sizes["step"] == 32
    assert feedback["stop"].sizes["item"] == 16 and feedback["stop"].sizes["step"] == 32
    assert feedback["demo"].sizes["item"] == 2 and feedback["demo"].sizes["step"] <= 500
    for ds in feedback.values():
        assert "state" not in ds and ds.attrs["gamma"] == 0.999 and ds.attrs["num_actions"] == 2
        assert ds["obs"].dtype == np.float32 and ds["action"].dtype == np.int64
    assert feedback["pref"].attrs["beta"] == 5.0 and feedback["demo"].attrs["beta"] == 10.0


def test_preferences_follow_time_alive(cartpole_feedback):
    """Under the absorbing continuation a segment's true mean reward is its share of live steps."""
    _, feedback = cartpole_feedback
    ds = feedback["pref"]
    alive = segment_means((~ds["absorbing"].values).astype(float), ds["valid"].values)
    gap = alive[:, 0] - alive[:, 1]
    y = ds["preference"].values
    assert np.corrcoef(gap, y)[0, 1] > 0.3


def test_teacher_reward_and_q(cartpole_feedback):
    teacher, _ = cartpole_feedback
    seg = teacher.segments((30,), 32, np.random.default_rng(3))
    np.testing.assert_array_equal(teacher.reward(seg), np.where(seg["absorbing"], 0.0, 1.0))
    q = teacher.q(seg)
    assert q.shape == (30, 32, 2)
    np.testing.assert_array_equal(q[seg["absorbing"]], 0.0)
    np.testing.assert_allclose(q[~seg["absorbing"]], upright_q(seg["obs"][~seg["absorbing"]]))
    with pytest.raises(ValueError, match="not produced by this teacher"):
        teacher.reward(dict(seg))


def test_simulation_is_deterministic():
    teacher = ControlTeacher("CartPole-v1", upright_q, stream_envs=4, stream_steps=64)
    settings = {"pref": {"segment_length": 32}}
    a = simulate_feedback(teacher, {"pref": 8}, np.random.default_rng(7), settings)["pref"]
    b = simulate_feedback(teacher, {"pref": 8}, np.random.default_rng(7), settings)["pref"]
    c = simulate_feedback(teacher, {"pref": 8}, np.random.default_rng(8), settings)["pref"]
    assert a.identical(b) and not a["obs"].equals(c["obs"])


def test_visited_points_sample_valid_steps(cartpole_feedback):
    _, feedback = cartpole_feedback
    obs, action, absorbing = visited_points(feedback, 300, np.random.default_rng(0))
    assert obs.shape == (300, 4) and action.shape == (300,) and absorbing.shape == (300,)
    assert set(np.unique(action)) <= {0, 1} and absorbing.any() and (~absorbing).any()
    again = visited_points(feedback, 300, np.random.default_rng(0))
    np.testing.assert_array_equal(obs, again[0])


def test_mixed_behaviour_policies_alternate_over_envs():
    always = [lambda obs, rng, k=k: np.full(len(obs), k) for k in (0, 1, 2)]
    actions = mixture_policy(always)(np.zeros((7, 3)), np.random.default_rng(0))
    np.testing.assert_array_equal(actions, [0, 1, 2, 0, 1, 2, 0])
    teacher = ControlTeacher("Acrobot-v1", lambda obs: np.zeros((*np.shape(obs)[:-1], 3)))
    assert teacher.behaviour_beta == (0.0, 1.0) and teacher.attrs["behaviour_beta"] == [0.0, 1.0]
    assert ControlTeacher("CartPole-v1", upright_q).behaviour_beta == (0.0, 1.0)
    assert CONTROL_ENVS["LunarLander-v3"].behaviour_beta == (0.0,)  # the paper's uniform queries
