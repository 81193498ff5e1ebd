"""The grid worlds and the chain of REFERENCE §2, as exact :class:`TabularMDP` objects.

Grid states are ``s = row * N + col`` with row 0 at the top; the reward depends on the state being left,
``R(s, a, s') = R(s)``, so every grid has one reward parameter per state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mavrl_ppl.envs.tabular import TabularMDP

GRID_ACTIONS = ("RIGHT", "UP", "LEFT", "DOWN", "STAY")
_MOVES = np.array([(0, 1), (-1, 0), (0, -1), (1, 0), (0, 0)])


def grid_transitions(n: int, p_rand: float = 0.0) -> np.ndarray:
    """``P[s, a, s']`` of an ``n x n`` grid: the intended move w.p. ``1 - p_rand``, each other move w.p.
    ``p_rand / 4``; a move off the grid stays in place."""
    if not 0.0 <= p_rand <= 1.0:
        raise ValueError(f"p_rand must lie in [0, 1], got {p_rand}")
    rows, cols = np.divmod(np.arange(n * n), n)
    target_rows = np.clip(rows[:, None] + _MOVES[None, :, 0], 0, n - 1)
    target_cols = np.clip(cols[:, None] + _MOVES[None, :, 1], 0, n - 1)
    deterministic = np.zeros((n * n, 5, n * n))
    np.put_along_axis(deterministic, (target_rows * n + target_cols)[..., None], 1.0, axis=-1)
    mix = np.full((5, 5), p_rand / 4.0)
    np.fill_diagonal(mix, 1.0 - p_rand)
    return np.einsum("ab,sbt->sat", mix, deterministic)


def sparse_map(n: int) -> np.ndarray:
    m = np.full((n, n), -0.1)
    m[n - 1, n - 1] = 1.0
    return m


def cliff_map(n: int, bottom: float = -4.0) -> np.ndarray:
    m = np.zeros((n, n))
    m[0, 1:] = -1.0
    m[n - 1, : n - 1] = bottom
    m[n - 1, n - 1] = 4.0
    return m


def trap_map(n: int) -> np.ndarray:
    """Goal +1 and four 2x2 blocks of -4; the blocks sit at rows/cols {2,3} and {6,7} on the paper's 10x10
    grid and are scaled to the same relative places on other sizes."""
    m = np.zeros((n, n))
    for start in (round(0.2 * n), round(0.6 * n)):
        for start_col in (round(0.2 * n), round(0.6 * n)):
            m[start : start + 2, start_col : start_col + 2] = -4.0
    m[n - 1, n - 1] = 1.0
    return m


def center_map(n: int) -> np.ndarray:
    """Sparse with the goal at the centre (EPIC test reward)."""
    m = np.zeros((n, n))
    m[n // 2, n // 2] = 1.0
    return m


def penalty_map(n: int) -> np.ndarray:
    """A penalty of -1 at the goal cell (N-1, N-1) and 0 elsewhere (EPIC test reward; the negation of sparse
    up to a constant, which is what Gleave et al.'s sparse-penalty distance of 1.0 requires)."""
    m = np.zeros((n, n))
    m[n - 1, n - 1] = -1.0
    return m


def path_map(n: int) -> np.ndarray:
    """Cliff with the bottom row at -1 instead of -4 (EPIC test reward)."""
    return cliff_map(n, bottom=-1.0)


GRID_MAPS: dict[str, Callable[[int], np.ndarray]] = {
    "sparse": sparse_map,
    "cliff": cliff_map,
    "trap": trap_map,
    "center": center_map,
    "penalty": penalty_map,
    "path": path_map,
}


def grid_from_rewards(
    reward_map: np.ndarray,
    *,
    p_rand: float = 0.0,
    gamma: float = 0.95,
    name: str = "grid_custom",
) -> TabularMDP:
    """A grid world whose state rewards are a user's ``N x N`` array (start top-left, goal bottom-right)."""
    reward_map = np.asarray(reward_map, dtype=np.float64)
    if reward_map.ndim != 2 or reward_map.shape[0] != reward_map.shape[1]:
        raise ValueError(f"reward_map must be a square N x N array, got shape {reward_map.shape}")
    if not np.all(np.isfinite(reward_map)):
        raise ValueError("reward_map holds NaN or inf")
    n = reward_map.shape[0]
    S = n * n
    transitions = grid_transitions(n, p_rand)
    groups = np.broadcast_to(np.arange(S)[:, None, None], (S, 5, S)).copy()
    state_rewards = reward_map.reshape(-1)
    initial = np.zeros(S)
    initial[0] = 1.0
    return TabularMDP(
        name=name,
        transitions=transitions,
        rewards=state_rewards[groups],
        initial=initial,
        gamma=gamma,
        reward_groups=groups,
        group_rewards=state_rewards.copy(),
        goal_states=(S - 1,),
        grid_shape=(n, n),
        action_names=GRID_ACTIONS,
        settings={"size": n, "p_rand": p_rand, "gamma": gamma},
    )


def manhattan_potential(n: int) -> np.ndarray:
    """``phi(s) = -(Manhattan distance from s to the goal)``: the potential that shapes sparse into dense."""
    rows, cols = np.divmod(np.arange(n * n), n)
    return -((n - 1 - rows) + (n - 1 - cols)).astype(np.float64)


def shape_rewards(rewards: np.ndarray, potential: np.ndarray, gamma: float) -> np.ndarray:
    """Potential-based shaping ``R'(s, a, s') = R(s, a, s') + gamma * phi(s') - phi(s)`` (Ng et al. 1999)."""
    return rewards + gamma * potential[None, None, :] - potential[:, None, None]


def make_grid(kind: str, size: int = 10, *, p_rand: float = 0.0, gamma: float = 0.95) -> TabularMDP:
    """One of the named grids: ``sparse``, ``cliff``, ``trap`` (the paper's), ``center``, ``penalty``,
    ``path`` and ``dense`` (sparse shaped by :func:`manhattan_potential`; its reward depends on ``s'`` so it
    has no group rewards)."""
    if kind == "dense":
        base = make_grid("sparse", size, p_rand=p_rand, gamma=gamma)
        shaped = shape_rewards(base.rewards, manhattan_potential(size), gamma)
        return TabularMDP(**{**base.__dict__, "name": "grid_dense", "rewards": shaped, "group_rewards": None})
    if kind not in GRID_MAPS:
        raise ValueError(f"unknown grid {kind!r}; known: {sorted([*GRID_MAPS, 'dense'])}")
    mdp = grid_from_rewards(GRID_MAPS[kind](size), p_rand=p_rand, gamma=gamma, name=f"grid_{kind}")
    return mdp


def make_chain(length: int = 5, *, gamma: float = 0.9) -> TabularMDP:
    """States ``0..length-1``, actions FORWARD / STAY, reward 1 for leaving the last state, start at 0."""
    if length < 2:
        raise ValueError(f"a chain needs at least 2 states, got {length}")
    S = length
    transitions = np.zeros((S, 2, S))
    transitions[np.arange(S), 0, np.minimum(np.arange(S) + 1, S - 1)] = 1.0
    transitions[np.arange(S), 1, np.arange(S)] = 1.0
    state_rewards = np.zeros(S)
    state_rewards[-1] = 1.0
    groups = np.broadcast_to(np.arange(S)[:, None, None], (S, 2, S)).copy()
    initial = np.zeros(S)
    initial[0] = 1.0
    return TabularMDP(
        name="chain",
        transitions=transitions,
        rewards=state_rewards[groups],
        initial=initial,
        gamma=gamma,
        reward_groups=groups,
        group_rewards=state_rewards,
        goal_states=(S - 1,),
        grid_shape=(1, S),
        action_names=("FORWARD", "STAY"),
        settings={"size": length, "gamma": gamma},
    )


def make_tabular(name: str, *, size: int | None = None, p_rand: float = 0.0, gamma: float | None = None) -> TabularMDP:
    """Build a tabular env by registry name: ``grid_<kind>`` (default 10x10, gamma 0.95) or ``chain``."""
    if name.startswith("grid_") and name.removeprefix("grid_") in [*GRID_MAPS, "dense"]:
        kind = name.removeprefix("grid_")
        return make_grid(kind, size or 10, p_rand=p_rand, gamma=0.95 if gamma is None else gamma)
    if name == "chain":
        return make_chain(size or 5, gamma=0.9 if gamma is None else gamma)
    raise ValueError(f"unknown tabular env {name!r}; known: grid_<{'|'.join([*GRID_MAPS, 'dense'])}>, chain")


def tabular_shape(name: str, size: int | None = None) -> tuple[int, int] | None:
    """``(num_states, num_actions)`` of :func:`make_tabular`'s env, without building it (``None``: unknown env)."""
    if name.startswith("grid_") and name.removeprefix("grid_") in [*GRID_MAPS, "dense"]:
        return (size or 10) ** 2, 5
    if name == "chain":
        return size or 5, 2
    return None


TABULAR_ENVS = (*(f"grid_{k}" for k in [*GRID_MAPS, "dense"]), "chain")
