"""Does a decomposition fit the devices? An estimate from shapes alone, checked before anything
is allocated (SPEC S13.4).

`estimate_decomposition_bytes` traces the target's and the decomposition's constructors
abstractly (`nnx.eval_shape`: shapes and dtypes, no arrays), places every leaf with the real
`PlacementPlan` on an `AbstractMesh` of the run's mesh shape, and sums the bytes ONE device
holds. Per device, for the training step:

- `target`: the frozen target's state (all of it, not only the sites): replicated, or 2-D
  leaves split over `fsdp` with `mesh.shard_target_weights`, exactly as `target_shardings`;
- `components`: V and U of every owned site, split over `tensor` along C;
- `ci_function`: the CI function's parameters, per-component weights split over `tensor`
  as `decomposition_shardings` does, the rest replicated;
- `optimizer`: the AdamW state of the configured optimizer (two moments per trained
  parameter, sharded like it, plus its replicated step counts), traced from `optax` itself;
- `gradients`: one gradient per trained parameter, sharded like it (the step holds them
  together with the moments);
- `activations`: a ROUGH term for the batch, see `activation_bytes`.

Every term but `activations` is exact for the arrays the run places; the total is still an
estimate (XLA's temporaries, fragmentation and the warm-up's own moments are not counted), so
passing the check does not promise the run fits, while failing it means it cannot. All
arithmetic is on Python ints, so any C gives a number, not an overflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import resolve_mesh_shape
from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.config.schema import DecomposeConfig, TargetConfig
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sites import SiteError, resolve_sites
from param_decomp.runconfig.target_config import target_kind
from param_decomp.sharding.mesh import AXES
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.build import build_lm, build_target
from param_decomp.targets.hf.config_map import HFTargetSpec
from param_decomp.targets.hf.load import abstract_hf_target
from param_decomp.targets.token_lm import INDEX_SITES
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.step import moment_shardings

# Forward passes whose per-site activations a step holds at once: the clean one, about three
# masked ones (stochastic / layerwise / subset reconstruction) kept for the backward, and the
# backward's cotangents of about the same size. Rough on purpose (see `activation_bytes`).
ACTIVATION_PASSES = 8
ACTIVATION_ITEMSIZE = 4  # float32
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes ONE device holds during a decomposition step (see the module docstring)."""

    n_devices: int
    mesh: dict[str, int]
    target: int
    components: int
    ci_function: int
    optimizer: int
    gradients: int
    activations: int
    rows_per_device: int

    @property
    def params_and_optimizer(self) -> int:
        """V/U, CI-function params and their optimizer state: exactly the placed arrays."""
        return self.components + self.ci_function + self.optimizer

    @property
    def total(self) -> int:
        return (
            self.target
            + self.components
            + self.ci_function
            + self.optimizer
            + self.gradients
            + self.activations
        )

    def breakdown(self) -> str:
        parts = [
            ("frozen target weights", self.target),
            ("V/U", self.components),
            ("CI function", self.ci_function),
            ("AdamW moments", self.optimizer),
            ("gradients", self.gradients),
            (f"activations (rough, {self.rows_per_device} batch rows)", self.activations),
        ]
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in parts)


def format_bytes(n: int) -> str:
    """'12.3 GiB (13,207,024,435 bytes)' in integer arithmetic (no float overflow)."""
    tenths = (n * 10 + GIB // 2) // GIB
    return f"{tenths // 10:,}.{tenths % 10} GiB ({n:,} bytes)"


def _itemsize(dtype: Any) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # a threefry key: two uint32 words
    return int(np.dtype(dtype).itemsize)


def _shard_bytes(leaf: Any, sharding: NamedSharding) -> int:
    """Bytes of the shard one device holds: each dim divided (rounding up) by its mesh axes."""
    mesh_shape = sharding.mesh.shape
    spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
    n = 1
    for dim, axes in zip(leaf.shape, spec, strict=True):
        split = 1
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            split *= int(mesh_shape[axis])
        n *= -(-int(dim) // split)
    return n * _itemsize(leaf.dtype)


def _sharding_leaves(shardings: Any) -> list[NamedSharding]:
    return jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))


