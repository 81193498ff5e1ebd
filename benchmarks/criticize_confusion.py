"""Per-type criticism on clean vs deliberately corrupted data (issue 24 part 3): the confusion counts behind the
thresholds of :mod:`mavrl_ppl.analysis.criticize`.

Run from the repository root::

    python benchmarks/criticize_confusion.py fit --env grid_trap --seeds 0-4 --out /tmp/crit   # the runs
    python benchmarks/criticize_confusion.py criticize --out /tmp/crit                           # one JSON per run
    python benchmarks/criticize_confusion.py misspec --out /work/misspec_full --no-refit --only 0-4  # issue 24's runs

``fit`` runs the default SVI fit (the paper's allocation) per seed, then corrupts ONE type of that run's
``feedback.nc`` at a time and fits it with ``--data`` (same seed): preferences get coin-flip labels, the demonstration
uniformly random actions, ratings are shuffled across items (``ratingrev``: reversed, K-1-r), stop times are shuffled
across items. Runs are skipped when their directory exists (resumable). ``criticize`` writes
``<run>/criticism.json`` (the ``--json`` output plus the seconds it took; the refits are kept in ``<run>/refits``) for
every run without one and prints the confusion table: per condition, how often each type was called conflicting
(under today's thresholds, recomputed from the recorded evidence).

This is not the teacher != model misspecification of issue 24 part 1 (another setting); it is the crude corruption the
criticism's tests use, measured on more seeds. ``misspec`` criticises the runs of that misspecification table
instead (``python -m mavrl_ppl.experiments.misspec --out OUT``): the well-specified PDRS runs
``OUT/runs/base-pdrs_<env>_seed<S>`` (condition ``clean``) and the corrupted ones
``OUT/runs/misspec-pdrs_<type>_<env>_seed<S>`` (condition ``pdrs_<type>``), writing ``criticism.json`` into each
and printing the same table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mavrl_ppl.experiments.baseline_table import parse_seeds

CORRUPTIONS = ("pref", "demo", "rating", "stop")
#: Conditions beyond one corruption per type: ratings reversed (K-1-r), a source that contradicts the others rather
#: than one that says nothing (shuffled ratings).
EXTRA = {"ratingrev": "rating"}


def corrupt(feedback: dict, name: str, rng: np.random.Generator) -> dict:
    """A copy of ``feedback`` with type ``name``'s labels made uninformative (see the module docstring)."""
    out = dict(feedback)
    kind = EXTRA.get(name, name)
    ds = feedback[kind].copy(deep=True)
    if name == "pref":
        ds["preference"].values[:] = rng.integers(0, 2, ds.sizes["item"])
    elif name == "demo":
        ds["action"].values[:] = rng.integers(0, int(ds.attrs["num_actions"]), ds["action"].shape)
    elif name == "rating":
        ds["rating"].values[:] = rng.permutation(ds["rating"].values)
    elif name == "ratingrev":
        ds["rating"].values[:] = int(ds.attrs["num_categories"]) - 1 - ds["rating"].values
    elif name == "stop":
        ds["stop_time"].values[:] = rng.permutation(ds["stop_time"].values)
    else:
        raise ValueError(f"no corruption for {name!r}")
    out[kind] = ds
    return out


def fit_all(env: str, seeds: list[int], out: Path, conditions: list[str]) -> None:
    from mavrl_ppl.feedback.data import load_feedback, save_feedback
    from mavrl_ppl.runs import run

    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        clean = out / f"{env}_seed{seed}_clean"
        if not clean.exists():
            run({"env": env, "seed": seed}, clean)
        for name in conditions:
            target = out / f"{env}_seed{seed}_{name}"
            if target.exists():
                continue
            data = out / f"{env}_seed{seed}_{name}.nc"
            save_feedback(data, corrupt(load_feedback(clean / "feedback.nc"), name, np.random.default_rng(seed)))
            run({"data": str(data), "seed": seed}, target)
        print(f"seed {seed} fitted", file=sys.stderr, flush=True)


def _corruption_runs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if (p / "metrics.json").is_file())


def _misspec_runs(out: Path) -> list[Path]:
    runs = out / "runs"
    return sorted(p for p in runs.iterdir() if (p / "metrics.json").is_file()
                  and (p.name.startswith("base-pdrs_") or p.name.startswith("misspec-pdrs_")))


def run_label(run_dir: Path) -> tuple[str, str, int]:
    """``(env, condition, seed)`` of a run directory of either layout (see the module docstring)."""
    name = run_dir.name
    if name.startswith(("base-pdrs_", "misspec-pdrs_")):  # <role>-<condition>_<env>_seed<S>
        role, _, rest = name.partition("-")
        head, _, seed = rest.rpartition("_seed")
        env = "grid_" + head.rpartition("_grid_")[2]
        condition = "clean" if role == "base" else head.rpartition("_grid_")[0]
        return env, condition, int(seed)
    head, _, rest = name.rpartition("_seed")  # <env>_seed<S>_<condition>
    seed, _, condition = rest.partition("_")
    return head, condition, int(seed)


