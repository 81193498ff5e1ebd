"""The default command side by side with an earlier commit (issue 26: against 0ea72e4, wall <= 0.5x, fit <= 0.4x).

Runs ``python -m mavrl_ppl.fit --quiet --out DIR`` (the README's default run: grid_trap, seed 0, all four types) from
this checkout and from a git worktree of ``--baseline`` (made in a temporary directory unless ``--baseline-dir`` names
one), interleaved (the order alternates every round so neither side always runs first), one BLAS/OpenMP thread each,
``--runs`` rounds. Per run: wall seconds, CPU seconds and peak resident memory of the command's process (``os.wait4``),
its own ``fit_seconds`` (the SVI loop) and score from ``metrics.json``. The medians and their ratios go into
``benchmarks/RESULTS.md`` (``--write``), with the machine and its load before and after.

Usage: ``python benchmarks/speed_vs_baseline.py [--baseline 0ea72e4] [--runs 5] [--write]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import kept_notes, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
HEADER = "## Default command side by side with an earlier commit (issue 26)"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def one_run(source: Path, out: Path) -> dict:
    """The default command from ``source`` (its package first on the path) into ``out``."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mavrl_ppl.fit", "--quiet", "--out", str(out)], cwd=out.parent,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{source}: exit {proc.returncode}: {stderr.strip()[-500:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
            "fit": metrics["fit_seconds"], "score": metrics["normalized_score"], "epic": metrics["epic"]}


def baseline_source(commit: str, given: str | None, scratch: Path) -> Path:
    if given:
        return Path(given).resolve()
    path = scratch / f"baseline-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="0ea72e4", help="the earlier commit (default 0ea72e4)")
    parser.add_argument("--baseline-dir", help="a checkout of it to use instead of a temporary worktree")
    parser.add_argument("--runs", type=int, default=5, help="rounds, each running both sides once (default 5)")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_before = machine()["load"]
    with tempfile.TemporaryDirectory(prefix="speed_vs_baseline_") as tmp:
        scratch = Path(tmp)
        sides = {"baseline": baseline_source(args.baseline, args.baseline_dir, scratch), "now": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        try:
            for round_ in range(args.runs):
                order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
                for name in order:
                    result = one_run(sides[name], scratch / f"{name}-{round_}")
                    runs[name].append(result)
                    print(f"round {round_} {name}: wall {result['wall']:.2f} s, fit {result['fit']:.2f} s, "
                          f"peak {result['peak_mb']:.0f} MB, score {result['score']}", flush=True)
        finally:
            if not args.baseline_dir:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(sides["baseline"])],
                               check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    median = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "peak_mb", "fit")}
              for name, rs in runs.items()}
    info = machine()
    lines = [HEADER, "",
             f"Command: `python benchmarks/speed_vs_baseline.py --baseline {args.baseline} --runs {args.runs} --write`"
             f" — `python -m mavrl_ppl.fit --quiet` (grid_trap 10x10, seed 0, all four types) from {args.baseline} "
             f"and from {head} (this checkout, uncommitted changes included), interleaved, one BLAS/OpenMP thread "
             "each.", "",
             f"Machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}. Load average before: "
             f"{load_before}; after: {info['load']}. Recorded "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC.", "",
             "| round | side | wall (s) | CPU (s) | fit (s) | peak RSS (MB) | score | EPIC |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for round_ in range(args.runs):
        for name in sides:
            r = runs[name][round_]
            lines.append(f"| {round_} | {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['fit']:.2f} | "
                         f"{r['peak_mb']:.0f} | {r['score']:.1f} | {r['epic']:.4f} |")
    b, n = median["baseline"], median["now"]
    lines += ["", "| median | wall (s) | CPU (s) | fit (s) | peak RSS (MB) |", "|---|---:|---:|---:|---:|",
              f"| {args.baseline} | {b['wall']:.2f} | {b['cpu']:.2f} | {b['fit']:.2f} | {b['peak_mb']:.0f} |",
              f"| {head} | {n['wall']:.2f} | {n['cpu']:.2f} | {n['fit']:.2f} | {n['peak_mb']:.0f} |",
              f"| ratio | {n['wall'] / b['wall']:.2f} | {n['cpu'] / b['cpu']:.2f} | {n['fit'] / b['fit']:.2f} | "
              f"{n['peak_mb'] / b['peak_mb']:.2f} |", "",
              "Targets (issue 26): wall <= 0.5x, fit <= 0.4x, peak memory not above the baseline's."]
    notes = kept_notes(HEADER)  # the hand-written notes below the table survive a re-run
    text = "\n".join(lines) + "\n" + (f"\n{notes}\n" if notes else "")
    print(text)
    if args.write:
        write_section(text, HEADER)


if __name__ == "__main__":
    main()
