"""Text summaries of a decomposition: alive-component counts and a plain aligned table.

Kept dependency-free (numpy only) so it can be printed from training loops and CLIs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def alive_components(ci: np.ndarray, threshold: float) -> np.ndarray:
    """Mark components whose CI strictly exceeds ``threshold`` on at least one datapoint.

    A component that is never needed on any eval input is dead and can be pruned, so we reduce
    over every leading (batch / position) axis and keep only the component axis.
    """
    arr = np.asarray(ci)
    if arr.ndim == 0:
        raise ValueError("ci must have at least one axis (the component axis)")
    above = arr > threshold
    if arr.ndim == 1:
        return above
    return np.any(above.reshape(-1, arr.shape[-1]), axis=0)


def _format_cell(value: object) -> str:
    """Format one cell: floats compactly with 3 significant digits, everything else via str."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.3g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def format_summary_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Render rows as an aligned plain-text table so summaries read well in logs.

    Columns follow the first row's key order; missing cells are left blank. Numeric columns are
    right-aligned, others left-aligned, and the header is underlined with dashes.
    """
    if not rows:
        return ""
    columns = list(rows[0].keys())
    cells = [[_format_cell(row[c]) if c in row else "" for c in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    numeric = [
        all(
            isinstance(row.get(c), int | float | np.integer | np.floating)
            and not isinstance(row.get(c), bool | np.bool_)
            for row in rows
            if c in row
        )
        for c in columns
    ]

    def fmt_line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if is_num else v.ljust(w)
            for v, w, is_num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    header = fmt_line(columns)
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([header, rule, *(fmt_line(r) for r in cells)])
