"""Importing the package stays light (DESIGN §1, §8): no JAX (only ``baselines.mcmc`` may import it), no
stable-baselines3 or Optuna (only ``experiments`` may). Checked in a fresh interpreter, since this test process
may already have imported any of them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("jax", "jaxlib", "numpyro", "stable_baselines3", "optuna")

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


@pytest.mark.parametrize("modules", [["mavrl_ppl"], ["mavrl_ppl.feedback"], ["mavrl_ppl", "mavrl_ppl.feedback"]])
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