def criticize_all(out: Path, again: bool = False, only: list[int] | None = None, refit: bool = True,
                  misspec: bool = False) -> None:
    from mavrl_ppl.analysis.criticize import criticize_run, summary_dict

    for run_dir in (_misspec_runs(out) if misspec else _corruption_runs(out)):
        if only and run_label(run_dir)[2] not in only:
            continue
        record = run_dir / "criticism.json"
        if record.exists() and not again:
            continue
        t0 = time.perf_counter()
        report = summary_dict(criticize_run(run_dir, refit=refit, keep_refits=run_dir / "refits"))
        report["_seconds"] = time.perf_counter() - t0
        record.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{run_dir.name}: {report['_seconds']:.0f} s", file=sys.stderr, flush=True)
    print(confusion_table(out, misspec))


def confusion_table(out: Path, misspec: bool = False) -> str:
    """Markdown: per env and condition, how many seeds called each type conflicting."""
    from mavrl_ppl.analysis.criticize import decide

    counts: dict[tuple[str, str], dict[str, int]] = {}
    totals: dict[tuple[str, str], int] = {}
    runs = _misspec_runs(out) if misspec else _corruption_runs(out)
    for record in (run / "criticism.json" for run in runs if (run / "criticism.json").is_file()):
        env, condition, _ = run_label(record.parent)
        report = json.loads(record.read_text())
        key = (env, condition)
        totals[key] = totals.get(key, 0) + 1
        for name, entry in report.items():
            if not name.startswith("_"):
                counts.setdefault(key, {}).setdefault(name, 0)
                counts[key][name] += decide(entry)[0] == "conflicting"  # today's thresholds, not the record's
    lines = ["| env | condition | runs | " + " | ".join(f"{t} flagged" for t in CORRUPTIONS) + " |",
             "|---|---|---|" + "---|" * len(CORRUPTIONS)]
    for (env, condition), n in sorted(totals.items()):
        lines.append(f"| {env} | {condition} | {n} | "
                     + " | ".join(str(counts[(env, condition)].get(t, 0)) for t in CORRUPTIONS) + " |")
    return "\n".join(lines)


def drop_flagged(out: Path, only: list[int] | None = None) -> str:
    """Act on the verdict: refit every criticised misspecification run that has a flagged type without those types
    (its ``feedback.nc`` minus the flagged groups, ``fit --data``, the run's seed, default settings) into
    ``OUT/dropped/<run>``, then a Markdown table per env and condition: the mean normalised score as fitted, and after
    dropping what was flagged (runs without a flag count with their own score). Resumable (existing refits are kept).
    """
    from mavrl_ppl.analysis.criticize import decide
    from mavrl_ppl.feedback.data import load_feedback, save_feedback
    from mavrl_ppl.runs import run

    rows: dict[tuple[str, str], list[tuple[float, float, bool]]] = {}
    for run_dir in _misspec_runs(out):
        record = run_dir / "criticism.json"
        if not record.is_file():
            continue
        env, condition, seed = run_label(run_dir)
        before = float(json.loads((run_dir / "metrics.json").read_text())["normalized_score"])
        flagged = [t for t, e in json.loads(record.read_text()).items()
                   if not t.startswith("_") and decide(e)[0] == "conflicting"]
        after = before
        if flagged and (only is None or seed in only):
            target = out / "dropped" / run_dir.name
            if not (target / "metrics.json").is_file():
                feedback = load_feedback(run_dir / "feedback.nc")
                kept = {t: ds for t, ds in feedback.items() if t not in flagged}
                data = out / "dropped" / f"{run_dir.name}.nc"
                data.parent.mkdir(parents=True, exist_ok=True)
                save_feedback(data, kept)
                run({"data": str(data), "seed": seed}, target, overwrite=True)
                print(f"{run_dir.name}: without {', '.join(flagged)}", file=sys.stderr, flush=True)
            after = float(json.loads((target / "metrics.json").read_text())["normalized_score"])
        elif flagged:
            continue  # another process's seed
        rows.setdefault((env, condition), []).append((before, after, bool(flagged)))
    lines = ["| env | condition | runs | runs with a flag | score as fitted | score after dropping the flagged types |",
             "|---|---|---:|---:|---:|---:|"]
    for (env, condition), pairs in sorted(rows.items()):
        a = np.array([p[:2] for p in pairs])
        se = a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(2)
        lines.append(f"| {env} | {condition} | {len(a)} | {sum(p[2] for p in pairs)} | "
                     f"{a[:, 0].mean():.1f} ± {se[0]:.1f} | {a[:, 1].mean():.1f} ± {se[1]:.1f} |")
    return "\n".join(lines)


