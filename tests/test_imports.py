"""Importing the package stays light (DESIGN §1, §8): no JAX (only ``baselines.mcmc`` may import it), no
stable-baselines3 or Optuna (only ``experiments`` may). Checked in a fresh interpreter, since this test process
may already have imported any of them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("jax", "jaxlib", "numpyro", "stable_baselines3", "optuna", "dask")

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


@pytest.mark.parametrize("modules", [["mavrl_ppl"], ["mavrl_ppl.feedback"], ["mavrl_ppl.runs", "mavrl_ppl.fit"],
                                     ["mavrl_ppl.baselines.mcmc", "mavrl_ppl.planning"]])
def test_import_does_not_pull_in_heavy_backends(modules):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(forbidden=set(FORBIDDEN)), *modules],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {modules} imported {loaded}"


def test_the_public_api_runs_a_fit_in_process(tmp_path):
    """``mavrl_ppl.run`` is the command's pipeline: a tiny grid run writes a loadable run directory whose metrics
    score the posterior mean it holds."""
    import mavrl_ppl
    from mavrl_ppl.analysis.metrics import evaluate_reward, learned_reward

    settings = {"env": "grid_trap", "env_size": 4, "feedback": "pref=16,demo=1,rating=16,stop=32",
                "svi": {"max_steps": 40, "num_posterior_samples": 50}}
    result = mavrl_ppl.run(settings, tmp_path / "run")
    loaded = mavrl_ppl.load_run(result.out)
    assert loaded.metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    mdp = loaded.mdp()
    rescored = evaluate_reward(mdp, learned_reward(mdp, loaded.posterior_mean()))
    assert rescored["normalized_score"] == loaded.metrics["normalized_score"]
    assert loaded.config["svi"]["max_steps"] == 40 and loaded.config["env_size"] == 4
    with pytest.raises(mavrl_ppl.UsageError, match="already exists"):
        mavrl_ppl.run(settings, tmp_path / "run")
    with pytest.raises(mavrl_ppl.UsageError, match=r"unknown \[svi\] setting 'max_step'; valid: .*max_steps"):
        mavrl_ppl.resolve_config({"svi": {"max_step": 3}})
