"""S17.5: an hf target read straight into its shardings. With `shard_target_weights` on an
fsdp mesh each device's block of a weight is read on its own (no host read covers a whole
2-D weight), replicated arrays are read once for all their devices, and the values equal an
unsharded load. Folders are written with numpy (tests/hf_checkpoints.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from hf_checkpoints import write_llama
from jax.sharding import PartitionSpec

from param_decomp.config.schema import HFTarget, Mesh
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.hf.config_map import HFTargetSpec, hf_target_spec
from param_decomp.targets.hf.load import load_hf_target, path_name
from param_decomp.targets.hf.safetensors_io import SafetensorsFolder


def _leaves(spec: HFTargetSpec, plan: PlacementPlan | None = None) -> list[tuple[Any, jax.Array]]:
    target = load_hf_target(spec, None if plan is None else plan.target_shardings)
    return jax.tree_util.tree_leaves_with_path(nnx.state(target))


def test_weights_are_read_into_their_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert jax.device_count() == 4
    spec = hf_target_spec(HFTarget(hf=str(write_llama(tmp_path / "m", n_files=3))), None)
    whole = _leaves(spec)

    reads: list[tuple[str, int, tuple[int, ...]]] = []
    original = SafetensorsFolder.read

    def spy(self: SafetensorsFolder, name: str, index: tuple[slice, ...]) -> np.ndarray:
        block = original(self, name, index)
        reads.append((name, block.size, self.tensors[name].shape))
        return block

    monkeypatch.setattr(SafetensorsFolder, "read", spy)
    plan = PlacementPlan(build_mesh(Mesh(data=1, fsdp=4, shard_target_weights=True)), True)
    sharded = _leaves(spec, plan)

    for (path, expected), (_, got) in zip(whole, sharded, strict=True):
        name = path_name(path)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=name)
        if got.ndim == 2 and got.shape[0] % 4 == 0:  # site weights, embedding, head
            assert got.sharding.spec == PartitionSpec("fsdp", None), name
            assert got.addressable_shards[0].data.shape == (got.shape[0] // 4, got.shape[1])
    two_d = [(size, shape) for _, size, shape in reads if len(shape) == 2]
    assert len(two_d) == 4 * 16  # 14 projections + embedding + head, one block per device
    assert all(size == math.prod(shape) // 4 for size, shape in two_d)
    norm_reads = [n for n, _, _ in reads if n.endswith("input_layernorm.weight")]
    assert len(norm_reads) == 2  # replicated (2, d) norms: one read per layer for 4 devices
