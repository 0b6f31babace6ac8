"""The one device mesh of a run, built from the config's `mesh:` block (SPEC §Sharding)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from param_decomp.config.loading import resolve_mesh_shape
from param_decomp.config.schema import Mesh as MeshConfig

AXES = ("data", "fsdp", "tensor")


def build_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """The mesh over `devices` (default: every visible device), or over their first
    `cfg.devices` when set: a subset is one process's choice, so it needs a single process
    (every process of a multi-process run must hold its share of the mesh)."""
    devices = jax.devices() if devices is None else devices
    if cfg.devices is not None:
        if jax.process_count() > 1:
            raise ValueError("mesh.devices (a subset of the devices) needs a single process")
        if cfg.devices > len(devices):
            raise ValueError(f"mesh.devices {cfg.devices}, but {len(devices)} are available")
        devices = devices[: cfg.devices]
    shape = resolve_mesh_shape(cfg, len(devices))
    n = int(np.prod(list(shape.values())))
    if n != len(devices):
        raise ValueError(f"mesh {shape} needs {n} devices, {len(devices)} available")
    grid = np.asarray(devices).reshape(tuple(shape[a] for a in AXES))
    return Mesh(grid, AXES)
