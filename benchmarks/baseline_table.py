"""The baseline table (issue 5): MAVRL-SVI vs NUTS vs Post-Hoc on the paper grids, into RESULTS.md with its cost.

Run from the repository root::

    python benchmarks/baseline_table.py                        # 3 grids x seeds 0-9 into runs/table, one fit at a time
    python benchmarks/baseline_table.py --seeds 0-4            # part of it; a later call reuses the finished runs
    python benchmarks/baseline_table.py --no-write             # tabulate without touching RESULTS.md

It calls ``python -m mavrl_ppl.experiments.baseline_table`` (same arguments; finished runs under ``--out`` are reused,
so the table can be built over several invocations; each finished env and seed is recorded in ``--records``, by
default ``benchmarks/baseline_table_records/``, which is committed: a later invocation on another machine takes those
cells from their records and fits only the rest) and copies the table's Markdown into this script's section of
RESULTS.md, with the machine, the load average before and after, and the wall time of this invocation. The runs'
own ``total_seconds`` (in the table) are the machine time of the whole table, however many invocations built it.
``--jobs`` defaults to 1 here (not to the number of cores as in the command): NUTS already keeps both cores busy,
and a parallel SVI fit would inflate its wall time. A ``### Notes`` subsection already in the section is kept.

Targets (issue 5): the whole 3 x 10 table in <= 20 minutes on this 2-core machine; SVI's posterior mean inside
NUTS's 90% interval for >= 90% of the rewards.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from _common import TABLE_RECORDS, kept_notes, machine, write_section

from mavrl_ppl.analysis import baseline_table

SECTION = "## Baseline table (issue 5)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["grid_cliff", "grid_sparse", "grid_trap"])
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/table"), help="the table's directory (reused)")
    parser.add_argument("--records", type=Path, default=TABLE_RECORDS, help="cell records (committed; reused)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel fits")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    command = "python benchmarks/baseline_table.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    before = machine()
    start = time.perf_counter()
    status = baseline_table.main(["--envs", *args.envs, "--seeds", args.seeds, "--out", str(args.out),
                                  "--records", str(args.records), "--jobs", str(args.jobs), "--quiet"])
    wall = time.perf_counter() - start
    if status != 0:
        return status
    table = (args.out / "baseline_table.md").read_text()
    print(table)
    if args.no_write:
        return 0
    after = machine()
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (this invocation: {wall:.0f} s wall). Each fit is `python -m mavrl_ppl.fit` with its "
        "defaults (SVI: `SVISettings()`; NUTS: `NutsSettings()`, 4 chains x 1000 draws after 500 warm-up, on the "
        "SVI run's `feedback.nc`); data = the paper allocation pref 64 / demo 1 / rating 64 / stop 256 simulated "
        "with the seed.",
        "",
        f"Machine: {before['nproc']} cores (`nproc`), {before['cpu']}, Python {before['python']}, "
        f"{before['platform']}. Load average before: {before['load']}; after: {after['load']}. "
        f"Recorded {datetime.now():%Y-%m-%d %H:%M}.",
        "",
        demote_headers(table).rstrip("\n"),
    ]
    notes = kept_notes(SECTION)
    if notes:
        lines += ["", notes]
    write_section("\n".join(lines) + "\n", SECTION)
    return 0


def demote_headers(markdown: str) -> str:
    """One level down (``##`` -> ``###``), so the table sits inside this script's section."""
    return "\n".join("#" + line if line.startswith("##") else line for line in markdown.splitlines()) + "\n"


if __name__ == "__main__":
    sys.exit(main())
