"""The default test suite's wall time and peak memory (issue 18: under 4 minutes and 1.5 GB on an idle 2-core machine).

Runs ``python -m pytest -q -p no:cacheprovider`` (the README's ``pytest``, default markers) ``--repeats`` times from the
repository root, each in a fresh process, and records per run the wall time, the pytest process's own peak resident
memory and the largest peak of any process it started (fits run as subprocesses in the CLI tests), plus the slowest
tests of the last run. Usage: ``python benchmarks/test_suite.py [--repeats 1] [--no-write]``. Quote it only from an
idle machine: the load average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil  # a dependency of dask.distributed
from _common import kept_notes, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
HEADER = "## Default test suite: time and peak memory (issue 18)"
#: pytest runs in the probe's own process, so RUSAGE_SELF is the pytest process's peak and RUSAGE_CHILDREN the largest
#: peak of any process the suite started and waited for (the CLI tests' fits).
PROBE = ("import resource, sys, pytest\n"
         "code = pytest.main(['-q', '-p', 'no:cacheprovider', '--durations=8', '-rf'])\n"
         "print('PEAK_SELF_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
         "print('PEAK_CHILD_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
         "sys.exit(int(code))\n")


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants now (shared pages counted once per process)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a test's subprocess may exit between listing and reading
            total += p.memory_info().rss
    return total


#: A fixed single-threaded workload whose seconds say how fast this (virtual) machine is right now. On 2026-12-03 the
#: same idle machine took 240 s for the suite in one hour and 358 s in the next, and the default fit command 21.4 s
#: against 7.4 s on an earlier day, with the load average near 0 every time; the probe (added then) read 3.2 s.
#: A timing is only comparable with one made at a similar probe.
SPEED_PROBE = ("import time\nt = time.perf_counter()\ns = 0\nfor i in range(20_000_000):\n    s += i\n"
               "print(time.perf_counter() - t)")


def speed_probe() -> float:
    """Seconds of :data:`SPEED_PROBE` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", SPEED_PROBE], capture_output=True, text=True, check=True)
    return float(done.stdout)


def one_run() -> dict:
    probe = speed_probe()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    tree, peak_tree = psutil.Process(done.pid), 0
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(done.stdout), daemon=True)
    reader.start()
    while done.poll() is None:
        peak_tree = max(peak_tree, tree_rss(tree))
        time.sleep(0.25)
    reader.join()
    wall = time.perf_counter() - start
    lines = "".join(output).strip().splitlines()
    peak = {x.split()[0]: int(x.split()[1]) for x in lines if x.startswith("PEAK_")}
    summary = next((x for x in reversed(lines) if " passed" in x or " failed" in x), "?")
    slowest = [x for x in lines if x.strip() and x.split()[0].endswith("s") and " call " in x][:8]
    return {"wall": wall, "exit": done.returncode, "summary": summary.strip("= "),
            "peak_pytest_mb": peak["PEAK_SELF_KB"] / 1024,
            "peak_tree_mb": peak_tree / 2**20, "peak_any_child_mb": peak["PEAK_CHILD_KB"] / 1024,
            "load_before": load_before, "load_after": os.getloadavg()[0], "slowest": slowest, "probe": probe,
            "failed": [x for x in lines if x.startswith("FAILED")]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="suite runs (each several minutes)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    info = machine()
    runs = []
    for _ in range(args.repeats):
        runs.append(one_run())
        print({k: v for k, v in runs[-1].items() if k not in ("slowest", "failed")}, *runs[-1]["failed"], sep="\n",
              flush=True)
    median_wall = statistics.median(r["wall"] for r in runs)  # of an even count: the mean of the middle two
    lines = [HEADER, "", f"Command: `python benchmarks/test_suite.py --repeats {args.repeats}` (runs `pytest` as the "
             f"README does: two pytest-xdist workers). Machine: {info['nproc']} cores, {info['cpu']}, "
             f"Python {info['python']}.", "",
             "| run | result | wall (s) | pytest peak RSS (MiB) | largest child peak RSS (MiB) | all processes at "
             "once, peak (MiB) | load before / after | speed probe before (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        lines.append(f"| {i + 1} | {r['summary']} | {r['wall']:.0f} | {r['peak_pytest_mb']:.0f} | "
                     f"{r['peak_any_child_mb']:.0f} | {r['peak_tree_mb']:.0f} | "
                     f"{r['load_before']:.2f} / {r['load_after']:.2f} | {r['probe']:.2f} |")
    lines += ["", f"Median wall time {median_wall:.0f} s (target < 240 s). The first two peaks are maxima "
              "of single processes (the pytest-xdist workers are children of pytest; target < 1.5 GB); the third is "
              "the largest sum of the resident memory of pytest and all its descendants, sampled every 0.25 s. "
              "The speed probe is a fixed pure-Python loop (SPEED_PROBE in the script): larger is a slower machine.",
              "",
              "Slowest tests of the last run:", "", "```", *runs[-1]["slowest"], "```"]
    notes = kept_notes(HEADER)  # hand-written history and analysis, kept across rewrites
    if notes:
        lines += ["", notes]
    if not args.no_write:
        write_section("\n".join(lines), HEADER)
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