def _tree_bytes(tree: Any, shardings: Any) -> int:
    leaves, shards = jax.tree.leaves(tree), _sharding_leaves(shardings)
    return sum((_shard_bytes(leaf, s) for leaf, s in zip(leaves, shards, strict=True)), 0)


TargetSpec = TargetConfig | PretrainConfig | HFTargetSpec


def abstract_target_parts(target_cfg: TargetSpec) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, abstract full target state) without building any array: the target's
    constructor traced by `nnx.eval_shape`; an hf target in the dtype it is loaded in."""
    source = target_kind(target_cfg).source
    if source == "hf":
        return abstract_hf_target(target_cfg)

    def build() -> Any:
        if source == "pretrained":
            return build_lm(target_cfg.model, target_cfg.seed)
        return build_target(target_cfg)

    graphdef, state = nnx.split(nnx.eval_shape(build))
    return graphdef, state


def _abstract_target(target_cfg: TargetSpec) -> tuple[Any, dict[str, Any]]:
    """(abstract full target state, abstract site weights) without building any array."""
    graphdef, state = abstract_target_parts(target_cfg)
    return state, jax.eval_shape(lambda s: nnx.merge(graphdef, s).site_weights(), state)


def _lm_fields(target_cfg: TargetSpec) -> tuple[int, int, int] | None:
    """(tokens per batch row, vocab size, heads) of an LM target; None for a toy target."""
    if not target_kind(target_cfg).lm:
        return None
    model = target_cfg.model
    return target_cfg.seq_len, model.vocab_size, model.n_heads


def activation_bytes(
    cfg: DecomposeConfig,
    site_shapes: dict[str, tuple[int, int]],
    rows: int,
    c_local: dict[str, int],
    lm: tuple[int, int, int] | None,
) -> int:
    """A ROUGH activation term, fp32, for `rows` batch rows (tokens for an LM) per device:

    - ACTIVATION_PASSES forward passes held at once (the clean one, about three masked ones
      whose residuals the backward keeps, their cotangents), each per row and site: the input
      (d_in), the output (d_out), the inner activations and the mask (2 x C / tensor); an LM
      adds per row its logits (vocab) and attention scores (heads x seq_len);
    - the CI function, evaluated once per step, kept for the backward and mirrored by its
      cotangents (x 2): per row the pre- and post-GELU value of every hidden unit, which the
      per-component MLP holds per component (2 x sum(hidden) x C / tensor per site).

    No (rows, d, C) array is ever formed (components.py), so none is counted."""
    per_pass = sum(d_in + d_out + 2 * c_local[s] for s, (d_in, d_out) in site_shapes.items())
    if lm is not None:
        seq_len, vocab, heads = lm
        per_pass += vocab + heads * seq_len
    ci = cfg.decomposition.ci_function
    units = 2 * sum(ci.hidden)
    if ci.type == "per_component_mlp":
        ci_width = units * sum(c_local.values())
    elif ci.type == "per_site_mlp":
        ci_width = units * len(site_shapes)
    elif ci.type == "global_mlp":
        ci_width = units
    else:  # global_transformer: per layer about 12 d_model-wide values (qkv, mlp, norms)
        ci_width = ci.n_layers * (12 * ci.d_model + 2 * (ci.d_mlp or 4 * ci.d_model))
    return ACTIVATION_ITEMSIZE * rows * (ACTIVATION_PASSES * per_pass + 2 * ci_width)


def estimate_decomposition_bytes(
    cfg: DecomposeConfig, target_cfg: TargetSpec, n_devices: int
) -> MemoryEstimate:
    """Per-device bytes of the decomposition `cfg` of `target_cfg` on `n_devices` devices,
    from shapes only (nothing is allocated, the target is neither loaded nor trained).

    The sites must resolve against the target (SiteError otherwise; `check_fits` reports it
    as a ConfigError)."""
    shape = resolve_mesh_shape(cfg.mesh, n_devices)
    mesh = AbstractMesh(tuple(shape[a] for a in AXES), AXES)
    plan = PlacementPlan.for_config(mesh, cfg.mesh)
    dec = cfg.decomposition

    target_state, weights = _abstract_target(target_cfg)
    all_shapes = {s: (int(w.shape[0]), int(w.shape[1])) for s, w in weights.items()}
    site_C = resolve_sites(dec, list(all_shapes))
    site_shapes = {s: all_shapes[s] for s in site_C}
    target = _tree_bytes(target_state, plan.target_shardings(target_state))

    index_sites = INDEX_SITES if _lm_fields(target_cfg) else ()
    model = nnx.eval_shape(
        lambda: DecompositionModel(
            dec, all_shapes, rngs=nnx.Rngs(params=cfg.seed), index_sites=index_sites
        )
    )
    params = nnx.split(model)[1]
    param_shardings = plan.decomposition_shardings(params)
    components = ci_function = 0
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(params), _sharding_leaves(param_shardings), strict=True
    ):
        if "components" in [getattr(k, "key", getattr(k, "name", str(k))) for k in path]:
            components += _shard_bytes(leaf, sharding)
        else:
            ci_function += _shard_bytes(leaf, sharding)

    optimizer = make_optimizer(cfg.train.optimizer, cfg.train.steps)
    opt_state = jax.eval_shape(optimizer.init, params)
    opt_bytes = _tree_bytes(opt_state, moment_shardings(opt_state, param_shardings, plan))

    batch_shards = shape["data"] * shape["fsdp"]
    lm = _lm_fields(target_cfg)
    # one micro-batch's rows are live at a time (S10.4)
    live_batch = -(-cfg.train.batch_size // cfg.train.micro_batches)
    rows = -(-live_batch // batch_shards) * (lm[0] if lm else 1)
    c_local = {s: -(-c // shape["tensor"]) for s, c in site_C.items()}
    return MemoryEstimate(
        n_devices=n_devices,
        mesh=shape,
        target=target,
        components=components,
        ci_function=ci_function,
        optimizer=opt_bytes,
        gradients=components + ci_function,
        activations=activation_bytes(cfg, site_shapes, rows, c_local, lm),
        rows_per_device=rows,
    )


def device_memory_bytes() -> int | None:
    """Memory one device may use: the allocator's `bytes_limit` on GPU/TPU; on CPU the host's
    physical memory shared by the process's devices; None if neither is known."""
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory stats simply has none
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
        if host > 0:
            return host // jax.local_device_count()
    return None


