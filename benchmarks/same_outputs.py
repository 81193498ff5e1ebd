"""Check that two sets of run directories hold the same results: ``metrics.json`` equal apart from ``*_seconds``
keys, and every variable of ``posterior.nc``'s ``posterior`` group equal to the last bit.

Used to show that a restructuring changed no result: run the reference commands with the old and the new code into
two folders, then ``python benchmarks/same_outputs.py OLD_DIR NEW_DIR`` (each holding run directories of the same
names). Exit status 0 when every run matches, 1 otherwise; one line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from mavrl_ppl.netcdf import ENGINE

#: Timings differ between any two runs; ``total_seconds`` and the like are not results.
TIMING_SUFFIX = "_seconds"


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.endswith(TIMING_SUFFIX)}


def compare_run(old: Path, new: Path) -> list[str]:
    """The differences between two run directories (empty when they match)."""
    problems = []
    a, b = _metrics(old), _metrics(new)
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            problems.append(f"metrics key {key!r} only in {'new' if key in b else 'old'}")
        elif json.dumps(a[key]) != json.dumps(b[key]):
            problems.append(f"metrics {key}: {a[key]!r} != {b[key]!r}")
    pa = xr.load_dataset(old / "posterior.nc", group="posterior", engine=ENGINE)
    pb = xr.load_dataset(new / "posterior.nc", group="posterior", engine=ENGINE)
    for name in sorted(set(pa.data_vars) | set(pb.data_vars)):
        if name not in pa or name not in pb:
            problems.append(f"posterior variable {name!r} only in {'new' if name in pb else 'old'}")
        elif pa[name].shape != pb[name].shape or not np.array_equal(pa[name].values, pb[name].values):
            diff = np.max(np.abs(pa[name].values - pb[name].values)) if pa[name].shape == pb[name].shape else "shape"
            problems.append(f"posterior {name}: values differ (max abs difference {diff})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="folder of run directories made by the old code")
    parser.add_argument("new", type=Path, help="folder of run directories of the same names made by the new code")
    args = parser.parse_args(argv)
    runs = sorted(p.name for p in args.old.iterdir() if (p / "metrics.json").is_file())
    if not runs:
        print(f"error: no run directories in {args.old}", file=sys.stderr)
        return 2
    failed = 0
    for name in runs:
        problems = compare_run(args.old / name, args.new / name) if (args.new / name).is_dir() else ["missing"]
        failed += bool(problems)
        print(f"{name}: {'identical' if not problems else 'DIFFERENT: ' + '; '.join(problems)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
