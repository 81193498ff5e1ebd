"""The shared table formatting: escaping, mean ± standard error conventions, Markdown and LaTeX tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mavrl_ppl.analysis.report import format_mean_se, latex_escape, latex_tabular, markdown_table, mean_se


def test_latex_escape_escapes_every_special_character_once():
    assert latex_escape("grid_trap 5% a&b #1 $x$ {y}") == r"grid\_trap 5\% a\&b \#1 \$x\$ \{y\}"
    assert latex_escape("a\\b") == r"a\textbackslash{}b"  # its braces are not escaped again
    assert latex_escape("~^") == r"\textasciitilde{}\textasciicircum{}"
    assert latex_escape("60.0 ± 1.0") == r"60.0 $\pm$ 1.0"  # its dollars are not escaped again
    assert latex_escape("plain text, 1-2 (3)") == "plain text, 1-2 (3)"


def test_mean_se_of_a_known_vector():
    mean, se, n = mean_se([1.0, 2.0, 4.0])
    # sd(ddof=1) = sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 2) = sqrt(7/3), se = sqrt(7/3) / sqrt(3) = sqrt(7) / 3
    assert mean == pytest.approx(7 / 3, rel=1e-15)
    assert se == pytest.approx(math.sqrt(7) / 3, rel=1e-15)
    assert n == 3


def test_mean_se_leaves_out_non_finite_values_and_reduces_the_given_axis():
    mean, se, n = mean_se([1.0, np.nan, 2.0, np.inf, 4.0, -np.inf])
    assert (mean, n) == (pytest.approx(7 / 3), 3) and se == pytest.approx(math.sqrt(7) / 3)
    values = np.array([[1.0, 3.0], [np.nan, 5.0], [2.0, 7.0]])  # (seed, method)
    mean, se, n = mean_se(values, axis=0)
    np.testing.assert_allclose(mean, [1.5, 5.0])
    np.testing.assert_allclose(se, [0.5, 2 / math.sqrt(3)])
    np.testing.assert_array_equal(n, [2, 3])
    assert mean_se(values, axis=None)[2] == 5


def test_one_value_has_no_standard_error_and_none_has_no_mean():
    mean, se, n = mean_se([3.5, np.nan])
    assert mean == 3.5 and math.isnan(se) and n == 1
    mean, se, n = mean_se([np.nan, np.nan])
    assert math.isnan(mean) and math.isnan(se) and n == 0
    mean, se, n = mean_se(np.zeros((2, 0)))
    assert np.isnan(mean).all() and np.isnan(se).all() and mean.shape == (2,)


def test_format_mean_se_digits_and_missing_values():
    assert format_mean_se(12.345, 0.4321, 1) == "12.3 ± 0.4"
    assert format_mean_se(0.12345, 0.01234, 3) == "0.123 ± 0.012"
    assert format_mean_se(7.0, 2.0, 0) == "7 ± 2"
    assert format_mean_se(12.345, 0.4321) == "12.3 ± 0.4"  # |mean| >= 1: one decimal
    assert format_mean_se(0.12345, 0.01234) == "0.123 ± 0.012"  # below one: three
    assert format_mean_se(12.345, math.nan, 1) == "12.3"  # one value: just the mean
    assert format_mean_se(12.345, math.nan, 1, missing_se="n/a") == "12.3 ± n/a"
    assert format_mean_se(math.nan, math.nan, 1) == "n/a"
    assert format_mean_se(60.0, 10.0, 1, pm=r"$\pm$") == r"60.0 $\pm$ 10.0"
    assert format_mean_se(*mean_se([50.0, 70.0])[:2], 1) == "60.0 ± 10.0"


def test_markdown_table_aligns_and_keeps_cells_from_breaking_rows():
    table = markdown_table(["env", "score"], [["a|b", "1\n2"], ["c", "3"]], align="lr")
    assert table.splitlines() == ["| env | score |", "|---|---:|", "| a/b | 1 2 |", "| c | 3 |"]
    assert markdown_table(["x", "y", "z"], []).splitlines()[1] == "|---|---|---|"
    with pytest.raises(ValueError, match="2 letters for 3 columns"):
        markdown_table(["x", "y", "z"], [], align="lr")


def test_latex_tabular_structure():
    tex = latex_tabular(["env", "score"], [[r"grid\_trap", r"1 $\pm$ 2"]], "Caption.", placement="t", size="small")
    assert tex.splitlines() == [
        r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{lr}", r"\toprule", r"env & score \\",
        r"\midrule", r"grid\_trap & 1 $\pm$ 2 \\", r"\bottomrule", r"\end{tabular}", r"\caption{Caption.}",
        r"\end{table}",
    ]
    plain = latex_tabular(["a", "b", "c"], [], "C", align="llr").splitlines()
    assert plain[:3] == [r"\begin{table}", r"\centering", r"\begin{tabular}{llr}"]
