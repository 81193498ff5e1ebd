"""Where the default command's time goes: imports, simulation, training, posterior draws, evaluation, writes, plots.

Each repeat runs ``python benchmarks/profile_command.py --child`` in a fresh interpreter: the child takes the clock
before its first import, then runs ``mavrl_ppl.fit.main`` (the default command, ``--quiet``) with the pipeline's
stages wrapped in timers, so the phases are those of the real command, not of a re-implementation. Phases nest:
``fit (training)`` holds the SVI loop; ``torch optimizer import`` is torch's first ``Optimizer`` construction, which
imports ``torch._dynamo``; imports before ``main`` are ``imports``. The remainder is the command's own bookkeeping.

Usage: ``python benchmarks/profile_command.py [--repeats 5] [--before DIR] [--write]`` (``--before``: a checkout of an
earlier commit, e.g. a git worktree, profiled interleaved beside this one, its package first on the path;
``--write``: the median table into ``benchmarks/RESULTS.md``, section "Default command profile (issue 26)").
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

SECTION = "Default command profile (issue 26)"

#: (label, module, attribute) of every timed stage; the module is imported when the stage is wrapped.
STAGES = (
    ("simulate + load settings", "mavrl_ppl.runs", "make_problem"),
    ("fit (training)", "mavrl_ppl.inference.svi", "fit_svi"),
    ("posterior draws", "mavrl_ppl.inference.svi", "posterior_draws"),
    ("log-likelihood + predictive", "mavrl_ppl.analysis.predictive", "evaluate_feedback"),
    ("InferenceData", "mavrl_ppl.analysis.posterior", "build_inference_data"),
    ("metrics (planning, EPIC)", "mavrl_ppl.runs", "_tabular_metrics"),
    ("write feedback.nc", "mavrl_ppl.feedback.data", "save_feedback"),
    ("plots", "mavrl_ppl.runs", "_plot_run"),
)


#: Heavy imports timed one group at a time, in the order the command first needs them.
IMPORTS = (
    ("import xarray + netCDF", ("xarray", "h5netcdf", "mavrl_ppl.feedback.data")),
    ("import torch + pyro", ("torch", "pyro", "mavrl_ppl.inference.svi")),
    ("import arviz", ("arviz", "mavrl_ppl.analysis.posterior", "mavrl_ppl.analysis.predictive")),
    ("import matplotlib", ("matplotlib.pyplot", "mavrl_ppl.analysis.plots")),
)


def _child(out: Path) -> dict[str, float]:
    import importlib

    times: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[label] = times.get(label, 0.0) + time.perf_counter() - t0
        return wrapper

    import mavrl_ppl.fit as command  # the command's own imports

    if hasattr(command, "hide_dask"):  # as python -m mavrl_ppl.fit does first (commits since this session's)
        command.hide_dask()
    main = command.main

    times["imports"] = time.perf_counter() - START
    # The command imports its heavy libraries lazily, inside the stages; imported here first, each is timed alone
    # (the total is the same; the stages below then exclude them).
    for label, modules in IMPORTS:
        t0 = time.perf_counter()
        for module in modules:
            importlib.import_module(module)
        times[label] = time.perf_counter() - t0
    for label, module, name in STAGES:
        mod = importlib.import_module(module)
        setattr(mod, name, timed(label, getattr(mod, name)))
    import arviz as az
    import torch

    az.InferenceData.to_netcdf = timed("write posterior.nc", az.InferenceData.to_netcdf)
    torch.optim.Optimizer.__init__ = timed("torch optimizer import", torch.optim.Optimizer.__init__)
    t0 = time.perf_counter()
    status = main(["--quiet", "--out", str(out)])
    times["main"] = time.perf_counter() - t0
    times["command"] = time.perf_counter() - START
    if status != 0:
        raise SystemExit(status)
    metrics = json.loads((out / "metrics.json").read_text())
    times["score"] = metrics["normalized_score"]
    return times


ROOT = Path(__file__).resolve().parents[1]


def _commit(source: Path) -> str:
    return subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the median table into RESULTS.md")
    parser.add_argument("--before", help="a checkout of an earlier commit, profiled interleaved beside this one")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import machine, write_section

    load_before = os.getloadavg()
    sources = {"before": Path(args.before).resolve(), "after": ROOT} if args.before else {"after": ROOT}
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for i in range(args.repeats):
        for name in (list(sources) if i % 2 == 0 else list(sources)[::-1]):  # interleaved, alternating order
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / "run")],
                                      capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(sources[name])})
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"run {i} {name}: command {runs[name][-1]['command']:.2f} s, training "
                  f"{runs[name][-1]['fit (training)']:.2f} s", file=sys.stderr)
    load_after = os.getloadavg()
    labels = ["imports", *(i[0] for i in IMPORTS), *(s[0] for s in STAGES), "write posterior.nc",
              "torch optimizer import"]

    def medians(rs: list[dict]) -> dict[str, float]:
        med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in [*labels, "main", "command"]}
        staged = (med["imports"] + sum(med[i[0]] for i in IMPORTS) + sum(med[s[0]] for s in STAGES)
                  + med["write posterior.nc"])
        med["other"] = med["command"] - staged
        return med

    med = {name: medians(rs) for name, rs in runs.items()}
    names = list(sources)
    rows = ["| phase | " + " | ".join(f"{n}: median s | share" for n in names) + " |",
            "|---|" + "---:|---:|" * len(names)]
    for k, shown in [*((k, k) for k in labels), ("other", "other (settings, run directory, JSON, ...)"),
                     ("command", "**command**")]:
        rows.append(f"| {shown} | " + " | ".join(f"{med[n][k]:.2f} | {100 * med[n][k] / med[n]['command']:.0f} %"
                                               for n in names) + " |")
    m = machine()
    header = f"## {SECTION}"
    scores = sorted({r["score"] for rs in runs.values() for r in rs})
    before = (f" `before` is `{args.before}` ({_commit(sources['before'])}), `after` this checkout "
              f"({_commit(ROOT)}), interleaved." if args.before else f" This checkout: {_commit(ROOT)}.")
    text = "\n".join([
        header,
        "",
        f"Command: `python benchmarks/profile_command.py --repeats {args.repeats}"
        + (" --before DIR" if args.before else "") + " --write` (the default command, "
        "`python -m mavrl_ppl.fit --quiet`, with its stages timed in a fresh interpreter each repeat)." + before,
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}. Load average at start: "
        + " / ".join(f"{x:.2f}" for x in load_before) + "; at end: " + " / ".join(f"{x:.2f}" for x in load_after)
        + f". Recorded {time.strftime('%Y-%m-%d %H:%M')}. Scores: {scores}.",
        "",
        *rows,
        "",
        "`fit (training)` includes the `torch optimizer import` (torch imports `torch._dynamo` when the first "
        "optimizer is built); the heavy libraries are imported before the stages, each group timed alone.",
    ])
    print(text)
    if args.write:
        write_section(text, header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
