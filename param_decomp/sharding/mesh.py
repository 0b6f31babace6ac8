"""The one device mesh of a run, built from the config's `mesh:` block (SPEC §Sharding)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from param_decomp.config.loading import resolve_mesh_shape
from param_decomp.config.schema import Mesh as MeshConfig

AXES = ("data", "fsdp", "tensor")


def build_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(cfg, len(devices))
    n = int(np.prod(list(shape.values())))
    if n != len(devices):
        raise ValueError(f"mesh {shape} needs {n} devices, {len(devices)} available")
    grid = np.asarray(devices).reshape(tuple(shape[a] for a in AXES))
    return Mesh(grid, AXES)
