"""Control environments (CartPole-v1, Acrobot-v1, LunarLander-v3): settings and vectorised rollouts.

Settings (REFERENCE §3, §4): gamma 0.999, segments of 32 steps, the paper's fixed allocation, and the normalisers of
the true undiscounted return.

Rollouts run on a gymnasium vector env in same-step autoreset mode, one Python step per environment step for all
envs at once (the loop over time is inherent to a simulator; everything else is array code):

- :func:`rollout_stream` runs ``M`` envs for ``L`` steps under a policy, across episode boundaries.
- :func:`cut_segments` cuts windows of ``T`` steps at uniformly random positions of such streams. A window stays
  within the episode it starts in. An episode that ends by TERMINATION continues as an absorbing state: the final
  observation, every action, true reward 0 (the continuing view the tabular envs take of their goal; it makes
  "the pole fell" / "the goal was reached" visible to segment means). Those steps are valid and flagged in the
  extra variable ``absorbing``. An episode cut by TRUNCATION (time limit) ends the window's valid steps. No
  transition is marked ``terminal``: ``Q(s', .)`` of the absorbing state is the network's own.
- :func:`first_episodes` takes each env's first whole episode (demonstrations), padded behind ``valid``.

Importing this module does not import gymnasium (it is imported on first use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

#: ``policy(obs (M, obs_dim), rng) -> actions (M,)``.
Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class ControlEnvSpec:
    """One control env's settings.

    Attributes:
        env_id: gymnasium id.
        allocation: the paper's fixed allocation (pref pairs / demo episodes / rating segments / stop segments).
        optimal_return: normaliser, the optimal mean undiscounted return (REFERENCE §4).
        uniform_return: normaliser, the uniform-random policy's mean undiscounted return.
        gamma: discount of the reward model (Bellman consistency).
        segment_length: steps per queried segment.
        stream_envs: parallel envs of a behaviour stream.
        stream_steps: steps of each behaviour stream (segments are cut from it).
        max_episode_steps: the env's time limit (demonstrations run this long at most).
        behaviour_beta: behaviour policies of queried segments, mixed over a stream's envs (0 = uniform random, the
            paper's choice; a positive beta is ``softmax(beta * Q_expert)``).
    """

    env_id: str
    allocation: Mapping[str, int]
    optimal_return: float
    uniform_return: float
    gamma: float = 0.999
    segment_length: int = 32
    stream_envs: int = 32
    stream_steps: int = 256
    max_episode_steps: int = 500
    behaviour_beta: tuple[float, ...] = (0.0,)


CONTROL_ENVS: dict[str, ControlEnvSpec] = {
    # Uniform-random CartPole segments end by the pole falling after ~20 steps: on seeds 0-4 their observations span
    # only x in [-0.75, 1.6] of the track's [-2.4, 2.4], so the learned reward at the track's ends is the encoder's
    # extrapolation (seed 2's grew towards the left end and PPO drove the cart off the track: benchmarks/RESULTS.md).
    # The same mix as Acrobot's puts the track's end into the queries (x reaches -2.4 on seeds 0-2).
    "CartPole-v1": ControlEnvSpec("CartPole-v1", {"pref": 256, "demo": 4, "rating": 256, "stop": 64},
                                  optimal_return=500.0, uniform_return=21.878, stream_steps=256,
                                  behaviour_beta=(0.0, 1.0)),
    # Uniform-random Acrobot almost never reaches the goal (0.3 % of segment steps measured): every queried segment
    # then has the same true mean reward -1 and preferences and ratings carry no information. Half the stream's envs
    # act with softmax(1 * Q_expert) instead, so queries also show swings that reach the goal (4-5 % of steps).
    "Acrobot-v1": ControlEnvSpec("Acrobot-v1", {"pref": 256, "demo": 4, "rating": 256, "stop": 64},
                                 optimal_return=-82.44, uniform_return=-498.609, stream_steps=512,
                                 behaviour_beta=(0.0, 1.0)),
    "LunarLander-v3": ControlEnvSpec("LunarLander-v3", {"pref": 256, "demo": 32, "rating": 256, "stop": 256},
                                     optimal_return=200.0, uniform_return=-183.2, stream_steps=512,
                                     max_episode_steps=1000),
}


def is_control_env(name: str) -> bool:
    """True for the gymnasium control envs this package knows (:data:`CONTROL_ENVS`)."""
    return name in CONTROL_ENVS


def control_spec(name: str) -> ControlEnvSpec:
    """The settings of a control env; ``ValueError`` naming the known ones otherwise."""
    try:
        return CONTROL_ENVS[name]
    except KeyError:
        raise ValueError(f"unknown control env {name!r}; known: {', '.join(CONTROL_ENVS)}") from None


def normalized_score(name: str, mean_return: float) -> float:
    """``100 * (R - R_uniform) / (R_optimal - R_uniform)`` with REFERENCE §4's normalisers."""
    spec = control_spec(name)
    return 100.0 * (mean_return - spec.uniform_return) / (spec.optimal_return - spec.uniform_return)


