"""run_nuts end to end: the InferenceData contract, convergence on a small grid, and the process-level settings
(host devices, no JAX on a light import)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mavrl_ppl.baselines.mcmc import NutsSettings, run_nuts
from mavrl_ppl.envs import make_tabular
from mavrl_ppl.feedback import TabularTeacher, simulate_feedback

ALL_FOUR = {"pref": 32, "demo": 1, "rating": 32, "stop": 64}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def test_importing_the_baselines_package_does_not_import_jax():
    result = run_python(
        "import json, sys, mavrl_ppl, mavrl_ppl.baselines\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'jax', 'jaxlib', 'numpyro'})))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_set_host_devices_gives_that_many_cpu_devices_and_refuses_once_jax_runs():
    result = run_python(
        "import json\n"
        "from mavrl_ppl.baselines.mcmc import set_host_devices\n"
        "from mavrl_ppl.baselines.mcmc.sampler import resolve_chain_method\n"
        "n = set_host_devices(2)\n"
        "import jax, jax.numpy as jnp\n"
        "jnp.zeros(1).block_until_ready()\n"
        "same = set_host_devices(2)\n"
        "try:\n"
        "    set_host_devices(3)\n"
        "    refused = False\n"
        "except RuntimeError:\n"
        "    refused = True\n"
        "print(json.dumps([n, jax.local_device_count(), same, refused, callable(resolve_chain_method('auto', 4)),\n"
        "                  callable(resolve_chain_method('auto', 3)), resolve_chain_method('auto', 1)]))"
    )
    assert result.returncode == 0, result.stderr
    n, count, same, refused, four, three, one = json.loads(result.stdout.strip().splitlines()[-1])
    assert (n, count, same, refused) == (2, 2, 2, True)
    assert four and three and one == "sequential"  # several chains: split over the 2 devices; 1 chain: no split


@pytest.mark.slow  # ~15-20 s, nearly all of it NumPyro/XLA compiling the warm-up and sampling loops
def test_run_nuts_returns_the_inference_data_contract():
    """A short run on a 4-state chain: names, dims and groups (DESIGN §6), diagnostics keys, inferred beta."""
    mdp = make_tabular("chain", size=4)
    feedback = simulate_feedback(TabularTeacher(mdp), {"pref": 16, "rating": 16, "stop": 16}, np.random.default_rng(0))
    feedback["pref"] = feedback["pref"].copy()
    del feedback["pref"].attrs["beta"]  # -> pref_beta is inferred
    # A contract test, not a convergence test: shallow trees keep the sampling itself short.
    settings = NutsSettings(
        num_chains=2,
        num_warmup=60,
        num_samples=40,
        max_tree_depth=4,
        seed=3,
        progress_bar=False,
        chain_method="sequential",
    )
    result = run_nuts(mdp, feedback, settings)
    idata = result.idata
    post = idata.posterior
    assert post["reward"].dims == ("chain", "draw", "state")
    assert post["reward"].shape == (2, 40, 4)
    assert set(post.data_vars) == {"reward", "rating_cutpoints", "pref_beta"}
    assert post["rating_cutpoints"].dims == ("chain", "draw", "cutpoint")
    assert np.all(np.diff(post["rating_cutpoints"].values, axis=-1) > 0)
    assert np.all(post["pref_beta"].values > 0)
    for stat in ("diverging", "tree_depth", "energy", "step_size", "n_steps", "lp", "acceptance_rate"):
        assert idata.sample_stats[stat].shape == (2, 40), stat
    assert set(idata.log_likelihood.data_vars) == {"pref", "rating", "stop"}
    assert idata.log_likelihood["stop"].dims == ("chain", "draw", "stop_item")
    assert idata.log_likelihood["stop"].shape == (2, 40, 16)
    assert np.all(idata.log_likelihood["pref"].values <= 0)
    assert set(idata.posterior_predictive.data_vars) == set(idata.observed_data.data_vars) == {"pref", "rating", "stop"}
    assert idata.attrs["inference"] == "nuts" and idata.attrs["seed"] == 3
    d = result.diagnostics
    assert set(d) == {
        "rhat_max",
        "ess_bulk_min",
        "ess_tail_min",
        "divergences",
        "tree_depth_max",
        "step_size_mean",
        "mean_steps",
        "rhat_lp",
        "lp_chain_means",
        "converged",
        "fit_seconds",
        "init_seconds",
    }
    assert d["converged"] == (d["rhat_max"] <= 1.01 and d["rhat_lp"] <= 1.01 and d["divergences"] == 0)
    lp = idata.sample_stats["lp"].values
    assert d["lp_chain_means"] == pytest.approx(lp.mean(axis=1).tolist())
    assert d["mean_steps"] == pytest.approx(float(idata.sample_stats["n_steps"].mean()))
    assert 1 <= d["mean_steps"] < 2 ** settings.max_tree_depth
    assert 0 < d["init_seconds"] < d["fit_seconds"]
    assert d["init_seconds"] == idata.attrs["init_seconds"]


@pytest.mark.slow
def test_all_four_types_on_a_small_grid_converge_and_recover_the_reward():
    """grid_trap 4x4 (16 state rewards), all four types: NUTS must converge (R-hat <= 1.01, bulk ESS >= 400) and the
    posterior mean must correlate with the true state rewards above 0.8 (measured 0.96; the trap
    cells at -4 and the goal at +1 are what the data pin down, the plain 0 cells are only weakly identified)."""
    mdp = make_tabular("grid_trap", size=4)
    feedback = simulate_feedback(TabularTeacher(mdp), ALL_FOUR, np.random.default_rng(0))
    # Chains start around the mode (NutsSettings.init "mode", at 1 sd): 4 x 1500 draws gave R-hat 1.003, ESS 990 (from
    # NumPyro's default start: 1.0096 and ~390). Divergent transitions: 1 of the 6000 at target_accept 0.8 and at 0.9
    # alike, and 3 once the model's functions were compiled as one program (the chains then differ by round-off, and
    # NUTS trajectories amplify it). They come from the stop likelihood's log barrier at zero regret (the lapse test
    # below has none), so the bound allows 0.1 % of the draws (6) rather than none.
    result = run_nuts(mdp, feedback, NutsSettings(num_warmup=500, num_samples=1500, seed=0, progress_bar=False))
    d = result.diagnostics
    assert d["rhat_max"] <= 1.01, d
    assert d["ess_bulk_min"] >= 400, d
    assert d["divergences"] <= 6, d
    mean = result.idata.posterior["reward"].mean(("chain", "draw")).values
    assert np.corrcoef(mean, mdp.group_rewards)[0, 1] > 0.8


@pytest.mark.slow
def test_with_a_stop_lapse_the_small_grid_has_no_divergent_transition():
    """The same problem with stops simulated and fitted under a 2 % lapse rate (feedback/stop.py): the stop likelihood
    has no log barrier, and NUTS has no divergent transition at all."""
    mdp = make_tabular("grid_trap", size=4)
    feedback = simulate_feedback(TabularTeacher(mdp), ALL_FOUR, np.random.default_rng(0), {"stop": {"lapse": 0.02}})
    result = run_nuts(mdp, feedback, NutsSettings(num_warmup=500, num_samples=1500, seed=0, progress_bar=False))
    d = result.diagnostics
    assert d["divergences"] == 0, d
    assert d["rhat_max"] <= 1.01 and d["ess_bulk_min"] >= 400, d
    mean = result.idata.posterior["reward"].mean(("chain", "draw")).values
    assert np.corrcoef(mean, mdp.group_rewards)[0, 1] > 0.8


@pytest.mark.slow
def test_same_seed_same_posterior():
    mdp = make_tabular("chain", size=4)
    feedback = simulate_feedback(TabularTeacher(mdp), {"pref": 8, "stop": 8}, np.random.default_rng(0))
    settings = NutsSettings(num_chains=2, num_warmup=30, num_samples=20, seed=5, progress_bar=False)
    first = run_nuts(mdp, feedback, settings).idata.posterior["reward"].values
    second = run_nuts(mdp, feedback, settings).idata.posterior["reward"].values
    np.testing.assert_array_equal(first, second)


def test_split_over_devices_runs_every_chain_on_its_device_and_keeps_their_order():
    """4 and 3 chains on 2 devices: each chain runs exactly once and the outputs come back stacked in chain order."""
    result = run_python(
        "import json\n"
        "from mavrl_ppl.baselines.mcmc import enable_x64, set_host_devices\n"
        "set_host_devices(2)\n"
        "enable_x64()  # the chain's int64 callback; nothing switches float64 on at import\n"
        "import jax, jax.numpy as jnp\n"
        "from jax.experimental import io_callback\n"
        "from mavrl_ppl.baselines.mcmc.sampler import split_over_devices\n"
        "seen = []\n"
        "def record(i):\n"
        "    seen.append(int(i))\n"
        "    return i\n"
        "def chain(args):\n"
        "    io_callback(record, jax.ShapeDtypeStruct((), jnp.int64), args['i'], ordered=False)\n"
        "    return {'twice': 2.0 * args['x'], 'index': args['i'] + 0}\n"
        "run = split_over_devices(2)(chain)\n"
        "out = run({'x': jnp.arange(8.0).reshape(4, 2), 'i': jnp.arange(4)})\n"
        "three = run({'x': jnp.arange(6.0).reshape(3, 2), 'i': jnp.arange(3)})\n"
        "print(json.dumps([out['twice'].tolist(), out['index'].tolist(), three['index'].tolist(), sorted(seen)]))"
    )
    assert result.returncode == 0, result.stderr
    twice, index, three, seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert twice == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0], [12.0, 14.0]]
    assert index == [0, 1, 2, 3] and three == [0, 1, 2]
    assert sorted(seen) == [0, 0, 1, 1, 2, 2, 3]  # every chain ran exactly once per call


def test_warm_up_trees_stop_at_their_own_depth_and_kept_draws_go_deeper():
    """A correlated Gaussian (corr 0.999: a diagonal mass matrix cannot undo it) needs long trajectories. With
    ``warmup_max_tree_depth=2`` no warm-up tree may exceed 3 leapfrog steps, while kept draws, bounded by
    ``max_tree_depth``, must use longer ones (a U-turn takes ~sqrt(1 / (1 - 0.999)) ~ 30 steps here)."""
    import jax
    import jax.numpy as jnp

    from mavrl_ppl.baselines.mcmc.devices import enable_x64
    from mavrl_ppl.baselines.mcmc.sampler import build_mcmc

    enable_x64()
    precision = jnp.linalg.inv(jnp.array([[1.0, 0.999], [0.999, 1.0]]))

    def potential(z):
        return 0.5 * z @ precision @ z

    settings = NutsSettings(num_chains=1, num_warmup=100, num_samples=50, warmup_max_tree_depth=2, max_tree_depth=8,
                            progress_bar=False)
    mcmc = build_mcmc(potential, settings)
    mcmc.warmup(jax.random.PRNGKey(0), init_params=jnp.zeros(2), extra_fields=("num_steps",), collect_warmup=True)
    warm = np.asarray(mcmc.get_extra_fields()["num_steps"])
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
    kept = np.asarray(mcmc.get_extra_fields()["num_steps"])
    assert warm.max() <= 3
    assert kept.max() <= 255 and np.median(kept) > 3


@pytest.mark.parametrize("bar", [True, False])
def test_build_mcmc_keeps_the_progress_bar_for_chains_split_over_devices(bar, monkeypatch):
    """NumPyro switches the bar off (with a warning, an error under this test suite) for a callable chain method;
    build_mcmc must not trigger that warning and must keep the bar the settings ask for."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    from mavrl_ppl.baselines.mcmc.sampler import build_mcmc, split_over_devices

    monkeypatch.setattr(
        "mavrl_ppl.baselines.mcmc.sampler.resolve_chain_method", lambda method, n: split_over_devices(2)
    )
    mcmc = build_mcmc(lambda: None, NutsSettings(num_chains=4, progress_bar=bar))
    assert callable(mcmc.chain_method)
    assert mcmc.progress_bar is bar


