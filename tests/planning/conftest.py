"""Shared fixtures of the planning tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def x64():
    """JAX in float64 for one test, as every caller of the JAX planner must set it (importing
    :mod:`mavrl_ppl.planning.jax_backend` does not); the previous setting is restored afterwards."""
    jax = pytest.importorskip("jax")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
