"""Reference baselines. ``baselines.mcmc`` (NumPyro NUTS) is the only part that imports JAX, so nothing is imported
here: ``import mavrl_ppl.baselines`` stays light, ``import mavrl_ppl.baselines.mcmc`` brings JAX in."""