@pytest.mark.slow  # ~20-30 s: compiles and runs NUTS in a subprocess with 2 host devices
def test_progress_bars_advance_while_chains_run_split_over_two_devices():
    """4 chains on 2 devices (one thread per device): every chain's tqdm bar reaches its last iteration on stderr."""
    result = run_python(
        "from mavrl_ppl.baselines.mcmc import set_host_devices, NutsSettings, run_nuts\n"
        "set_host_devices(2)\n"
        "import numpy as np\n"
        "from mavrl_ppl.envs import make_tabular\n"
        "from mavrl_ppl.feedback import TabularTeacher, simulate_feedback\n"
        "mdp = make_tabular('chain', size=4)\n"
        "fb = simulate_feedback(TabularTeacher(mdp), {'pref': 8, 'stop': 8}, np.random.default_rng(0))\n"
        "r = run_nuts(mdp, fb, NutsSettings(num_chains=4, num_warmup=30, num_samples=20, max_tree_depth=3,\n"
        "                                   log_likelihood=False))\n"
        "print(r.idata.attrs['chain_method'])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "split_over_devices"
    for chain in range(4):
        assert f"Running chain {chain}" in result.stderr
    assert result.stderr.count("50/50") >= 4  # each bar reached the end (warm-up + samples = 50 iterations)


@pytest.mark.slow  # ~15 s: two short NUTS runs in a subprocess with 2 host devices
def test_split_over_devices_draws_what_sequential_chains_draw():
    """The device split changes where chains run, not what they compute: with the same seed the draws equal those
    of NumPyro's sequential chains (up to round-off: the two programs are compiled separately; measured 2e-8)."""
    result = run_python(
        "import json, numpy as np\n"
        "from mavrl_ppl.baselines.mcmc import set_host_devices, NutsSettings, run_nuts\n"
        "set_host_devices(2)\n"
        "from mavrl_ppl.envs import make_tabular\n"
        "from mavrl_ppl.feedback import TabularTeacher, simulate_feedback\n"
        "mdp = make_tabular('chain', size=4)\n"
        "fb = simulate_feedback(TabularTeacher(mdp), {'pref': 8, 'rating': 8, 'stop': 8}, np.random.default_rng(0))\n"
        "post = {}\n"
        "for method in ('auto', 'sequential'):\n"
        "    s = NutsSettings(num_chains=4, num_warmup=30, num_samples=20, max_tree_depth=3, chain_method=method,\n"
        "                     progress_bar=False, log_likelihood=False)\n"
        "    r = run_nuts(mdp, fb, s)\n"
        "    post[r.idata.attrs['chain_method']] = r.idata.posterior['reward'].values\n"
        "a, b = post['split_over_devices'], post['sequential']\n"
        "print(json.dumps([float(np.abs(a - b).max()), float(np.abs(a[0] - a[2]).max())]))"
    )
    assert result.returncode == 0, result.stderr
    difference, between_chains = json.loads(result.stdout.strip().splitlines()[-1])
    assert difference < 1e-6
    assert between_chains > 1e-3  # the chains of the second round are not copies of the first


def test_the_compilation_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    from mavrl_ppl.baselines.mcmc.devices import compilation_cache_dir

    monkeypatch.setenv("MAVRL_JAX_CACHE", str(tmp_path / "c"))
    assert compilation_cache_dir() == tmp_path / "c"
    monkeypatch.setenv("MAVRL_JAX_CACHE", "OFF")
    assert compilation_cache_dir() is None
    monkeypatch.delenv("MAVRL_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache_dir() == tmp_path / "xdg" / "mavrl_ppl" / "jax"
