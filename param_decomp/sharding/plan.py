"""Placement plan: logical axes of every array -> mesh axes, in one place (SPEC §Sharding).

Logical axes: `batch` (global batch rows), `C` (the component axis), `d_in`/`d_out` of a
site. The plan maps batch -> (data, fsdp) and C -> tensor; site dims map to fsdp only when
`shard_target_weights` asks for it. Everything else (scalars, RNG, step) is replicated.
XLA inserts the collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LOGICAL_TO_MESH: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "C": "tensor",
    "d_in": None,
    "d_out": None,
}


BATCH_AXES = ("data", "fsdp")


@dataclass(frozen=True)
class PlacementPlan:
    mesh: Mesh
    shard_site_dims: bool = False
    shard_moments: bool = False  # S13.6: AdamW moments also over the batch axes (ZeRO-style)

    @classmethod
    def for_config(cls, mesh: Mesh, mesh_cfg: Any) -> PlacementPlan:
        """The plan a config's `mesh:` block asks for on `mesh`."""
        return cls(mesh, mesh_cfg.shard_target_weights, mesh_cfg.shard_optimizer_state)

    def spec(
        self, logical: tuple[str | None, ...], shape: tuple[int, ...] | None = None
    ) -> PartitionSpec:
        """Mesh axes per dim; a dim its mesh axes do not divide stays unsharded."""
        table = dict(LOGICAL_TO_MESH)
        if self.shard_site_dims:
            table["d_in"] = "fsdp"
        axes = []
        for i, name in enumerate(logical):
            mesh_axes = table.get(name) if name else None
            if mesh_axes is not None and shape is not None:
                size = 1
                for a in (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes:
                    size *= self.mesh.shape[a]
                if shape[i] % size:
                    mesh_axes = None
            axes.append(mesh_axes)
        return PartitionSpec(*axes)

    def sharding(
        self, logical: tuple[str | None, ...], shape: tuple[int, ...] | None = None
    ) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical, shape))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batch(self, ndim: int) -> NamedSharding:
        return self.sharding(("batch",) + (None,) * (ndim - 1))

    def decomposition_shardings(self, params: Any) -> Any:
        """Shard C of V, U and per-component CI weights (S13.2); replicate the rest. The
        per-component MLP's weights are (C, a, b) and its biases (C, b): the only CI leaves
        of rank 3, and of rank 2 among biases, so C is found without knowing each site's C."""

        def place(path: tuple, leaf: jax.Array) -> NamedSharding:
            names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
            names = [n for n in names if n != "value"]  # nnx Variables end their path in .value
            if "components" in names and names[-1] == "V":
                return self.sharding(("d_in", "C"), leaf.shape)
            if "components" in names and names[-1] == "U":
                return self.sharding(("C", "d_out"), leaf.shape)
            if "ci_fns" in names and leaf.ndim == 3 and "weights" in names:
                return self.sharding(("C", None, None), leaf.shape)
            if "ci_fns" in names and leaf.ndim == 2 and "biases" in names:
                return self.sharding(("C", None), leaf.shape)
            return self.replicated()

        return jax.tree_util.tree_map_with_path(place, params)

    def moment_sharding(self, param: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
        """An optimizer moment of a param placed by `param` (S13.2); with `shard_moments` also
        split over the batch axes the param does not already use (S13.6): on its first
        unsharded dim they divide, else folded into the first sharded dim whose size the
        combined axes divide. Moments too small to split stay as their param."""
        if not self.shard_moments:
            return param
        spec = list(param.spec) + [None] * (len(shape) - len(param.spec))
        used = {a for axes in spec if axes for a in ((axes,) if isinstance(axes, str) else axes)}
        extra = tuple(a for a in BATCH_AXES if a not in used and self.mesh.shape[a] > 1)
        if not extra:
            return param
        size = 1
        for a in extra:
            size *= self.mesh.shape[a]
        for i, axes in enumerate(spec):
            if axes is None and shape[i] % size == 0:
                spec[i] = extra if len(extra) > 1 else extra[0]
                return NamedSharding(self.mesh, PartitionSpec(*spec))
        for i, axes in enumerate(spec):
            if axes is None:
                continue
            have = (axes,) if isinstance(axes, str) else tuple(axes)
            total = size
            for a in have:
                total *= self.mesh.shape[a]
            if shape[i] % total == 0:
                spec[i] = have + extra
                return NamedSharding(self.mesh, PartitionSpec(*spec))
        return param

    def target_shardings(self, target_state: Any) -> Any:
        """Frozen target weights: replicated, or rows over fsdp when `shard_target_weights`."""

        def place(leaf: jax.Array) -> NamedSharding:
            if self.shard_site_dims and leaf.ndim == 2:
                return self.sharding(("d_in", None), leaf.shape)
            return self.replicated()

        return jax.tree.map(place, target_state)
