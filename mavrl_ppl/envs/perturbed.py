"""Perturbed environments for the transfer (out-of-distribution) experiments (REFERENCE_EXPERIMENTS §2).

One perturbation per env family, one number (the *level*) each:

- Grids, ``p_rand``: the executed action is the intended one w.p. ``1 - p_rand`` and each of the four other actions
  w.p. ``p_rand / 4``. Our grid's actions are RIGHT, UP, LEFT, DOWN, STAY (:data:`~mavrl_ppl.envs.grids.GRID_ACTIONS`),
  the published R, U, L, D, Stay in the same order; "the other four" always includes STAY. ``p_rand = 0`` is the base
  grid's transition tensor exactly (:func:`~mavrl_ppl.envs.grids.grid_transitions` mixes with an identity matrix).
  :func:`perturbed_grid` gives the exact :class:`~mavrl_ppl.envs.tabular.TabularMDP`; the gymnasium id is the grid's
  own, ``gymnasium.make("mavrl_ppl/grid_trap-v0", p_rand=0.3)``
  (:func:`~mavrl_ppl.envs.gym_adapter.register_tabular_envs`).
- Acrobot, ``asymmetry`` a: link 2 has length ``a`` and mass ``a`` (link 1 stays 1 m, 1 kg), both centres of mass at
  half the link (``LINK_COM_POS_2 = a / 2``). Stock Acrobot-v1 gives BOTH links the moment of inertia ``LINK_MOI = 1``
  (not the uniform rod's ``m L^2 / 12``); we keep that convention for link 1 and scale link 2's like a rod's,
  ``I_2 = LINK_MOI * m_2 L_2^2 = a^3``, so ``a = 1`` is EXACTLY stock Acrobot-v1 (the published wrapper switched both
  links to ``m L^2 / 12``, so its a = 1 was not the training dynamics). The goal test is stock's, on the angles
  (``-cos t1 - cos(t1 + t2) > 1``): the task and its true reward stay the same, only the dynamics change.
  :class:`AcrobotAsymmetricEnv`, id ``mavrl_ppl/AcrobotAsymmetric-v1`` (500-step limit, like stock).
- LunarLander, wind power ``w`` (and gravity ``g``, default -10): ``LunarLander-v3`` with ``enable_wind=True,
  wind_power=w, gravity=g``, id ``mavrl_ppl/LunarLanderWind-v3`` (1000-step limit). gymnasium also applies its
  rotational turbulence (``turbulence_power`` 1.5 by default) whenever ``enable_wind`` is on, so wind 0 is NOT stock
  LunarLander-v3; pass ``turbulence_power=0`` for a level without it. gymnasium warns for ``wind_power`` above its
  recommended 20 (the published levels go to 25); :func:`make_perturbed_env` passes that warning on.

:func:`perturbed_env` names the gymnasium id and keyword arguments of any env at a level, which is what PPO
retraining (:func:`mavrl_ppl.analysis.retrain.retrain_ppo`) and :func:`make_perturbed_env` take.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.acrobot import AcrobotEnv

from mavrl_ppl.envs.grids import make_tabular
from mavrl_ppl.envs.tabular import TabularMDP

__all__ = [
    "ACROBOT_ID",
    "LANDER_ID",
    "PERTURBATIONS",
    "AcrobotAsymmetricEnv",
    "Perturbation",
    "PerturbedEnv",
    "make_perturbed_env",
    "perturbation",
    "perturbed_env",
    "perturbed_grid",
    "register_perturbed_envs",
]

ACROBOT_ID = "mavrl_ppl/AcrobotAsymmetric-v1"
LANDER_ID = "mavrl_ppl/LunarLanderWind-v3"


class Perturbation(NamedTuple):
    """What the level of an env family means.

    Attributes:
        name: the parameter (``p_rand``, ``asymmetry``, ``wind_power``).
        label: axis label of the figures.
        unperturbed: the level of the training env (the fits' env) - for LunarLander the level closest to it.
        low: smallest allowed level.
        high: largest allowed level (``inf``: unbounded).
    """

    name: str
    label: str
    unperturbed: float
    low: float
    high: float


PERTURBATIONS: dict[str, Perturbation] = {
    "grid": Perturbation("p_rand", "action noise p_rand", 0.0, 0.0, 1.0),
    "Acrobot-v1": Perturbation("asymmetry", "asymmetry a (link 2 length = mass)", 1.0, 1e-3, np.inf),
    "LunarLander-v3": Perturbation("wind_power", "wind power", 0.0, 0.0, np.inf),
}


def perturbation(env: str) -> Perturbation:
    """The :class:`Perturbation` of ``env`` (a tabular grid name or a control env id).

    Raises:
        ValueError: an env without a perturbation (CartPole-v1, the chain, ...), naming the ones that have one.
    """
    if env.startswith("grid_"):
        return PERTURBATIONS["grid"]
    if env in PERTURBATIONS:
        return PERTURBATIONS[env]
    raise ValueError(f"no perturbation is defined for env {env!r}; transfer envs: grid_*, "
                     f"{', '.join(k for k in PERTURBATIONS if k != 'grid')}")


def check_level(env: str, level: float) -> float:
    """``level`` as a float inside the env's allowed range; ``ValueError`` naming the range otherwise."""
    p = perturbation(env)
    level = float(level)
    if not (np.isfinite(level) and p.low <= level <= p.high):
        raise ValueError(f"{p.name} of {env} must lie in [{p.low:g}, {p.high:g}], got {level:g}")
    return level


def perturbed_grid(env: str, p_rand: float, *, size: int | None = None) -> TabularMDP:
    """The tabular grid ``env`` with action noise ``p_rand`` (its reward and start unchanged).

    Args:
        env: ``grid_<kind>``.
        p_rand: probability that a random OTHER action (of the four) is executed instead of the intended one.
        size: grid side (default the env's).
    """
    return make_tabular(env, size=size, p_rand=check_level(env, p_rand))


class PerturbedEnv(NamedTuple):
    """A gymnasium id and the keyword arguments that make an env at a perturbation level."""

    env_id: str
    kwargs: dict[str, Any]


def perturbed_env(env: str, level: float, *, gravity: float = -10.0, size: int | None = None) -> PerturbedEnv:
    """The gymnasium id and keyword arguments of ``env`` at ``level`` (see the module docstring).

    Args:
        env: ``grid_<kind>``, ``Acrobot-v1`` or ``LunarLander-v3``.
        level: the perturbation level.
        gravity: LunarLander's gravity (in (-12, 0)); ignored elsewhere.
        size: a grid's side; ignored elsewhere.
    """
    level = check_level(env, level)
    if env.startswith("grid_"):
        kwargs: dict[str, Any] = {"p_rand": level} if size is None else {"p_rand": level, "size": int(size)}
        return PerturbedEnv(f"mavrl_ppl/{env}-v0", kwargs)
    if env == "Acrobot-v1":
        return PerturbedEnv(ACROBOT_ID, {"asymmetry": level})
    if not -12.0 < float(gravity) < 0.0:
        raise ValueError(f"LunarLander gravity must lie in (-12, 0), got {gravity:g}")
    return PerturbedEnv(LANDER_ID, {"wind_power": level, "gravity": float(gravity)})


def make_perturbed_env(env: str, level: float, **kwargs: Any) -> Any:
    """``gymnasium.make`` of :func:`perturbed_env` (ids registered on first use); extra ``kwargs`` go to
    ``gymnasium.make`` (e.g. ``render_mode``, ``max_episode_steps``)."""
    register_perturbed_envs()
    target = perturbed_env(env, level, gravity=kwargs.pop("gravity", -10.0), size=kwargs.pop("size", None))
    return gym.make(target.env_id, **{**target.kwargs, **kwargs})


class AcrobotAsymmetricEnv(AcrobotEnv):
    """Acrobot-v1 whose second link has length and mass ``asymmetry`` (see the module docstring).

    Args:
        asymmetry: a > 0; 1.0 is stock Acrobot-v1 exactly.
        render_mode: as stock.
    """

    def __init__(self, asymmetry: float = 1.0, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        a = check_level("Acrobot-v1", asymmetry)
        self.asymmetry = a
        # Instance attributes shadow the class constants that stock's dynamics and renderer read.
        self.LINK_LENGTH_2 = AcrobotEnv.LINK_LENGTH_2 * a
        self.LINK_MASS_2 = AcrobotEnv.LINK_MASS_2 * a
        self.LINK_COM_POS_2 = self.LINK_LENGTH_2 / 2.0
        self.LINK_MOI_1 = AcrobotEnv.LINK_MOI
        self.LINK_MOI_2 = AcrobotEnv.LINK_MOI * a * a * a  # a rod's I ~ m L^2, relative to stock's convention

    def _dsdt(self, s_augmented: np.ndarray) -> tuple[float, float, float, float, float]:
        # Stock's equations of motion (Sutton & Barto's "book" form, or the NIPS form) with one inertia per link. The
        # expressions keep stock's order of floating-point operations, so a = 1 reproduces stock trajectories bit for
        # bit (tests/envs/test_perturbed.py): the chaotic double pendulum would amplify any round-off difference.
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1, lc1, lc2 = self.LINK_LENGTH_1, self.LINK_COM_POS_1, self.LINK_COM_POS_2
        i1, i2 = self.LINK_MOI_1, self.LINK_MOI_2
        g = 9.8
        torque = s_augmented[-1]
        theta1, theta2, dtheta1, dtheta2 = s_augmented[:-1]
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * np.cos(theta2)) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * np.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * np.cos(theta1 + theta2 - np.pi / 2.0)
        phi1 = (-m2 * l1 * lc2 * dtheta2**2 * np.sin(theta2)
                - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
                + (m1 * lc1 + m2 * l1) * g * np.cos(theta1 - np.pi / 2)
                + phi2)
        if self.book_or_nips == "nips":
            ddtheta2 = (torque + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + i2 - d2**2 / d1)
        else:
            ddtheta2 = ((torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * np.sin(theta2) - phi2)
                        / (m2 * lc2**2 + i2 - d2**2 / d1))
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2, 0.0


def register_perturbed_envs() -> list[str]:
    """Register the perturbed control envs and the tabular envs (``p_rand`` is their keyword) with gymnasium
    (idempotent). Returns the perturbed control ids."""
    from mavrl_ppl.envs.gym_adapter import register_tabular_envs

    register_tabular_envs()
    if ACROBOT_ID not in gym.registry:
        gym.register(id=ACROBOT_ID, entry_point=f"{__name__}:AcrobotAsymmetricEnv", max_episode_steps=500,
                     kwargs={"asymmetry": 1.0})
    if LANDER_ID not in gym.registry:
        gym.register(id=LANDER_ID, entry_point="gymnasium.envs.box2d.lunar_lander:LunarLander",
                     max_episode_steps=1000, reward_threshold=200,
                     kwargs={"enable_wind": True, "wind_power": 0.0, "gravity": -10.0})
    return [ACROBOT_ID, LANDER_ID]
