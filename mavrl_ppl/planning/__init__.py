"""Exact ``Q*`` of a tabular MDP, once per array library (numpy, torch, JAX), behind one contract.

Contract (every backend):

- Inputs: ``transitions`` ``P[s, a, s']`` of shape ``(S, A, S)`` (rows sum to one); ``reward_groups`` of shape
  ``(S, A, S)``, integers in ``[0, G)`` with ``G = reward_groups.max() + 1``, the reward parameter behind each
  transition; ``gamma`` in ``[0, 1)``; group rewards ``theta`` of shape ``(G,)`` (numpy also ``(..., G)``,
  batched over the leading dimensions; in JAX ``jax.vmap`` the function). The transition reward is
  ``R[s, a, s'] = theta[reward_groups[s, a, s']]``, its expectation ``r(s, a) = sum_s' P[s, a, s'] R[s, a, s']``.
- Output: ``Q*`` of shape ``(S, A)`` (``(..., S, A)`` for a batch), float64:
  ``Q*(s, a) = r(s, a) + gamma sum_s' P[s, a, s'] max_a' Q*(s', a')``.
- Method and tie rule: policy iteration, run forward only (no gradient), finds an optimal deterministic policy
  ``pi``; it keeps a state's current action unless another beats it by more than :data:`SWITCH_TOL` times
  ``1 + the value scale``, so floating-point ties cannot make it cycle between equally good policies.
- Value: ``Q* = r + gamma P V_pi`` with ``V_pi = (I - gamma P_pi)^-1 r_pi`` evaluated exactly (a linear solve; JAX on
  deterministic dynamics sums the discounted path by pointer doubling until the tail is below float64 round-off).
  ``Q*`` is piecewise linear in ``theta`` and the result is exact to round-off (not to an iteration tolerance).
- Gradient (torch, JAX): that of the linear piece of ``pi``, i.e. exact wherever the optimal policy is unique
  (almost everywhere); at ties, the gradient of one optimal policy's piece.

Backends:

- numpy, :mod:`mavrl_ppl.planning.numpy_backend` (re-exported here): :func:`q_star` (batched; for likelihoods at many
  posterior draws), and the solvers on full ``(S, A, S)`` rewards: :func:`value_iteration` (to a tolerance),
  :func:`policy_evaluation`, :func:`greedy_policy`, :func:`boltzmann_policy`.
- torch, :mod:`mavrl_ppl.planning.torch_backend`: ``ExactPlanner(transitions, reward_groups, gamma)(theta)``,
  differentiable, warm-started from its previous call's policy (the Pyro model).
- JAX, :mod:`mavrl_ppl.planning.jax_backend`: ``make_q_star(transitions, reward_groups, gamma)(theta)``, or its parts
  ``make_dynamics`` / ``successor_groups`` / ``expected_reward`` / ``q_star_exact`` (the NumPyro model), all
  traceable; float64 must be switched on by the caller (``jax_enable_x64``), importing the module does not.

``tests/planning/test_agreement.py`` checks that the three agree (``Q*`` to 1e-9, gradients to 1e-7). Importing this
package imports numpy only; import a backend module explicitly to use torch or JAX.
"""

from mavrl_ppl.planning.numpy_backend import (
    SWITCH_TOL,
    boltzmann_policy,
    greedy_policy,
    policy_evaluation,
    q_star,
    sparse_transitions,
    value_iteration,
)

__all__ = [
    "SWITCH_TOL",
    "boltzmann_policy",
    "greedy_policy",
    "policy_evaluation",
    "q_star",
    "sparse_transitions",
    "value_iteration",
]