def plot_misspec(out: Path, path: Path) -> Path:
    """Per grid a panel: each criticised run's PPC z of every type, by condition (clean, then each corrupted type),
    with the thresholds :data:`~mavrl_ppl.analysis.criticize.PPC_Z` and ``PPC_Z_HIGH`` outside which a type is called
    conflicting."""
    from mavrl_ppl.analysis.criticize import PPC_Z, PPC_Z_HIGH
    from mavrl_ppl.analysis.plots import _figure, _save

    points: dict[tuple[str, str, str], list[float]] = {}
    for run in _misspec_runs(out):
        if (run / "criticism.json").is_file():
            env, condition, _ = run_label(run)
            for name, entry in json.loads((run / "criticism.json").read_text()).items():
                if not name.startswith("_") and entry.get("ppc_z") is not None:
                    points.setdefault((env, condition, name), []).append(float(entry["ppc_z"]))
    envs = sorted({k[0] for k in points})
    conditions = [c for c in ("clean", *(f"pdrs_{t}" for t in CORRUPTIONS), "pdrs_all")
                  if any(k[1] == c for k in points)]
    colours = dict(zip(CORRUPTIONS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    fig = _figure((max(4.6 * len(envs), 8.0), 5.0))
    axes = fig.subplots(1, len(envs), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)  # horizontal jitter only
    low = min(-10.0, 1.3 * min(min(z) for z in points.values()))
    high = max(10.0, 1.3 * max(max(z) for z in points.values()))
    for ax, env in zip(axes, envs, strict=True):
        for i, condition in enumerate(conditions):
            for j, name in enumerate(CORRUPTIONS):
                z = np.asarray(points.get((env, condition, name), []))
                x = i + (j - 1.5) * 0.18 + rng.uniform(-0.05, 0.05, z.size)
                ax.scatter(x, z, s=12, color=colours[name], alpha=0.8,
                           label=name if (ax is axes[0] and i == 0) else None)
        for threshold in (PPC_Z, PPC_Z_HIGH):
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1)
        ax.set_yscale("symlog", linthresh=5)
        ax.set_yticks([t for t in (-100, -50, -20, -10, -5, PPC_Z, 0, 2, PPC_Z_HIGH, 10, 20) if low <= t <= high])
        ax.yaxis.set_major_formatter("{x:g}")
        ax.set_ylim(low, high)
        ax.set_xticks(range(len(conditions)), [c.replace("pdrs_", "corrupt\n") for c in conditions], fontsize=8)
        ax.set_xlabel("feedback condition (all four types; one or all corrupted)")
        ax.set_title(f"{env}: {len(points.get((env, conditions[0], CORRUPTIONS[0]), []))} runs per condition")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"posterior-predictive z (symlog); outside [{PPC_Z}, {PPC_Z_HIGH}]: conflicting")
    axes[0].legend(title="type", fontsize=8, loc="lower left")
    return _save(fig, path, "Which source disagrees: each type's PPC z per run (SVI, paper allocation)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("fit", "criticize", "table", "misspec", "misspec-table", "misspec-figure",
                                          "misspec-drop"))
    p.add_argument("--env", default="grid_trap")
    p.add_argument("--seeds", nargs="+", default=["0-4"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--conditions", nargs="+", default=list(CORRUPTIONS), choices=[*CORRUPTIONS, *EXTRA],
                   help="the corrupted types to fit (fit)")
    p.add_argument("--only", nargs="*", help="criticise only these seeds, e.g. 0-4 (split the work over processes)")
    p.add_argument("--no-refit", action="store_true", help="no leave-one-type-out refits (the PPC decides)")
    p.add_argument("--figure", type=Path, help="misspec-figure: the PNG to write")
    p.add_argument("--again", action="store_true", help="criticise runs that have a record again (refits are kept)")
    args = p.parse_args(argv)
    if args.action == "fit":
        fit_all(args.env, parse_seeds(args.seeds), args.out, args.conditions)
    elif args.action in ("criticize", "misspec"):
        only = parse_seeds(args.only) if args.only else None
        criticize_all(args.out, args.again, only, not args.no_refit, misspec=args.action == "misspec")
    elif args.action == "misspec-drop":
        print(drop_flagged(args.out, parse_seeds(args.only) if args.only else None))
    elif args.action == "misspec-figure":
        print(plot_misspec(args.out, args.figure or args.out / "criticism.png"))
    else:
        print(confusion_table(args.out, misspec=args.action == "misspec-table"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
