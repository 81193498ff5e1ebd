"""Vectorised trajectory sampling on tabular MDPs, with no Python loop over time steps or items.

Each step ``t`` of each path draws two uniforms; with them every state ``s`` gets the action it *would* take
and the state it *would* reach, giving a table ``f_t: S -> S``. The visited states are prefix compositions
``f_t o ... o f_0 (s_0)``, computed for all ``t`` at once by a Hillis-Steele scan in ``ceil(log2 T)`` array
operations. Using one uniform per step for all states is a valid coupling: only the realised state's entry is
ever used, and the uniforms are independent of the past.
"""

from __future__ import annotations

import numpy as np

#: Table entries (paths x steps x states) :func:`sample_paths` builds at once.
CHUNK_ENTRIES = 1 << 20


def categorical_rows(cdf: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample ``k ~ Categorical(row)`` for many (row, uniform) pairs at once.

    Args:
        cdf: ``(M, K)`` cumulative probabilities, one distribution per row.
        rows: integer row index of each draw (any shape).
        u: uniforms in [0, 1), same shape as ``rows``.

    Returns:
        The sampled category of each draw: the number of cdf entries of its row that are <= u.
    """
    M, K = cdf.shape
    cdf = cdf.copy()
    cdf[:, -1] = 1.0  # guard against round-off leaving the last entry just below one
    offset_cdf = (cdf + np.arange(M)[:, None]).ravel()  # row r lives in [r, r + 1]: globally sorted
    idx = np.searchsorted(offset_cdf, rows + u, side="right") - rows * K
    return np.minimum(idx, K - 1)


def sample_paths(
    transitions: np.ndarray,
    policy: np.ndarray,
    start_states: np.ndarray,
    num_steps: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Roll out ``policy`` for ``num_steps`` steps from each start state.

    Args:
        transitions: ``P[s, a, s']``.
        policy: ``pi[s, a]``.
        start_states: ``(n,)`` start state of each path.
        num_steps: number of transitions per path.
        rng: the only source of randomness.

    Returns:
        ``states`` of shape ``(n, num_steps + 1)`` (``s_0 .. s_T``) and ``actions`` of shape
        ``(n, num_steps + 1)`` (``a_t`` taken in ``s_t``; the last one is the action the policy would take
        next).
    """
    S, A, _ = transitions.shape
    start_states = np.asarray(start_states, dtype=np.int64)
    n = start_states.shape[0]
    steps = num_steps + 1
    u_action = rng.random((n, steps))
    u_next = rng.random((n, steps))
    policy_cdf = np.cumsum(policy, -1)
    transition_cdf = np.cumsum(transitions, -1).reshape(S * A, S)
    states = np.empty((n, steps), dtype=np.int64)
    actions = np.empty((n, steps), dtype=np.int64)
    # The tables hold steps x S entries per path, each array several times over in temporaries: paths go in chunks
    # of at most CHUNK_ENTRIES entries (the uniforms are drawn above, so the chunking does not change the draws).
    # Measured: 6000 paths of 11 steps on the 10x10 grid peaked at 203 MB of allocations unchunked.
    chunk = max(1, CHUNK_ENTRIES // (steps * S))
    for lo in range(0, n, chunk):
        part = slice(lo, min(lo + chunk, n))
        states[part], actions[part] = _chunk_paths(policy_cdf, transition_cdf, A, start_states[part],
                                                   u_action[part], u_next[part])
    return states, actions


def _chunk_paths(policy_cdf: np.ndarray, transition_cdf: np.ndarray, num_actions: int, start_states: np.ndarray,
                 u_action: np.ndarray, u_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_paths` for the paths of one chunk, given their uniforms ``(n, steps)``."""
    n, steps = u_action.shape
    S = policy_cdf.shape[0]
    all_states = np.broadcast_to(np.arange(S), (n, steps, S))
    action_table = categorical_rows(policy_cdf, all_states, u_action[..., None])
    next_table = categorical_rows(transition_cdf, all_states * num_actions + action_table, u_next[..., None])
    # Prefix composition: after the scan, reach[i, t, s] = state after t + 1 steps when starting from s.
    reach = next_table
    shift = 1
    while shift < steps:
        reach[:, shift:] = np.take_along_axis(reach[:, shift:], reach[:, :-shift], axis=-1)
        shift *= 2
    states = np.empty((n, steps), dtype=np.int64)
    states[:, 0] = start_states
    states[:, 1:] = reach[np.arange(n), :-1, start_states] if steps > 1 else states[:, 1:]
    actions = np.take_along_axis(action_table, states[..., None], axis=-1)[..., 0]
    return states, actions
