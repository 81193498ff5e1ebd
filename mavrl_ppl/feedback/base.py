"""The feedback-type plugin contract (DESIGN §3) and its registry.

A feedback type is one frozen :class:`FeedbackType` value. Every type has the same fields, like BlackJAX algorithms:

- a schema (:attr:`FeedbackType.segment_dims`, :attr:`FeedbackType.variables`), used by validation;
- nuisance parameters (:class:`Nuisance`) with a Gaussian prior on an unconstrained value and an array-API transform;
- ``log_likelihood(batch, latents, params) -> (..., item)`` written once against the array API (from the safe
  operations of :mod:`mavrl_ppl.feedback.ops`), so the Pyro model (torch) and the NumPyro model (JAX) call the very
  same function;
- a simulated teacher ``simulate(teacher, count, rng, **settings) -> xarray.Dataset`` (numpy, vectorised).

Users add their own type from their own module with one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

Array = Any

#: The prior of every reward latent, ``Normal(REWARD_PRIOR_LOC, REWARD_PRIOR_SCALE)``, in both back ends (the Pyro
#: model's ``reward`` / ``reward_<type>`` sites and the NumPyro model's ``reward`` site) and in simulation-based
#: calibration, which draws true rewards from it: defined once, here, where both models' imports meet.
REWARD_PRIOR_LOC = 0.0
REWARD_PRIOR_SCALE = 1.0

#: Variables every segment carries (DESIGN §2); ``state``/``next_state`` only for tabular envs.
SEGMENT_VARIABLES: dict[str, str] = {
    "obs": "float",
    "action": "int",
    "next_obs": "float",
    "next_action": "int",
    "valid": "bool",
    "terminal": "bool",
}
TABULAR_VARIABLES: dict[str, str] = {"state": "int", "next_state": "int"}


class Latents(NamedTuple):
    """What a model hands a likelihood, per segment step (any leading sample dimensions allowed).

    Attributes:
        reward: reward of each transition, shape ``(..., item, [side,] step)``; ``None`` if the type does not need it.
        q: action values at each step's state, shape ``(..., item, [side,] step, action)``; ``None`` if not needed.
    """

    reward: Array | None = None
    q: Array | None = None


class VariableSpec(NamedTuple):
    """A type-specific data variable.

    Attributes:
        dims: its dimension names (a prefix of the segment dims, e.g. ``("item",)``).
        kind: ``"float"``, ``"int"`` or ``"bool"``.
    """

    dims: tuple[str, ...]
    kind: str


class Nuisance(NamedTuple):
    """A nuisance parameter of a feedback type, e.g. rating cutpoints or a rationality coefficient.

    The prior is ``z ~ Normal(loc(attrs), scale)`` on an unconstrained vector ``z``; the likelihood sees
    ``transform(z)`` (array API). Each backend realises this as it needs (a sample site in NumPyro, a site with a
    learned Gaussian guide in Pyro). The posterior records the transformed value as ``<type>_<name>``.

    Attributes:
        name: parameter name inside the type (``"cutpoints"``, ``"beta"``).
        loc: prior mean of ``z`` given the data set's attributes; its shape is the parameter's shape.
        scale: prior standard deviation of ``z``.
        transform: unconstrained ``z`` (last axis = the parameter) -> constrained value.
        fixed_attr: if the data set carries this attribute, the parameter is fixed to its value and not inferred.
        dims: names of the parameter's own axes in the posterior (e.g. ``("cutpoint",)``); axes left unnamed are
            called ``<type>_<name>_dim_<i>`` (ArviZ's rule), the same for every back end.
    """

    name: str
    loc: Callable[[Mapping[str, Any]], np.ndarray]
    scale: float
    transform: Callable[[Array], Array]
    fixed_attr: str | None = None
    dims: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class FeedbackType:
    """One kind of feedback: its data schema, nuisance parameters, likelihood and simulated teacher.

    Attributes:
        name: registry name, used as the NetCDF group, the ``obs_<name>`` site and the CLI key.
        label: the observed variable (``preference``, ``action``, ``rating``, ``stop_time``).
        segment_dims: dims of the per-step segment variables, ``("item", "step")`` or ``("item", "side", "step")``.
        variables: the type's own data variables (including ``label``), beyond the segment variables.
        needs: which :class:`Latents` fields the likelihood reads, a subset of ``{"reward", "q"}``.
        nuisance: nuisance parameters (may be empty).
        log_likelihood: ``(batch, latents, params) -> (..., item)`` log-probability of each item's label; ``batch``
            maps variable and attribute names to backend arrays / scalars, ``params`` maps nuisance names to values.
        simulate: ``(teacher, count, rng, **settings) -> xarray.Dataset``, a Boltzmann-rational simulated teacher.
        check: extra validation ``(dataset) -> [(variable, item_index, message), ...]`` beyond the schema.
        defaults: the simulator's default settings (the paper's grid settings for the built-in types).
        attrs: data-set attributes the likelihood reads from ``batch`` (the ``fixed_attr`` of each nuisance is added).
    """

    name: str
    label: str
    segment_dims: tuple[str, ...]
    variables: Mapping[str, VariableSpec]
    needs: frozenset[str]
    nuisance: tuple[Nuisance, ...]
    log_likelihood: Callable[[Mapping[str, Any], Latents, Mapping[str, Array]], Array]
    simulate: Callable[..., Any]
    check: Callable[[Any], list[tuple[str, int, str]]] = lambda dataset: []
    defaults: Mapping[str, Any] = field(default_factory=dict)
    attrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        fixed = {n.fixed_attr for n in self.nuisance if n.fixed_attr}
        object.__setattr__(self, "attrs", tuple(dict.fromkeys([*self.attrs, *fixed])))

    def free_nuisance(self, attrs: Mapping[str, Any]) -> tuple[Nuisance, ...]:
        """The nuisance parameters to infer for a data set with these attributes (those not fixed by an attribute)."""
        return tuple(n for n in self.nuisance if n.fixed_attr is None or n.fixed_attr not in attrs)

    def site(self, nuisance: Nuisance) -> str:
        """Name of the nuisance parameter's sample site and posterior variable."""
        return f"{self.name}_{nuisance.name}"

    def params(self, attrs: Mapping[str, Any], sampled: Mapping[str, Array], to_array: Callable) -> dict:
        """The ``params`` mapping for the likelihood: fixed values from ``attrs``, the rest from ``sampled`` (keyed by
        :meth:`site`, already transformed)."""
        out = {}
        for n in self.nuisance:
            if n.fixed_attr is not None and n.fixed_attr in attrs:
                out[n.name] = to_array(np.asarray(attrs[n.fixed_attr], dtype=np.float64))
            else:
                out[n.name] = sampled[self.site(n)]
        return out


