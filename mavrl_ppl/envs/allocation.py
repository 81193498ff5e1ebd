"""The paper's fixed feedback allocation of every env (REFERENCE §3), in one place.

The grids (and the chain) share one allocation; each control env's lives in its :class:`~mavrl_ppl.envs.control.
ControlEnvSpec`. Everything that needs "the paper's counts" (the command's default ``--feedback``, the baseline table,
the sweeps, the benchmarks) reads them here.
"""

from __future__ import annotations

from collections.abc import Mapping

#: REFERENCE §3: pref 64 / demo 1 / rating 64 / stop 256 on the tabular envs.
GRID_ALLOCATION: dict[str, int] = {"pref": 64, "demo": 1, "rating": 64, "stop": 256}


def paper_counts(env: str) -> dict[str, int]:
    """The fixed allocation of ``env`` as type -> count.

    Args:
        env: a tabular env name (``grid_*``, ``chain``) or a control env id (``CartPole-v1``, ...).

    Raises:
        ValueError: an env with no allocation in REFERENCE §3.
    """
    from mavrl_ppl.envs.control import CONTROL_ENVS

    if env in CONTROL_ENVS:
        return dict(CONTROL_ENVS[env].allocation)
    if env.startswith("grid_") or env == "chain":
        return dict(GRID_ALLOCATION)
    raise ValueError(f"no reference allocation for env {env!r} (known: grid_*, chain, {', '.join(CONTROL_ENVS)})")


def format_counts(counts: Mapping[str, int]) -> str:
    """``{"pref": 64, "demo": 1}`` -> ``"pref=64,demo=1"`` (the ``--feedback`` syntax)."""
    return ",".join(f"{name}={int(count)}" for name, count in counts.items())


def paper_allocation(env: str) -> str:
    """The fixed allocation of ``env`` as a ``--feedback`` string, e.g. ``"pref=64,demo=1,rating=64,stop=256"``."""
    return format_counts(paper_counts(env))