def check_fits(
    cfg: DecomposeConfig,
    target_cfg: Any,
    config_path: str,
    n_devices: int,
    limit: int | None = None,
) -> MemoryEstimate | None:
    """S13.4: refuse (ConfigError on `decomposition.C`) a decomposition whose estimated bytes
    per device exceed the device memory, before the target is loaded or anything allocated.

    `limit` defaults to `device_memory_bytes()`; with no known limit nothing is refused. A
    config whose target is not a target config is left to the caller to report (returns None).
    """
    if not isinstance(target_cfg, TargetSpec):
        return None
    try:
        est = estimate_decomposition_bytes(cfg, target_cfg, n_devices)
    except SiteError as err:
        raise ConfigError(config_path, [("decomposition.sites", str(err))]) from None
    limit = device_memory_bytes() if limit is None else limit
    if limit is None or est.total <= limit:
        return est
    mesh = " x ".join(f"{a} {n}" for a, n in est.mesh.items())
    Cs = ", ".join(f"{c:,}" for c in cfg.decomposition.all_C())
    msg = (
        f"C = {Cs} needs an estimated {format_bytes(est.total)} per device, "
        f"more than the {format_bytes(limit)} one device has ({n_devices} device(s), mesh {mesh})"
        f"\nper device: {est.breakdown()}"
        "\nwhat would help: a smaller decomposition.C; a larger mesh.tensor (V/U, their AdamW "
        "moments and the per-component CI weights are split over it); fewer decomposition.sites; "
        "a smaller train.batch_size; mesh.fsdp with mesh.shard_target_weights for a large target"
    )
    raise ConfigError(config_path, [("decomposition.C", msg)])
