"""The joint feedback model on a tabular MDP as a NumPyro program (DESIGN §5).

Sites:

- ``reward ~ Normal(0, 1)``, shape ``(G,)``: one reward per parameter group (``mdp.reward_groups``; one per state on
  the paper grids); the prior is :data:`~mavrl_ppl.feedback.base.REWARD_PRIOR_LOC` / ``REWARD_PRIOR_SCALE``, the
  Pyro model's too. A transition's reward is ``reward[reward_groups[s, a, s']]``.
- for every free nuisance parameter of every feedback type present (``ft.free_nuisance(attrs)``): the unconstrained
  ``<type>_<name>_z ~ Normal(loc(attrs), scale)`` is sampled, and its transformed value is recorded as the
  deterministic site ``<type>_<name>`` (e.g. ``rating_cutpoints``, ``pref_beta``), the name the posterior uses.
  Parameters the data set fixes through an attribute (``beta`` of simulated data) are constants.
- ``obs_<type>``: ``numpyro.factor`` with the VECTOR of per-item log-likelihoods. The factor adds their sum to the
  joint density (so NUTS sees exactly ``sum log p``), and ``numpyro.infer.log_likelihood`` returns the per-item values.
  The run's ArviZ ``log_likelihood`` group is computed by :mod:`mavrl_ppl.analysis.predictive` instead (the numpy
  code path SVI uses too), which equals these values to ~1e-12 (``tests/analysis/test_predictive.py``).

``Q*`` comes from :func:`~mavrl_ppl.planning.jax_backend.q_star_exact` (exact, differentiable) or a fixed number of
value-iteration sweeps. Every registered type's ``log_likelihood`` is called unchanged, on JAX arrays; the model loops
over the types present and hands each the latents its ``needs`` names: no per-type code here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from mavrl_ppl.envs.tabular import TabularMDP
from mavrl_ppl.feedback.base import (
    REWARD_PRIOR_LOC,
    REWARD_PRIOR_SCALE,
    FeedbackType,
    Latents,
    Nuisance,
    batch_from_dataset,
    get_feedback_type,
)
from mavrl_ppl.planning.jax_backend import (
    expected_reward,
    make_dynamics,
    q_star_exact,
    q_star_sweeps,
    successor_groups,
    sweeps_for_tolerance,
)

#: The value-iteration schemes for Q* inside the model.
Q_METHODS = ("exact", "sweeps")


def to_jax(values: np.ndarray) -> Any:
    """A data array as a JAX array: floats in float64, integers and booleans kept."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    return jnp.asarray(values)


@dataclass(frozen=True, eq=False)
class FeedbackTerm:
    """What the model needs to know about one feedback type's data set beyond its arrays.

    Attributes:
        feedback_type: the registered type.
        attrs: the data set's attributes (they fix nuisance parameters and scalars such as ``lambda``).
        scalars: attribute values the likelihood reads from its ``batch`` (kept static, not traced).
        free: the nuisance parameters to infer.
    """

    feedback_type: FeedbackType
    attrs: Mapping[str, Any]
    scalars: Mapping[str, float]
    free: tuple[Nuisance, ...]


def nuisance_sites(feedback: Mapping[str, Any]) -> list[str]:
    """Names of the inferred nuisance parameters (``<type>_<name>``) of a feedback set, in model order."""
    sites = []
    for name, dataset in feedback.items():
        ft = get_feedback_type(name)
        sites += [ft.site(n) for n in ft.free_nuisance(dataset.attrs)]
    return sites


