"""The per-batch statistics of a harvest, in one jitted function on the run's mesh.

Every statistic is kept in fixed-size arrays (`HarvestState`), so memory never grows with the
number of tokens harvested: counts (int32), the top-k contexts and the reservoir per component
(`k` or `R` slots each), the input-token counts (vocab x components) and the co-activation
counts (components x components). Components of all sites are laid side by side in site order
("global" index g = offset of the site + c).

Orders are total, so the result depends neither on the device count nor on where a harvest
was interrupted and resumed:
- top-k: CI descending, then global token index ascending (an earlier token wins a tie);
- reservoir: a bottom-R sample by a 30-bit hash of (seed, global token index, global
  component), key ascending, then token index ascending. Keeping the R smallest keys of a
  stream is a uniform sample without replacement (each firing token's key is an independent
  uniform draw), and it merges batch by batch with no state but the R kept.
The global token index of row b, position p of batch i is (i * B + b) * T + p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.schema import ComputeDtype
from param_decomp.objective import Objective

EMPTY_CI = -1.0  # CI key of an empty top-k slot (every firing CI is above it)
EMPTY_NEG_KEY = -np.inf  # negated reservoir key of an empty slot (below any)
MAX_TOKENS = np.iinfo(np.int32).max  # counts and token indices are int32 on device

HarvestState = dict[str, Array]


@dataclass(frozen=True)
class HarvestSpec:
    """The static shape of a harvest (hashable: part of the jitted step's closure)."""

    site_C: tuple[tuple[str, int], ...]  # (site, C) in site order
    threshold: float  # firing: CI > threshold (contexts, reservoir, tokens, co-activation)
    top_k: int
    context: int  # W: contexts hold the tokens at positions p - W .. p + W
    reservoir: int
    vocab: int
    seed: int
    batch: int  # B
    seq_len: int  # T
    compute_dtype: ComputeDtype = "float32"

    @property
    def total_C(self) -> int:
        return sum(c for _, c in self.site_C)

    @property
    def width(self) -> int:
        return 2 * self.context + 1


def init_state(spec: HarvestSpec) -> dict[str, np.ndarray]:
    """The empty state, on the host (the caller places it)."""
    n, k, r, w, v = spec.total_C, spec.top_k, spec.reservoir, spec.width, spec.vocab
    i32 = np.int32
    return {
        "n_any": np.zeros((n,), i32),
        "n_fire": np.zeros((n,), i32),
        "tok_count": np.zeros((v,), i32),
        "input_count": np.zeros((v, n), i32),
        "coact": np.zeros((n, n), i32),
        "top_ci": np.full((n, k), EMPTY_CI, np.float32),
        "top_seq": np.full((n, k), -1, i32),
        "top_pos": np.full((n, k), -1, i32),
        "top_tokens": np.full((n, k, w), -1, i32),
        "top_values": np.zeros((n, k, w), np.float32),
        "res_neg_key": np.full((n, r), EMPTY_NEG_KEY, np.float32),  # minus the key
        "res_seq": np.full((n, r), -1, i32),
        "res_pos": np.full((n, r), -1, i32),
        "res_tokens": np.full((n, r, w), -1, i32),
        "res_values": np.zeros((n, r, w), np.float32),
    }


def _mix32(h: Array) -> Array:
    """An avalanche mix of uint32 values (xorshift-multiply rounds)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def reservoir_keys(
    seed: int, token_index: Int[Array, " n"], n_components: int
) -> Float[Array, "n C"]:
    """A key per (token, global component): independent, uniform over 2^30 values, and a pure
    function of (seed, token index, component), so any batching and sharding draws the same
    keys. Returned as float32 whose bits are the 30-bit key plus 2^23: every value a normal
    float, ordered as the integers (XLA:CPU's top_k is ~20x faster on floats than on ints)."""
    seed_mix = _mix32(jnp.uint32(seed % 2**32))
    per_token = _mix32(token_index.astype(jnp.uint32) ^ seed_mix)
    comp = jnp.arange(n_components, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
    per_comp = _mix32(comp + seed_mix)
    key30 = _mix32(per_token[:, None] ^ per_comp[None, :]) >> 2
    return jax.lax.bitcast_convert_type(key30 + jnp.uint32(1 << 23), jnp.float32)


def batch_ci(
    objective: Objective,
    model: Any,
    target: Any,
    x: Int[Array, "b t"],
    compute_dtype: ComputeDtype,
) -> Float[Array, "b t C"]:
    """ci_lower of every component on x, the sites side by side in site order: the clean pass
    of training itself (the run's compute dtype for the target, fp32 CI)."""
    ci = objective.clean_pass(target, model, x, compute_dtype).ci_lower
    return jnp.concatenate([ci[s].astype(jnp.float32) for s in model.site_names], axis=-1)


def _contexts(
    x: Int[Array, "b t"], ci: Float[Array, "b t C"], flat: Int[Array, "C k"], width: int
) -> tuple[Int[Array, "C k w"], Float[Array, "C k w"]]:
    """The tokens (-1 outside the window) and component c's CI around each flat index (b * T + p)
    of row c."""
    t = x.shape[1]
    pad = width // 2
    tokens = jnp.pad(x, ((0, 0), (pad, pad)), constant_values=-1)
    values = jnp.pad(ci, ((0, 0), (pad, pad), (0, 0)))
    b, p = flat // t, flat % t
    cols = p[..., None] + jnp.arange(width)
    comp = jnp.arange(ci.shape[-1])[:, None, None]
    return tokens[b[..., None], cols], values[b[..., None], cols, comp]


def _merge(
    keys_old: Array, keys_new: Array, k: int, fields: list[tuple[Array, Array]]
) -> tuple[Array, list[Array]]:
    """The k largest keys of old + new per row (old first, so an old entry wins a tie) and the
    matching entries of every (old, new) field pair."""
    keys = jnp.concatenate([keys_old, keys_new], axis=1)
    top, sel = jax.lax.top_k(keys, k)
    out = []
    for old, new in fields:
        both = jnp.concatenate([old, new], axis=1)
        index = sel.reshape(sel.shape + (1,) * (both.ndim - 2))
        out.append(jnp.take_along_axis(both, index, axis=1))
    return top, out


def harvest_batch(
    spec: HarvestSpec,
    state: HarvestState,
    ci: Float[Array, "b t C"],
    x: Int[Array, "b t"],
    batch_index: Int[Array, ""],
) -> tuple[HarvestState, Float[Array, " C"]]:
    """The state after one batch, and the batch's CI sum per component (the caller sums those
    in float64). Pure array code: what `make_harvest_step` jits after the clean pass."""
    b, t, n = ci.shape
    flat_ci = ci.reshape(b * t, n)
    tokens = x.reshape(b * t)
    fire = flat_ci > spec.threshold
    fire_i = fire.astype(jnp.int32)
    fire_f = fire.astype(jnp.float32)
    new: HarvestState = dict(state)
    new["n_any"] = state["n_any"] + jnp.sum(flat_ci > 0, axis=0, dtype=jnp.int32)
    new["n_fire"] = state["n_fire"] + jnp.sum(fire_i, axis=0)
    ones = jnp.ones_like(tokens, jnp.int32)
    new["tok_count"] = state["tok_count"] + jax.ops.segment_sum(ones, tokens, spec.vocab)
    new["input_count"] = state["input_count"] + jax.ops.segment_sum(fire_i, tokens, spec.vocab)
    # exact: 0/1 products summed in float32 stay integers below 2^24 per batch
    pairs = jnp.matmul(fire_f.T, fire_f, preferred_element_type=jnp.float32)
    new["coact"] = state["coact"] + pairs.astype(jnp.int32)

    first_seq = batch_index * b
    seq = first_seq + jnp.arange(b * t, dtype=jnp.int32) // t
    pos = jnp.arange(b * t, dtype=jnp.int32) % t

    def candidates(keys: Array, k: int) -> tuple[Array, list[tuple[str, Array]]]:
        k_new = min(k, b * t)
        top, flat = jax.lax.top_k(keys.T, k_new)
        ctx_tokens, ctx_values = _contexts(x, ci, flat, spec.width)
        fields = [("seq", seq[flat]), ("pos", pos[flat])]
        return top, [*fields, ("tokens", ctx_tokens), ("values", ctx_values)]

    if spec.top_k:
        top, fields = candidates(jnp.where(fire, flat_ci, EMPTY_CI), spec.top_k)
        pairs_ = [(state[f"top_{name}"], arr) for name, arr in fields]
        new["top_ci"], merged = _merge(state["top_ci"], top, spec.top_k, pairs_)
        for (name, _), arr in zip(fields, merged, strict=True):
            new[f"top_{name}"] = arr
    if spec.reservoir:
        index = seq * t + pos
        keys = reservoir_keys(spec.seed, index, n)
        neg = jnp.where(fire, -keys, EMPTY_NEG_KEY)  # top_k of -key keeps the smallest keys
        top, fields = candidates(neg, spec.reservoir)
        pairs_ = [(state[f"res_{name}"], arr) for name, arr in fields]
        new["res_neg_key"], merged = _merge(state["res_neg_key"], top, spec.reservoir, pairs_)
        for (name, _), arr in zip(fields, merged, strict=True):
            new[f"res_{name}"] = arr
    return new, jnp.sum(flat_ci, axis=0)


def make_harvest_step(
    spec: HarvestSpec,
    objective: Objective,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    state_sharding: Any = None,
) -> Any:
    """`step(params, target_state, state, x, batch_index) -> (state, ci_sum)`: the clean pass
    and `harvest_batch` as one jitted program. The state is donated (updated in place) and, with
    a sharding, kept replicated; the batch arrives sharded over the data axes, and XLA reduces
    the counts across the devices."""

    def step(
        params: nnx.State,
        target_state: nnx.State,
        state: HarvestState,
        x: Array,
        batch_index: Array,
    ) -> tuple[HarvestState, Array]:
        model = nnx.merge(graphdef, params)
        target = nnx.merge(target_graphdef, target_state)
        ci = batch_ci(objective, model, target, x, spec.compute_dtype)
        return harvest_batch(spec, state, ci, x, batch_index)

    out = None if state_sharding is None else (state_sharding, state_sharding)
    return jax.jit(step, donate_argnums=(2,), out_shardings=out)
