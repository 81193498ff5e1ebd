"""Formatting for result tables: mean ± standard error over seeds, LaTeX escaping, Markdown and LaTeX tables.

Pure functions of numpy arrays and strings (no plotting, no xarray), shared by every table writer so that a figure
reads the same in each: the mean and standard error ignore non-finite values (failed or missing seeds, which the
writer counts separately), the standard error is ``sd(ddof=1) / sqrt(n)`` and undefined (NaN) below two values, and
a cell shows ``"12.3 ± 0.4"``, just ``"12.3"`` when the standard error is undefined, and ``"n/a"`` with no value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PLUS_MINUS = "±"
MISSING = "n/a"

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    PLUS_MINUS: r"$\pm$",
}


def latex_escape(text: str) -> str:
    """Plain text as LaTeX source: the special characters ``\\ _ % & # $ { } ~ ^`` are escaped and ``±`` becomes
    ``$\\pm$``, in one pass (so the braces and dollars the escapes themselves introduce are left alone).

    Args:
        text: plain text, e.g. a header, an env name or a caption.

    Returns:
        The LaTeX source that typesets ``text``.
    """
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def mean_se(values: Any, axis: int | None = -1) -> tuple[Any, Any, Any]:
    """Mean, standard error and count of the finite values along ``axis`` (NaN and ±inf are left out).

    Args:
        values: array-like of numbers, e.g. one figure per seed.
        axis: the axis to reduce (``None``: all values).

    Returns:
        ``(mean, se, n)`` with ``values``' shape without ``axis`` (numpy scalars for a 1-D input): ``mean`` is NaN
        when ``n == 0``, ``se = sd(ddof=1) / sqrt(n)`` is NaN when ``n < 2``.
    """
    v = np.asarray(values, dtype=float)
    if axis is None:
        v = v.reshape(-1)
    else:
        v = np.moveaxis(v, axis, -1)
    finite = np.isfinite(v)
    n = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(finite, v, 0.0).sum(axis=-1) / np.maximum(n, 1), np.nan)
        squares = (np.where(finite, v - mean[..., None], 0.0) ** 2).sum(axis=-1)
        se = np.where(n > 1, np.sqrt(squares / np.maximum(n - 1, 1)) / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean[()], se[()], n[()]


def format_mean_se(mean: float, se: float, digits: int | None = None, *, pm: str = PLUS_MINUS,
                   missing_se: str | None = None) -> str:
    """``"12.3 ± 0.4"``: a mean and its standard error with the same number of decimals.

    Args:
        mean: the mean; not finite (no value) gives ``"n/a"``.
        se: its standard error; when not finite (fewer than two values) only the mean is shown, unless
            ``missing_se`` is given.
        digits: decimals; ``None``: 1 if ``|mean| >= 1``, else 3.
        pm: the separator's sign, e.g. ``r"$\\pm$"`` for a cell that is already LaTeX.
        missing_se: shown in place of an undefined standard error (e.g. ``"n/a"`` gives ``"12.3 ± n/a"``).

    Returns:
        The cell text.
    """
    mean, se = float(mean), float(se)
    if not np.isfinite(mean):
        return MISSING
    if digits is None:
        digits = 1 if abs(mean) >= 1 else 3
    if np.isfinite(se):
        return f"{mean:.{digits}f} {pm} {se:.{digits}f}"
    return f"{mean:.{digits}f}" if missing_se is None else f"{mean:.{digits}f} {pm} {missing_se}"


_MARKDOWN_RULE = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A Markdown (pipe) table. Cells are plain text; a ``|`` in one becomes ``/`` and a newline a space, so no
    cell can break the table.

    Args:
        header: the column titles.
        rows: the cells, each row as long as ``header``.
        align: one letter per column, ``l``/``r``/``c``; ``None``: no alignment marks (``|---|``).

    Returns:
        The table's lines joined by newlines, without a trailing newline.
    """
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"

    if align is not None and len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    rule = "|" + "".join(_MARKDOWN_RULE[a] + "|" for a in align) if align else "|" + "---|" * len(header)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def latex_tabular(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str, *, align: str | None = None,
                  placement: str | None = None, size: str | None = None) -> str:
    """A booktabs ``tabular`` in a ``table`` float with its caption below.

    Every argument is LaTeX source: pass plain text through :func:`latex_escape` first.

    Args:
        header: the column titles.
        rows: the cells, each row as long as ``header``.
        caption: the caption.
        align: the column specification, e.g. ``"llrr"``; ``None``: ``l`` then ``r`` for every other column.
        placement: the float's placement, e.g. ``"t"`` for ``\\begin{table}[t]``; ``None``: none.
        size: a font-size command for the table without its backslash, e.g. ``"small"``; ``None``: none.

    Returns:
        The ``table`` environment's lines joined by newlines, without a trailing newline.
    """
    align = align if align is not None else "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}" + (f"[{placement}]" if placement else ""), r"\centering"]
    if size:
        lines.append("\\" + size)
    lines += [r"\begin{tabular}{" + align + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + caption + "}", r"\end{table}"]
    return "\n".join(lines)