@dataclass(frozen=True, eq=False)
class TabularFeedbackModel:
    """The NumPyro model; call it as ``model(inputs)`` with the arrays from :func:`make_model`.

    Attributes:
        num_groups: number of reward parameters ``G``.
        gamma: discount factor of the MDP.
        terms: one :class:`FeedbackTerm` per feedback type present, in the feedback set's order.
        q_method: ``"exact"`` (policy iteration + one differentiable linear solve) or ``"sweeps"``.
        num_sweeps: sweeps of the ``"sweeps"`` scheme.
    """

    num_groups: int
    gamma: float
    terms: tuple[FeedbackTerm, ...]
    q_method: str = "exact"
    num_sweeps: int = 0

    @property
    def needs_q(self) -> bool:
        return any("q" in term.feedback_type.needs for term in self.terms)

    def q_star(self, r_sa, dynamics):
        """``Q*(s, a)`` for the expected reward ``r_sa`` under the configured scheme."""
        if self.q_method == "exact":
            return q_star_exact(r_sa, dynamics, self.gamma)
        return q_star_sweeps(r_sa, dynamics, self.gamma, self.num_sweeps)

    def __call__(self, inputs: Mapping[str, Any]) -> None:
        prior = dist.Normal(REWARD_PRIOR_LOC, REWARD_PRIOR_SCALE).expand([self.num_groups]).to_event(1)
        theta = numpyro.sample("reward", prior)
        q = None
        if self.needs_q:
            r_sa = expected_reward(theta, inputs["dynamics"], inputs["successor_groups"])
            q = self.q_star(r_sa, inputs["dynamics"])
        for term in self.terms:
            ft = term.feedback_type
            arrays = inputs["feedback"][ft.name]
            sampled = {}
            for nuisance in term.free:
                loc = np.asarray(nuisance.loc(term.attrs), dtype=np.float64)
                site = ft.site(nuisance)
                z = numpyro.sample(f"{site}_z", dist.Normal(loc, nuisance.scale).to_event(loc.ndim))
                sampled[site] = numpyro.deterministic(site, nuisance.transform(z))
            latents = Latents(
                reward=theta[arrays["reward_group"]] if "reward" in ft.needs else None,
                q=q[arrays["state"]] if "q" in ft.needs else None,
            )
            params = ft.params(term.attrs, sampled, to_jax)
            batch = {**arrays["batch"], **term.scalars}
            numpyro.factor(f"obs_{ft.name}", ft.log_likelihood(batch, latents, params))


def make_model(
    mdp: TabularMDP,
    feedback: Mapping[str, Any],
    *,
    q_method: str = "exact",
    sweep_tol: float = 1e-6,
    sweep_reward_bound: float = 5.0,
) -> tuple[TabularFeedbackModel, dict]:
    """The model and its input arrays for a feedback set on ``mdp``.

    Args:
        mdp: the tabular MDP (its dynamics, discount and ``reward_groups``; its true reward is not used).
        feedback: type name -> ``xarray.Dataset`` with tabular segments (``state``, ``action``, ``next_state``,
            ``valid`` ...); every type must be registered.
        q_method: ``"exact"`` or ``"sweeps"`` (see :mod:`~mavrl_ppl.planning.jax_backend`).
        sweep_tol: ``"sweeps"`` only: target sup-norm error of ``Q*`` ...
        sweep_reward_bound: ... for rewards with ``|r| <= sweep_reward_bound`` (5 sd of the prior).

    Returns:
        ``(model, inputs)``; run it as ``model(inputs)`` (e.g. ``MCMC(NUTS(model)).run(key, inputs)``).
    """
    if q_method not in Q_METHODS:
        raise ValueError(f"q_method must be one of {Q_METHODS}, got {q_method!r}")
    if not feedback:
        raise ValueError("the feedback set is empty: nothing to condition on")
    terms = []
    arrays = {}
    S = mdp.num_states
    for name, dataset in feedback.items():
        ft = get_feedback_type(name)
        for variable in ("state", "action", "next_state", "valid"):
            if variable not in dataset:
                raise ValueError(f"feedback {name!r} lacks {variable!r}: NUTS needs tabular segments")
        batch = batch_from_dataset(ft, dataset, to_jax)
        scalars = {key: value for key, value in batch.items() if isinstance(value, float)}
        valid = np.asarray(dataset["valid"].values, dtype=bool)
        # Padded steps may hold any index; point them at state 0 (the likelihoods mask them out).
        state = np.where(valid, dataset["state"].values, 0)
        action = np.where(valid, dataset["action"].values, 0)
        next_state = np.where(valid, dataset["next_state"].values, 0)
        if state.max(initial=0) >= S or next_state.max(initial=0) >= S or state.min(initial=0) < 0:
            raise ValueError(f"feedback {name!r} has state indices outside 0..{S - 1}")
        arrays[name] = {
            "batch": {key: value for key, value in batch.items() if key not in scalars},
            "reward_group": jnp.asarray(mdp.reward_groups[state, action, next_state]),
            "state": jnp.asarray(state),
        }
        terms.append(FeedbackTerm(ft, dict(dataset.attrs), scalars, ft.free_nuisance(dataset.attrs)))
    model = TabularFeedbackModel(
        num_groups=mdp.num_groups,
        gamma=float(mdp.gamma),
        terms=tuple(terms),
        q_method=q_method,
        num_sweeps=sweeps_for_tolerance(mdp.gamma, sweep_tol, sweep_reward_bound),
    )
    dynamics = make_dynamics(mdp.transitions)
    inputs = {
        "dynamics": dynamics,
        "successor_groups": successor_groups(dynamics, mdp.reward_groups),
        "feedback": arrays,
    }
    return model, inputs
