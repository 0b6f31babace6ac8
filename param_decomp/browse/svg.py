"""Inline SVG of a site's sorted component densities: no plotting library, no image file.

The y axis is log10 (densities span orders of magnitude); zeros are drawn on the floor line.
Long curves are thinned to at most `max_points` vertices so that a 10^4-component site keeps
a small overview page.
"""

from __future__ import annotations

import numpy as np

from param_decomp.browse.markup import text

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM = 260, 90, 34, 14
CURVES = (("density", "#e6550d"), ("density_any", "#3182bd"))


def _points(values: np.ndarray, lo: float, hi: float, max_points: int) -> str:
    ordered = np.sort(values)[::-1]
    n = len(ordered)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))
    x = PAD_LEFT + (WIDTH - PAD_LEFT - 4) * (idx / max(n - 1, 1))
    logs = np.log10(np.maximum(ordered[idx], 10.0**lo))
    y = 4 + (HEIGHT - PAD_BOTTOM - 4) * (hi - logs) / (hi - lo)
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y, strict=True))


def density_svg(curves: dict[str, np.ndarray], label: str, max_points: int = 400) -> str:
    """One small chart: each curve is one statistic's values sorted from the largest, over the
    component rank; `curves` maps a name in CURVES to its values."""
    positive = np.concatenate([v[v > 0] for v in curves.values()] + [np.array([1.0])])
    lo = float(np.floor(np.log10(positive.min())))
    hi = float(np.ceil(np.log10(positive.max())))
    lo, hi = (lo, hi) if hi > lo else (lo - 1, hi)
    n = max((len(v) for v in curves.values()), default=0)
    parts = [
        f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'class="density" data-site="{text(label)}">',
        f"<title>{text(label)}: density per component, sorted (log scale)</title>",
        f'<text x="2" y="10">1e{int(hi)}</text>',
        f'<text x="2" y="{HEIGHT - PAD_BOTTOM}">1e{int(lo)}</text>',
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 2}">rank 0</text>',
        f'<text x="{WIDTH - 4}" y="{HEIGHT - 2}" text-anchor="end">{n - 1}</text>',
    ]
    for name, colour in CURVES:
        values = curves.get(name)
        if values is not None and len(values):
            pts = _points(np.asarray(values, dtype=np.float64), lo, hi, max_points)
            parts.append(
                f'<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{pts}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)
