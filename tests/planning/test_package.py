"""``mavrl_ppl.planning`` is a leaf: importing it loads numpy only (no torch, no JAX, nothing else of the library), and
importing the JAX backend does not switch JAX to float64. Checked in a fresh interpreter, since this test process may
already have imported any of them."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import mavrl_ppl
before = set(sys.modules)
import mavrl_ppl.planning
new = set(sys.modules) - before
leaf = sorted(m for m in new if m.split(".")[0] in {"torch", "jax", "jaxlib", "numpyro", "pyro"})
library = sorted(m for m in new if m.startswith("mavrl_ppl.") and not m.startswith("mavrl_ppl.planning"))
import mavrl_ppl.planning.jax_backend
import jax
print(json.dumps([leaf, library, bool(jax.config.jax_enable_x64)]))
"""


def test_planning_is_a_numpy_only_leaf():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    heavy, library, x64 = json.loads(result.stdout.strip().splitlines()[-1])
    assert heavy == [], f"importing mavrl_ppl.planning imported {heavy}"
    assert library == [], f"mavrl_ppl.planning imported other parts of the library: {library}"
    assert x64 is False, "importing mavrl_ppl.planning.jax_backend switched JAX to float64"
