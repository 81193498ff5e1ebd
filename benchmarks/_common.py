"""What every benchmark script shares: timing, the machine description, and writing its own RESULTS.md section."""

from __future__ import annotations

import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mavrl_ppl.analysis import report

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The baseline table's cell records (committed): written by baseline_table.py, read by nuts.py --from-records.
TABLE_RECORDS = Path(__file__).resolve().parent / "baseline_table_records"


def timed(fn: Callable[[], object], repeats: int, min_seconds: float = 0.05) -> tuple[list[float], int]:
    """Seconds per call of ``fn`` in each of ``repeats`` runs, after one warm-up call.

    Args:
        fn: the workload, called with no arguments.
        repeats: number of timed runs.
        min_seconds: each run calls ``fn`` as many times (a power of two) as it takes to last this long.

    Returns:
        ``(seconds per call of each run, calls per run)``.
    """
    fn()  # warm-up: lazy imports and first-call allocations are not what we measure
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start >= min_seconds:
            break
        number *= 2
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number)
    return runs, number


def machine() -> dict[str, str]:
    """Cores available to this process, CPU model, Python/numpy versions, platform and the load average."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": str(cores),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        # Other work on a shared 2-core box inflates the timings; record how busy it was.
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown",
    }


def mean_se(values: list[float], digits: int | None = None) -> str:
    """``"mean ± standard error"`` (sample sd / sqrt(n)) of the finite values; just the mean for one value.

    Args:
        values: one figure per seed.
        digits: decimals; ``None``: 1 if ``|mean| >= 1``, else 3.
    """
    mean, se, _ = report.mean_se(values)
    return report.format_mean_se(mean, se, digits)


def fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def write_section(section: str, header: str, path: Path = RESULTS) -> None:
    """Replace (or append) one script's section of ``path``, keeping every other section as it is.

    The file is re-read immediately before writing and replaced atomically, so a section another script wrote in the
    meantime survives.

    Args:
        section: the full section text, starting with ``header``.
        header: the section's level-2 header line, e.g. ``## Simulation (issue 2)``.
        path: the results file.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    # A section runs from its header to the next level-2 header (or the end of the file).
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    section = section.rstrip("\n") + "\n\n"  # exactly one blank line before the next section
    if pattern.search(text):
        new_text = pattern.sub(lambda _: section, text, count=1)
    else:
        new_text = text.rstrip("\n") + "\n\n" + section
    new_text = new_text.rstrip("\n") + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(new_text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a results file is for everyone to read
    os.replace(tmp, path)


def kept_notes(header: str, path: Path = RESULTS) -> str | None:
    """The hand-written ``### Notes`` subsection of one section of ``path`` (``None`` if it has none), so a script
    that rewrites its section can keep them.

    Args:
        header: the section's level-2 header line.
        path: the results file.
    """
    if not path.exists():
        return None
    # From the header to its notes without crossing another level-2 header; the notes end at the next one.
    match = re.search(rf"^{re.escape(header)}\n(?:(?!^## ).)*?(^### Notes\n.*?)(?=^## |\Z)", path.read_text(),
                      re.MULTILINE | re.DOTALL)
    return match.group(1).rstrip("\n") if match else None
