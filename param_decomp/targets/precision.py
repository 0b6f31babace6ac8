"""The pretrained LMs' compute dtype: bf16 compute with fp32 master weights and reductions (S15).

`lm_logits` is the one place the switch lives. With "float32" it is exactly the plain forward
`nnx.merge(graphdef, params)(tokens)`. With "bfloat16" it casts the floating parameters to bf16
inside the function (so, under `jax.grad`, the cast's transpose hands float32 gradients back to
the float32 masters, and the optimizer state stays float32) and runs the model on them. The model
code keeps the sensitive parts in float32 whatever its input dtype: the norm statistics
(`rms_norm`, `layer_norm`), the attention scores and softmax (`causal_attention`), and the head's
accumulation, soft-cap and logits (`TokenLM.head`). The logits come back float32, so every loss,
log-softmax and reduction on them is float32.
"""

from __future__ import annotations

from typing import TypeVar, get_args

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int, PyTree

from param_decomp.config.schema import ComputeDtype

COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)

T = TypeVar("T", bound=PyTree)
M = TypeVar("M", bound=nnx.Module)


def cast_floating(tree: T, dtype: jnp.dtype) -> T:
    """`tree` with every floating-point array cast to `dtype`; integer and bool leaves as is."""

    def cast(leaf: Array) -> Array:
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, tree)


def module_in_dtype(module: M, compute_dtype: ComputeDtype) -> M:
    """`module` itself for "float32" (the same object, so that path's graph is unchanged); else a
    copy whose floating state is cast to bf16 (S15.6). Called inside the differentiated function,
    the cast's transpose returns float32 gradients to float32 masters."""
    if compute_dtype == "float32":
        return module
    if compute_dtype != "bfloat16":
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, cast_floating(state, jnp.bfloat16))


def compute_cast(tree: T, compute_dtype: ComputeDtype) -> T:
    """`tree` itself for "float32"; its floating leaves in bf16 for "bfloat16" (S15.6)."""
    return tree if compute_dtype == "float32" else cast_floating(tree, jnp.bfloat16)


def at_least_float32(tree: T) -> T:
    """`tree` with its sub-float32 floating leaves (bf16) cast to float32; float32 and float64
    leaves are returned as they are, so a float32 (or x64) step's graph gains no op (S15.7)."""

    def cast(leaf: Array) -> Array:
        narrow = jnp.issubdtype(leaf.dtype, jnp.floating) and jnp.finfo(leaf.dtype).bits < 32
        return leaf.astype(jnp.float32) if narrow else leaf

    return jax.tree.map(cast, tree)


def lm_logits(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: Int[Array, "b t"],
    compute_dtype: ComputeDtype = "float32",
) -> Float[Array, "b t v"]:
    """Float32 logits of the LM `nnx.merge(graphdef, params)` on `tokens`, computed in
    `compute_dtype` (S15).

    "float32": the plain forward, bit for bit (S15.1). "bfloat16": the floating params are cast
    to bf16 here, inside whatever function is differentiated, so the masters and their
    gradients stay float32 (S15.2); matmuls and the residual stream run in bf16, while the norm
    statistics, the attention softmax, the soft-cap and the logits are float32 (S15.3).
    """
    if compute_dtype == "float32":
        return nnx.merge(graphdef, params)(tokens)
    if compute_dtype != "bfloat16":
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    model = nnx.merge(graphdef, cast_floating(params, jnp.bfloat16))
    return model(tokens).astype(jnp.float32)
