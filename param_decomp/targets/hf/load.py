"""A Hugging Face model folder as the project's Llama or GPT-2 target (S17).

The model is built abstractly (shapes only), every array is matched to its stored tensor(s)
(`weight_map`), and the whole folder is checked (missing tensors, shapes, dtypes, tensors the
mapping does not read) before any weight is read. Each array is then read in the layout its
sharding asks for: `jax.make_array_from_callback` asks for each local device's block and only
that block is copied out of the memory-mapped file, so with `shard_target_weights` no host
holds more of a weight than its devices do (S17.5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from param_decomp.targets.build import build_lm
from param_decomp.targets.gpt2 import GPT2
from param_decomp.targets.hf.config_map import HFTargetSpec
from param_decomp.targets.hf.errors import HFCheckpointError
from param_decomp.targets.hf.safetensors_io import LOADABLE_DTYPES, SafetensorsFolder
from param_decomp.targets.hf.weight_map import Source, TensorRef, unused_tensors, weight_sources
from param_decomp.targets.llama import Llama

Index = tuple[slice, ...]


def path_name(path: tuple[Any, ...]) -> str:
    """('layers', 0, 'attn_q', 'value') as jax tree keys -> 'layers.0.attn_q'."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return ".".join(n for n in names if n != "value")


def abstract_hf_target(spec: HFTargetSpec) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStructs in the spec's dtype): the target, nothing allocated."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_lm(spec.model)))
    dtype = jnp.dtype(spec.dtype)
    return graphdef, jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), state)


def _refs(source: Source) -> tuple[TensorRef, ...]:
    return source if isinstance(source, tuple) else (source,)


def checkpoint_problems(
    spec: HFTargetSpec, folder: SafetensorsFolder, sources: dict[str, Source]
) -> list[tuple[str, str]]:
    """(tensor name, message) for every tensor the target needs that is missing, has another
    shape or a dtype that cannot be loaded, and every stored tensor nothing reads."""
    problems: list[tuple[str, str]] = []
    for path, source in sources.items():
        for ref in _refs(source):
            stored = folder.tensors.get(ref.name)
            if stored is None:
                problem = (ref.name, f"missing (the {spec.family} target's {path} needs it)")
            elif stored.shape != ref.shape:
                problem = (
                    ref.name,
                    f"shape {list(stored.shape)} in {stored.file.name}, expected "
                    f"{list(ref.shape)} from config.json (for {path})",
                )
            elif stored.dtype not in LOADABLE_DTYPES:
                problem = (
                    ref.name,
                    f"dtype {stored.dtype} in {stored.file.name} cannot be loaded into "
                    f"{spec.dtype}; loadable: {', '.join(LOADABLE_DTYPES)}",
                )
            else:
                continue
            if problem not in problems:
                problems.append(problem)
    for name in unused_tensors(spec.family, spec.model.tied_head, sources, set(folder.tensors)):
        file = folder.tensors[name].file.name
        msg = f"in {file} but no {spec.family} weight reads it (a variant this loader lacks?)"
        problems.append((name, msg))
    return problems


def checked_sources(spec: HFTargetSpec) -> tuple[SafetensorsFolder, dict[str, Source]]:
    """The folder's tensors and each target array's source, once the headers show every
    source is there with its shape and a loadable dtype (else HFCheckpointError). Reads no
    weights, so it runs before a run folder is made."""
    folder = SafetensorsFolder(spec.folder)
    sources = weight_sources(spec.family, spec.model, set(folder.tensors))
    problems = checkpoint_problems(spec, folder, sources)
    if problems:
        raise HFCheckpointError(spec.folder, problems)
    return folder, sources


def _full(index: Index, shape: tuple[int, ...]) -> Index:
    """One concrete start:stop slice per axis (make_array_from_callback may pass slice(None))."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape, strict=True))


def _read_ref(folder: SafetensorsFolder, ref: TensorRef, index: Index) -> np.ndarray:
    """The block `index` of the target's array, from ref's stored tensor."""
    stored_index = index[::-1] if ref.transpose else index
    if ref.columns is not None:
        last, offset = stored_index[-1], ref.columns[0]
        stored_index = (*stored_index[:-1], slice(last.start + offset, last.stop + offset))
    block = folder.read(ref.name, stored_index)
    return block.T if ref.transpose else block


def read_block(
    folder: SafetensorsFolder, source: Source, shape: tuple[int, ...], index: Index, dtype: Any
) -> np.ndarray:
    """The block `index` of a target array of `shape` in `dtype`; a stacked source's first
    axis picks its tensors."""
    index = _full(index, shape)
    if isinstance(source, tuple):
        rows = range(index[0].start, index[0].stop)
        block = np.stack([_read_ref(folder, source[r], index[1:]) for r in rows])
    else:
        block = _read_ref(folder, source, index)
    return np.ascontiguousarray(block.astype(dtype))


def load_hf_target(
    spec: HFTargetSpec, shardings: Callable[[nnx.State], Any] | None = None
) -> Llama | GPT2:
    """The target of an hf folder with its stored weights (HFCheckpointError naming the tensor
    or key when the folder does not fit the config). `shardings(abstract state)` places each
    array as it is read; without it every array is read whole onto the default device."""
    graphdef, abstract = abstract_hf_target(spec)
    folder, sources = checked_sources(spec)
    leaves = {path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract)}
    if leaves != set(sources):  # the model and its mapping disagree: a bug, not the folder
        raise AssertionError(f"unmapped arrays {leaves ^ set(sources)}")
    dtype = np.dtype(spec.dtype)

    def load(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct, *placement: Any) -> jax.Array:
        source, shape = sources[path_name(path)], tuple(leaf.shape)
        if not placement:
            return jnp.asarray(read_block(folder, source, shape, (), dtype))
        cache: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

        def block(index: Index) -> np.ndarray:
            """A device's block; devices holding the same block (replicas) share one read."""
            key = tuple((s.start, s.stop) for s in _full(index, shape))
            if key not in cache:
                cache[key] = read_block(folder, source, shape, index, dtype)
            return cache[key]

        return jax.make_array_from_callback(shape, placement[0], block)

    trees = (abstract,) if shardings is None else (abstract, shardings(abstract))
    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(load, *trees))
