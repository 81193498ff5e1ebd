"""Reading and writing a run's NetCDF files through netCDF-C (the package's engine, ``mavrl_ppl.netcdf.ENGINE``)
against h5netcdf, side by side in one process, on the default run's own files.

Run from the repository root::

    python benchmarks/netcdf_io.py RUN_DIR [--repeats 7] [--no-write]

``RUN_DIR`` is a run of ``python -m mavrl_ppl.fit`` (the default: grid_trap, seed 0). Per engine and file, the median
seconds of ``--repeats`` timed calls (interleaved engine by engine, after a warm-up) of: ``save_feedback`` +
``load_feedback`` on ``feedback.nc``'s data, and writing + reading ``posterior.nc``'s InferenceData. The ratio column
compares the two engines in the same run, so it holds across machines better than the seconds do. ``load_feedback``
lists the groups through netCDF-C under either engine (a header read common to both columns).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import machine, write_section

import mavrl_ppl.feedback.data as feedback_data
from mavrl_ppl.netcdf import ENGINE, arviz

SECTION = "## NetCDF engine: netCDF-C against h5netcdf (issues 18, 26)"
OTHER = "h5netcdf"


def workloads(run: Path, scratch: Path, engine: str) -> dict[str, Callable[[], object]]:
    """Name -> a call doing that I/O through ``engine``."""
    az = arviz()
    feedback = feedback_data.load_feedback(run / "feedback.nc")
    with az.rc_context({"data.load": "eager"}):
        idata = az.from_netcdf(str(run / "posterior.nc"))
    fb_path, post_path = scratch / f"feedback_{engine}.nc", scratch / f"posterior_{engine}.nc"

    def use(fn):
        def call():
            previous, feedback_data.ENGINE = feedback_data.ENGINE, engine  # save/load_feedback read the constant
            try:
                return fn()
            finally:
                feedback_data.ENGINE = previous
        return call

    def read_posterior():
        with az.rc_context({"data.load": "eager"}):
            return az.from_netcdf(str(post_path), engine=engine)

    return {"write feedback.nc": use(lambda: feedback_data.save_feedback(fb_path, feedback)),
            "read feedback.nc": use(lambda: feedback_data.load_feedback(fb_path)),
            "write posterior.nc": lambda: idata.to_netcdf(str(post_path), engine=engine),
            "read posterior.nc": read_posterior}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory of python -m mavrl_ppl.fit")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    info = machine()
    with tempfile.TemporaryDirectory() as scratch:
        calls = {engine: workloads(args.run, Path(scratch), engine) for engine in (ENGINE, OTHER)}
        times: dict[tuple[str, str], list[float]] = {}
        for name in calls[ENGINE]:  # writes before reads: each read reads the file its engine wrote
            for engine in calls:
                calls[engine][name]()  # warm-up
            for _ in range(args.repeats):
                for engine in calls:  # interleaved, so a change of machine speed hits both
                    start = time.perf_counter()
                    calls[engine][name]()
                    times.setdefault((name, engine), []).append(time.perf_counter() - start)
    rows = ["| workload | netCDF-C (s) | h5netcdf (s) | ratio |", "|---|---:|---:|---:|"]
    for name in calls[ENGINE]:
        ours, theirs = (statistics.median(times[(name, e)]) for e in (ENGINE, OTHER))
        rows.append(f"| {name} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
    text = "\n".join([SECTION, "", f"Command: `python benchmarks/netcdf_io.py RUN_DIR --repeats {args.repeats}` "
                      f"(RUN_DIR: `python -m mavrl_ppl.fit --env grid_trap --seed 0`). Machine: {info['nproc']} "
                      f"cores, {info['cpu']}, Python {info['python']}, load {info['load']}. Medians of "
                      f"{args.repeats} interleaved calls per engine.", "", *rows, ""])
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
