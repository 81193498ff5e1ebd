"""Feedback allocations for the comparison tables: modality subsets, the paper's fixed counts, and equal-budget splits.

A *subset* is a non-empty set of the four built-in feedback types, written either with the letters ``p`` / ``d`` /
``r`` / ``s`` (``"pd"``, ``"pdrs"``) or with type names joined by ``_`` (``"pref_demo"``, ``"rating_stop"``), or
``"all"``. Its canonical name joins the type names in the order pref, demo, rating, stop, except that all four are
called ``"all"``. :data:`ALL_SUBSETS` lists the 11 table columns (4 single types, 6 pairs, all four).

Fixed allocation (REFERENCE §3): grids pref 64 / demo 1 episode / rating 64 / stop 256; CartPole and Acrobot
256 / 4 / 256 / 64; LunarLander 256 / 32 / 256 / 256. Equal budget: B = 64 items (grids, CartPole, Acrobot) or 256
(LunarLander) split over the active types, demonstrations capped at 16 episodes (32 on LunarLander).

The budget counts items (pairs, episodes, segments) of every type alike, as the reference does; REFERENCE §5 notes
that this mixes units (an episode is not a pair), which the cap on demonstrations only bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mavrl_ppl.envs.allocation import paper_counts

FEEDBACK_TYPES: tuple[str, ...] = ("pref", "demo", "rating", "stop")
LETTERS: dict[str, str] = {"p": "pref", "d": "demo", "r": "rating", "s": "stop"}


def _name(types: Sequence[str]) -> str:
    return "all" if len(types) == len(FEEDBACK_TYPES) else "_".join(types)


ALL_SUBSETS: tuple[str, ...] = (
    *FEEDBACK_TYPES,
    *(_name((a, b)) for i, a in enumerate(FEEDBACK_TYPES) for b in FEEDBACK_TYPES[i + 1 :]),
    "all",
)

# REFERENCE §3. Keys are the env families; :func:`env_family` maps an env name to one.
BUDGETS: dict[str, int] = {"grid": 64, "cartpole": 64, "acrobot": 64, "lunarlander": 256}
BUDGET_CAPS: dict[str, dict[str, int]] = {
    "grid": {"demo": 16},
    "cartpole": {"demo": 16},
    "acrobot": {"demo": 16},
    "lunarlander": {"demo": 32},
}


def parse_subset(spec: str) -> tuple[str, ...]:
    """The feedback types of a subset name, in canonical order.

    Args:
        spec: ``"pdrs"``-style letters, ``_``/``+``/``,``-joined type names (``"rating_stop"``), or ``"all"``.

    Raises:
        ValueError: an empty subset, an unknown letter or name, or a type given twice.
    """
    text = spec.strip().lower()
    if text == "all":
        return FEEDBACK_TYPES
    if text and set(text) <= set(LETTERS):
        names = [LETTERS[c] for c in text]
    else:
        names = [part for part in text.replace("+", "_").replace(",", "_").split("_") if part]
        unknown = [n for n in names if n not in FEEDBACK_TYPES]
        if unknown:
            raise ValueError(f"bad subset {spec!r}: unknown feedback type {unknown[0]!r} (known: "
                             f"{', '.join(FEEDBACK_TYPES)}, or letters p/d/r/s, or 'all')")
    if not names:
        raise ValueError(f"bad subset {spec!r}: no feedback type")
    if len(set(names)) != len(names):
        raise ValueError(f"bad subset {spec!r}: a feedback type is given twice")
    return tuple(t for t in FEEDBACK_TYPES if t in names)


def subset_name(spec: str | Iterable[str]) -> str:
    """The canonical name of a subset (``"pd"`` -> ``"pref_demo"``, ``"pdrs"`` -> ``"all"``)."""
    types = parse_subset(spec) if isinstance(spec, str) else parse_subset("_".join(spec))
    return _name(types)


def env_family(env: str) -> str:
    """``grid`` for the tabular envs (``grid_*``, ``chain``), else the control env's family (``cartpole``, ...).

    Raises:
        ValueError: an env with no allocation in REFERENCE §3.
    """
    key = env.lower()
    if key.startswith("grid_") or key == "chain":
        return "grid"
    for family in ("cartpole", "acrobot", "lunarlander"):
        if key.startswith(family):
            return family
    raise ValueError(f"no reference allocation for env {env!r} (known: grid_*, chain, CartPole-*, Acrobot-*, "
                     "LunarLander-*)")


def fixed_counts(env: str, subset: str | Iterable[str]) -> dict[str, int]:
    """REFERENCE §3 fixed allocation of ``env`` restricted to ``subset`` (inactive types omitted)."""
    types = parse_subset(subset) if isinstance(subset, str) else parse_subset("_".join(subset))
    env_family(env)  # names the known envs when there is no allocation
    table = paper_counts(env)
    return {t: table[t] for t in types}


def default_budget(env: str) -> int:
    """REFERENCE §3 equal budget B of ``env`` (items in total)."""
    return BUDGETS[env_family(env)]


def default_caps(env: str) -> dict[str, int]:
    """REFERENCE §3 per-type caps under the equal budget (demonstration episodes)."""
    return dict(BUDGET_CAPS[env_family(env)])


def allocate_budget(
    budget: int,
    proportions: Mapping[str, float],
    caps: Mapping[str, int] | None = None,
    minimum: int = 1,
) -> dict[str, int]:
    """Integer counts proportional to ``proportions`` that sum exactly to the budget, within caps.

    Every type first gets ``minimum`` items (so each active type has data and a likelihood term); the rest is
    shared in proportion to ``proportions`` by water-filling: a type whose share would exceed its cap is fixed at the
    cap and the excess is redistributed over the others in proportion. The real-valued shares are then rounded by
    largest remainders (ties to the type listed first), so the counts sum exactly to
    ``min(budget, sum of the caps)``: when the caps of the active types cannot absorb the budget, every type is at
    its cap.

    Args:
        budget: total number of items B >= ``minimum * len(proportions)``.
        proportions: active type -> non-negative weight (need not sum to 1; all zero means equal shares).
        caps: type -> most items of that type (types not listed are uncapped); each cap must be >= ``minimum``.
        minimum: items every active type gets at least.

    Returns:
        Type -> count, in the order of ``proportions``.

    Raises:
        ValueError: no active type, a negative or non-finite weight, a budget below the minimums, a cap below the
            minimum.
    """
    names = list(proportions)
    if not names:
        raise ValueError("no active feedback type to split the budget over")
    weights = np.array([float(proportions[n]) for n in names], dtype=float)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"proportions must be finite and non-negative, got {dict(proportions)}")
    if budget < 0 or minimum < 0:
        raise ValueError(f"budget and minimum must be non-negative, got {budget} and {minimum}")
    if budget < minimum * len(names):
        raise ValueError(f"budget {budget} is below {minimum} item(s) for each of {len(names)} types")
    caps = dict(caps or {})
    cap = np.array([caps.get(n, math.inf) for n in names], dtype=float)
    if np.any(cap < minimum):
        raise ValueError(f"caps {caps} are below the minimum of {minimum} item(s) per type")
    if weights.sum() == 0:
        weights = np.ones_like(weights)

    room = cap - minimum  # what each type can take beyond its minimum
    remaining = int(min(budget, minimum * len(names) + room.sum()) - minimum * len(names))
    share = np.zeros(len(names))
    free = np.ones(len(names), dtype=bool)
    left = float(remaining)
    while free.any():  # water-filling: at most len(names) rounds, each fixes at least one type at its cap
        w = np.where(free, weights, 0.0)
        if w.sum() == 0:  # the free types have zero weight: they share what is left equally
            w = free.astype(float)
        target = left * w / w.sum()
        over = free & (target > room)
        if not over.any():
            share[free] = target[free]
            break
        share[over] = room[over]
        left -= float(room[over].sum())
        free &= ~over
    base = np.minimum(np.floor(share + 1e-9), room).astype(int)
    short = remaining - int(base.sum())
    frac = share - base
    order = sorted(range(len(names)), key=lambda i: (-frac[i], i))
    for i in order:
        if short <= 0:
            break
        if base[i] < room[i]:
            base[i] += 1
            short -= 1
    assert short == 0, "largest-remainder rounding could not place every item"  # guaranteed by the caps' room
    return {n: int(minimum + base[i]) for i, n in enumerate(names)}


def split_budget(
    budget: int,
    types: Sequence[str],
    rng: np.random.Generator,
    caps: Mapping[str, int] | None = None,
    *,
    concentration: float = 1.0,
    minimum: int = 1,
    all_types: Sequence[str] = FEEDBACK_TYPES,
) -> dict[str, int]:
    """A random equal-budget allocation: a symmetric Dirichlet draw over ``types``, made integer by
    :func:`allocate_budget`.

    Args:
        budget: total items B.
        types: the active feedback types.
        rng: the only source of randomness (one Dirichlet draw).
        caps: per-type caps (e.g. :func:`default_caps`).
        concentration: Dirichlet concentration alpha (1 = uniform over the simplex).
        minimum: items every active type gets at least.
        all_types: the types reported in the result; inactive ones get 0.

    Returns:
        Type -> count for every type of ``all_types`` (and any active type not listed there), 0 for inactive types;
        the active counts sum to ``min(budget, sum of the active caps)``.
    """
    active = list(dict.fromkeys(types))
    if not active:
        raise ValueError("no active feedback type to split the budget over")
    if concentration <= 0:
        raise ValueError(f"the Dirichlet concentration must be positive, got {concentration}")
    draw = rng.dirichlet(np.full(len(active), float(concentration)))
    counts = allocate_budget(budget, dict(zip(active, draw, strict=True)), caps, minimum)
    return {t: counts.get(t, 0) for t in dict.fromkeys([*all_types, *active])}
