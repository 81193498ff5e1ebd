"""baselines/mcmc."""