def boltzmann_policy_fn(q_fn: Callable[[np.ndarray], np.ndarray] | None, beta: float, num_actions: int) -> Policy:
    """The control-env :data:`Policy` that samples ``softmax(beta * Q(obs, .))`` by Gumbel-max; ``beta = 0`` (or no
    ``q_fn``) is uniform random. (The tabular ``(S, A)`` softmax table is :func:`mavrl_ppl.planning.boltzmann_policy`.)

    Args:
        q_fn: ``(M, obs_dim) -> (M, A)`` action values.
        beta: rationality.
        num_actions: A.
    """

    def policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if beta == 0 or q_fn is None:
            return rng.integers(num_actions, size=len(obs))
        logits = beta * np.asarray(q_fn(obs), dtype=np.float64)
        return np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)

    return policy


def mixture_policy(policies: list[Policy]) -> Policy:
    """Env ``m`` of a stream acts with ``policies[m % len(policies)]`` (each policy sees only its envs' rows)."""

    def policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        owner = np.arange(len(obs)) % len(policies)
        actions = np.empty(len(obs), dtype=np.int64)
        for k, p in enumerate(policies):  # a loop over the (few) policies, not over items
            rows = owner == k
            if rows.any():
                actions[rows] = p(obs[rows], rng)
        return actions

    return policy


