"""Tests for alive-component counting and the plain-text summary table."""

from __future__ import annotations

import numpy as np
import pytest

from param_decomp.eval.summary import alive_components, format_summary_table


def test_alive_threshold_is_strict() -> None:
    ci = np.array([[0.1, 0.5, 0.50001, 0.0], [0.2, 0.3, 0.0, 0.5]])
    alive = alive_components(ci, threshold=0.5)
    assert alive.dtype == bool
    np.testing.assert_array_equal(alive, [False, False, True, False])


def test_alive_reduces_over_all_leading_axes() -> None:
    ci = np.zeros((3, 4, 5))
    ci[2, 1, 3] = 0.9
    ci[0, 3, 0] = 0.2
    alive = alive_components(ci, threshold=0.1)
    assert alive.shape == (5,)
    np.testing.assert_array_equal(alive, [True, False, False, True, False])
    np.testing.assert_array_equal(
        alive_components(ci, threshold=0.5), [False, False, False, True, False]
    )


def test_alive_one_dimensional() -> None:
    np.testing.assert_array_equal(alive_components(np.array([0.0, 1.0]), 0.0), [False, True])


def test_alive_rejects_scalar() -> None:
    with pytest.raises(ValueError):
        alive_components(np.array(0.5), 0.1)


def test_table_aligns_columns() -> None:
    rows: list[dict[str, object]] = [
        {"site": "linear1", "alive": 5, "C": 20, "frac": 0.25},
        {"site": "w", "alive": 12, "C": 100, "frac": 0.123456},
        {"site": "total", "alive": 17, "C": 120, "frac": 1 / 7},
    ]
    lines = format_summary_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    header, rule = lines[0], lines[1]
    assert header.split() == ["site", "alive", "C", "frac"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert [ln.split() for ln in lines[2:]] == [
        ["linear1", "5", "20", "0.25"],
        ["w", "12", "100", "0.123"],
        ["total", "17", "120", "0.143"],
    ]
    # Each column's dash run spans the same character positions in every line.
    spans: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(rule + " "):
        if ch == "-" and start is None:
            start = i
        elif ch != "-" and start is not None:
            spans.append((start, i))
            start = None
    assert len(spans) == 4
    for line in [header, *lines[2:]]:
        padded = line.ljust(len(rule))
        for (a, b), cell in zip(spans, padded.split(), strict=True):
            assert cell in padded[a:b]
        # Gaps between columns are blank, so no cell spills over a column boundary.
        for (_, b), (a2, _) in zip(spans, spans[1:], strict=False):
            assert padded[b:a2].strip() == ""
    # Numbers are right-aligned: their last characters line up.
    for _, b in spans[1:]:
        ends = {len(ln.ljust(len(rule))[:b].rstrip()) for ln in lines[2:]}
        assert ends == {b}


def test_table_float_format_and_order() -> None:
    table = format_summary_table([{"b": 1.23456789, "a": "x"}, {"b": 12345.0, "a": "yy"}])
    lines = table.splitlines()
    assert lines[0].split() == ["b", "a"]
    assert lines[2].split() == ["1.23", "x"]
    assert lines[3].split() == ["1.23e+04", "yy"]


def test_table_empty() -> None:
    assert format_summary_table([]) == ""
