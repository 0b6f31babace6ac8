"""The figure tier (S14.7): figures of the CI on the eval batches, every `eval.figures_every`
steps and at the end, into `<run>/figures/step_<N>/`; `param-decomp eval` writes the same.

Returns {figure name: PNG path} so a logger can pick the images up; LM targets also get
TOKEN_HTML, the interactive per-token page, beside the PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from param_decomp.config.schema import DecomposeConfig
from param_decomp.data.sources import BatchSource, TextSource
from param_decomp.eval.ci_figures import (
    plot_activation_density,
    plot_ci_histograms,
    plot_mean_ci,
    plot_pre_activation_histograms,
)
from param_decomp.eval.ci_stats import ci_rows, ci_statistics
from param_decomp.eval.figures import plot_causal_importance
from param_decomp.eval.token_text import token_strings
from param_decomp.eval.token_view import plot_token_ci, top_components, write_token_html

TOKEN_HTML = "token_ci.html"
TOP_PER_SITE = 8  # components per site in the token view's picker


def step_figure_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "figures" / f"step_{step}"


def figure_tier(
    cfg: DecomposeConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    source: BatchSource,
    out_dir: Path,
    step: int,
) -> dict[str, Path]:
    """Write the figure tier of the decomposition `params` (host arrays) into `out_dir`:
    CI and pre-activation histograms, activation density and mean CI per component (all on
    the eval batches), the CI heatmap of the figure probe, and for LM targets the per-token
    view of one val sequence (PNG, and TOKEN_HTML)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm = isinstance(source, TextSource)
    unit = "tokens" if lm else "samples"
    label = f"step {step}"
    threshold = cfg.eval.ci_alive_threshold
    batches = source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    sites = nnx.merge(graphdef, params).site_names  # panels in the decomposition's order
    stats = ci_statistics(graphdef, params, target_graphdef, target_state, batches, threshold)
    stats = {s: stats[s] for s in sites}
    pngs = {
        "ci_histogram": plot_ci_histograms(stats, out_dir / "ci_histogram.png", unit, label),
        "ci_pre_activation_histogram": plot_pre_activation_histograms(
            stats, out_dir / "ci_pre_activation_histogram.png", unit, label
        ),
        "activation_density": plot_activation_density(
            stats, out_dir / "activation_density.png", unit, threshold, label
        ),
        "mean_ci": plot_mean_ci(stats, out_dir / "mean_ci.png", unit, label),
    }
    inputs, row_label, title = source.figure_probe()
    probe = ci_rows(graphdef, target_graphdef, params, target_state, inputs)
    probe_ci = {s: np.asarray(probe[s]) for s in sites}
    pngs["causal_importance"] = out_dir / "causal_importance.png"
    plot_causal_importance(probe_ci, pngs["causal_importance"], f"{title}, {label}", row_label)
    if lm:
        assert isinstance(source, TextSource)
        ids = np.asarray(inputs).reshape(-1)
        tokens = token_strings(source.tokenizer, ids)
        picks = top_components(probe_ci, TOP_PER_SITE)
        pngs["token_ci"] = plot_token_ci(tokens, probe_ci, picks, out_dir / "token_ci.png", label)
        write_token_html(
            tokens,
            ids.tolist(),
            probe_ci,
            picks,
            out_dir / TOKEN_HTML,
            f"{cfg.run_name}: causal importance per token, {label}",
        )
    return pngs
