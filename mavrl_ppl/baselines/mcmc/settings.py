"""NUTS settings and the convergence bound, importable without JAX (the command line and the tables read them)."""

from __future__ import annotations

from dataclasses import dataclass

from mavrl_ppl.options import option

#: A run counts as converged when every posterior variable has rank-normalised split R-hat at most this (Vehtari et
#: al. 2021), the chains' mean log densities agree to the same bound, bulk ESS is high enough and no transition
#: diverged.
RHAT_MAX = 1.01

CHAIN_METHODS = ("auto", "parallel", "vectorized", "sequential")

#: Where the chains start: ``"mode"`` (dispersed draws around the posterior mode, :mod:`.init`) or ``"prior"``
#: (NumPyro's default, uniform on (-2, 2) in every unconstrained coordinate).
INIT_METHODS = ("mode", "prior")

Q_METHODS = ("exact", "sweeps")


@dataclass
class NutsSettings:
    """How to run NUTS (the defaults are the paper-grid benchmark's)."""

    num_chains: int = option(4, "independent chains (R-hat needs >= 2)")
    num_warmup: int = option(500, "warm-up iterations per chain (step size and mass matrix adaptation), discarded")
    num_samples: int = option(1000, "kept draws per chain")
    target_accept_prob: float = option(0.8, "step-size adaptation target; raise it if transitions diverge")
    max_tree_depth: int = option(10, "at most 2^depth - 1 leapfrog steps per iteration (kept draws)")
    warmup_max_tree_depth: int = option(10, "the tree-depth bound during warm-up only (7 halved cost and ESS alike: "
                                            "benchmarks/RESULTS.md)")
    dense_mass: bool = option(False, "adapt a dense (true) or diagonal (false) mass matrix")
    seed: int = option(0, "PRNG seed of the chains' initial points and trajectories")
    progress_bar: bool = option(True, "one tqdm bar per chain (NumPyro's), advancing as the chains sample")
    chain_method: str = option("auto", "auto: chains split over the host devices (one thread each)", CHAIN_METHODS)
    q_method: str = option("exact", "Q* in the model: exact (policy iteration + linear solve) or value-iteration "
                                    "sweeps", Q_METHODS)
    log_likelihood: bool = option(True, "store per-item log-likelihoods (ArviZ log_likelihood group, for LOO/WAIC)")
    init: str = option("mode", "chain starts: mode (N(mode, init_scale^2 H^-1) draws) or prior (NumPyro's default)",
                       INIT_METHODS)
    init_scale: float = option(0.25, "mode starts only: their spread in sds of the Laplace approximation (init.py)")

    def __post_init__(self) -> None:
        for name, allowed in (("chain_method", CHAIN_METHODS), ("init", INIT_METHODS), ("q_method", Q_METHODS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {self.init_scale}")
        for name in ("num_chains", "num_warmup", "num_samples", "max_tree_depth", "warmup_max_tree_depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 < self.target_accept_prob < 1.0:
            raise ValueError(f"target_accept_prob must lie in (0, 1), got {self.target_accept_prob}")
