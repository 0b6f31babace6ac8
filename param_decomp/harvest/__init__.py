"""Harvest: what every component of a decomposition does over its corpus (`param-decomp
harvest`), stored as parquet tables under `RUN_DIR/harvest/step_<N>/`.

`load(run_dir, step=None)` opens a finished harvest for notebooks (pyarrow tables).
"""

from param_decomp.harvest.store import Harvest, load

__all__ = ["Harvest", "load"]