def rollout_stream(
    env_id: str,
    num_envs: int,
    num_steps: int,
    policy: Policy,
    rng: np.random.Generator,
    *,
    until_first_end: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``num_envs`` envs for ``num_steps`` steps (same-step autoreset: episodes follow one another).

    Args:
        env_id: gymnasium id.
        num_envs: M.
        num_steps: L.
        policy: acting policy; also supplies ``next_action`` (its action at ``next_obs``).
        rng: seeds the envs' resets and the policy's draws.
        until_first_end: stop early once every env has ended its first episode.

    Returns:
        Arrays of shape ``(M, L', ...)`` with ``L' <= L``: ``obs``, ``action``, ``reward`` (true), ``next_obs`` (the
        final observation at an episode's last step), ``next_action`` (the policy's action at ``next_obs``),
        ``terminated``, ``truncated``.
    """
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    try:
        obs, _ = envs.reset(seed=[int(s) for s in rng.integers(2**31 - 1, size=num_envs)])
        obs_dim = obs.shape[-1]
        out = {
            "obs": np.zeros((num_envs, num_steps, obs_dim), np.float32),
            "action": np.zeros((num_envs, num_steps), np.int64),
            "reward": np.zeros((num_envs, num_steps), np.float64),
            "next_obs": np.zeros((num_envs, num_steps, obs_dim), np.float32),
            "next_action": np.zeros((num_envs, num_steps), np.int64),
            "terminated": np.zeros((num_envs, num_steps), bool),
            "truncated": np.zeros((num_envs, num_steps), bool),
        }
        action = policy(obs, rng)
        finished = np.zeros(num_envs, bool)
        steps = num_steps
        for t in range(num_steps):  # environment steps: inherent; every env advances at once
            out["obs"][:, t], out["action"][:, t] = obs, action
            new_obs, reward, terminated, truncated, info = envs.step(action)
            ended = terminated | truncated
            next_obs = np.array(new_obs, dtype=np.float32)
            if ended.any():
                next_obs[ended] = np.stack(info["final_obs"][ended])
            next_action = policy(next_obs, rng)
            out["next_obs"][:, t], out["next_action"][:, t] = next_obs, next_action
            out["reward"][:, t], out["terminated"][:, t], out["truncated"][:, t] = reward, terminated, truncated
            action = next_action.copy()
            if ended.any():  # the ended envs restarted: act in their new first state
                action[ended] = policy(np.asarray(new_obs, np.float32)[ended], rng)
            obs = new_obs
            finished |= ended
            if until_first_end and finished.all():
                steps = t + 1
                break
    finally:
        envs.close()
    return {k: v[:, :steps] for k, v in out.items()}


def cut_segments(
    stream: Mapping[str, np.ndarray],
    shape: tuple[int, ...],
    length: int,
    num_actions: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Windows of ``length`` steps at uniformly random (env, start) positions of a stream, vectorised.

    Within a window, steps after its first episode's end are absorbing (termination: final observation, uniformly
    random actions, true reward 0, valid) or padding (truncation: invalid). See the module docstring.

    Returns:
        ``obs``, ``action``, ``next_obs``, ``next_action``, ``valid``, ``terminal`` (all False), ``absorbing`` and
        ``reward`` (true), each of leading shape ``(*shape, length)``.
    """
    num_envs, num_steps = stream["action"].shape
    if num_steps < length:
        raise ValueError(f"a stream of {num_steps} steps cannot hold segments of {length}")
    count = int(np.prod(shape))
    env = rng.integers(num_envs, size=count)[:, None]
    start = rng.integers(num_steps - length + 1, size=count)
    t = start[:, None] + np.arange(length)[None, :]  # (count, length)
    ends = (stream["terminated"] | stream["truncated"])[env, t]
    after = (np.cumsum(ends, axis=1) - ends) > 0  # steps after the window's first episode ended
    end_pos = np.argmax(ends, axis=1)  # first end in the window (0 if none; then `after` is all False)
    rows = np.arange(count)
    end_t = t[rows, end_pos]
    by_termination = stream["terminated"][env[:, 0], end_t]
    absorbing = after & by_termination[:, None]
    final_obs = stream["next_obs"][env[:, 0], end_t][:, None, :]  # (count, 1, obs_dim)
    random_action = rng.integers(num_actions, size=(count, length + 1))
    action = np.where(after, random_action[:, :-1], stream["action"][env, t])
    next_after = np.concatenate([after[:, 1:], (after[:, -1] | ends[:, -1])[:, None]], axis=1)
    next_action = np.where(next_after, np.concatenate([action[:, 1:], random_action[:, -1:]], axis=1),
                           stream["next_action"][env, t])
    out = {
        "obs": np.where(after[..., None], final_obs, stream["obs"][env, t]),
        "action": action,
        "next_obs": np.where(after[..., None], final_obs, stream["next_obs"][env, t]),
        "next_action": next_action,
        "valid": ~after | absorbing,
        "terminal": np.zeros((count, length), bool),
        "absorbing": absorbing,
        "reward": np.where(after, 0.0, stream["reward"][env, t]),
    }
    return {k: v.reshape(*shape, *v.shape[1:]) for k, v in out.items()}


def first_episodes(stream: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each env's first episode of a stream, padded (invalid, zeros) to the longest one.

    Returns:
        The segment variables plus ``absorbing`` (all False) and ``reward`` (true), leading shape ``(M, T)``.
    """
    ends = stream["terminated"] | stream["truncated"]
    num_envs, num_steps = ends.shape
    last = np.where(ends.any(1), np.argmax(ends, axis=1), num_steps - 1)
    length = int(last.max()) + 1
    valid = np.arange(length)[None, :] <= last[:, None]
    out = {
        "obs": np.where(valid[..., None], stream["obs"][:, :length], 0.0).astype(np.float32),
        "action": np.where(valid, stream["action"][:, :length], 0),
        "next_obs": np.where(valid[..., None], stream["next_obs"][:, :length], 0.0).astype(np.float32),
        "next_action": np.where(valid, stream["next_action"][:, :length], 0),
        "valid": valid,
        "terminal": np.zeros((num_envs, length), bool),
        "absorbing": np.zeros((num_envs, length), bool),
        "reward": np.where(valid, stream["reward"][:, :length], 0.0),
    }
    return out


def visited_points(
    feedback: Mapping[str, object], count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed sample of visited (obs, action) points: valid steps of every feedback type, drawn without replacement.

    Args:
        feedback: type name -> ``xarray.Dataset`` (DESIGN §2).
        count: points wanted (fewer if the data hold fewer valid steps).
        rng: the draw.

    Returns:
        ``obs (P, obs_dim)``, ``action (P,)``, ``absorbing (P,)`` (False where the data have no such variable).
    """
    obs, action, absorbing = [], [], []
    for ds in feedback.values():  # a loop over the (at most four) feedback types
        valid = ds["valid"].values
        obs.append(ds["obs"].values[valid])
        action.append(ds["action"].values[valid])
        flag = ds["absorbing"].values[valid] if "absorbing" in ds else np.zeros(int(valid.sum()), bool)
        absorbing.append(flag)
    obs_all, action_all, abs_all = np.concatenate(obs), np.concatenate(action), np.concatenate(absorbing)
    pick = np.sort(rng.choice(len(action_all), size=min(count, len(action_all)), replace=False))
    return obs_all[pick].astype(np.float32), action_all[pick].astype(np.int64), abs_all[pick]
