"""JAX process settings for the NUTS path: float64 and the number of host (CPU) devices for parallel chains."""

from __future__ import annotations

import os

import jax


def enable_x64() -> None:
    """Run every JAX computation of this process in float64 (value iteration and the likelihoods need it:
    ``Q*`` reaches ``|r| / (1 - gamma) = 20 |r|`` and NUTS's energy error is a difference of such sums)."""
    jax.config.update("jax_enable_x64", True)


def set_host_devices(n: int | None = None) -> int:
    """Split the host CPU into ``n`` XLA devices so that NUTS chains can run in parallel (one thread per device).

    Uses the ``jax_num_cpu_devices`` option (jax >= 0.4.38; it overrides ``XLA_FLAGS``'s
    ``--xla_force_host_platform_device_count``). It only works before JAX runs its first computation, so the command
    line calls it at start-up.

    Args:
        n: number of devices; ``None`` = one per available core (``os.sched_getaffinity``).

    Returns:
        The number of CPU devices JAX now has.

    Raises:
        RuntimeError: JAX is already initialised with a different number of devices.
    """
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"the number of host devices must be >= 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # the backend is up; fine if it already has what was asked for
        if jax.local_device_count() != n:
            raise RuntimeError(
                f"cannot set {n} host devices: JAX is already initialised with {jax.local_device_count()}; "
                "call set_host_devices() before any JAX computation"
            ) from None
    return jax.local_device_count()