def _exp(z: Array) -> Array:
    from array_api_compat import array_namespace

    return array_namespace(z).exp(z)


def rationality(scale: float = 1.0) -> Nuisance:
    """A Boltzmann rationality ``beta = exp(z)``, ``z ~ Normal(0, scale)``; fixed when the data set has ``beta``."""
    return Nuisance("beta", loc=lambda attrs: np.zeros(()), scale=scale, transform=_exp, fixed_attr="beta")


_REGISTRY: dict[str, FeedbackType] = {}


def register(feedback_type: FeedbackType, *, overwrite: bool = False) -> FeedbackType:
    """Make a feedback type available by name to validation, simulation, ``--inference svi`` and ``nuts``."""
    if not isinstance(feedback_type, FeedbackType):
        raise TypeError(f"register() takes a FeedbackType, got {type(feedback_type).__name__}")
    if feedback_type.name in _REGISTRY and not overwrite:
        raise ValueError(f"feedback type {feedback_type.name!r} is already registered (pass overwrite=True)")
    if not feedback_type.needs or not feedback_type.needs <= {"reward", "q"}:
        raise ValueError(f"{feedback_type.name}: needs must be a non-empty subset of {{'reward', 'q'}}")
    if feedback_type.label not in feedback_type.variables:
        raise ValueError(f"{feedback_type.name}: label {feedback_type.label!r} must be one of its variables")
    _REGISTRY[feedback_type.name] = feedback_type
    return feedback_type


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_feedback_type(name: str) -> FeedbackType:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown feedback type {name!r}; registered: {sorted(_REGISTRY)}") from None


def registered() -> dict[str, FeedbackType]:
    """A copy of the registry, name -> type, in registration order."""
    return dict(_REGISTRY)


def batch_from_dataset(feedback_type: FeedbackType, dataset: Any, to_array: Callable[[np.ndarray], Array]) -> dict:
    """The ``batch`` mapping a likelihood reads: every segment/type variable as a backend array plus the attributes."""
    names = [*SEGMENT_VARIABLES, *TABULAR_VARIABLES, *feedback_type.variables]
    batch = {name: to_array(np.asarray(dataset[name].values)) for name in names if name in dataset}
    for attr in feedback_type.attrs:
        if attr in dataset.attrs:
            batch[attr] = float(dataset.attrs[attr])
    return batch
