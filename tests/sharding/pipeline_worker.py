"""One process of the two-process pipeline test: 2 CPU devices each, one 4-device mesh.

Usage: python pipeline_worker.py PORT PROCESS_ID NUM_PROCESSES CORPUS CACHE OUT_DIR
For two meshes it builds the pipeline on the global mesh, draws a few global batches, and
writes this process's rows (read from disk by this process alone) and a checksum of each
global batch computed on the mesh.
"""

import json
import os
import sys

# 2 devices per process; the suite's LLVM level (tests/conftest.py, tests/processes.py)
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

port, pid, nproc, corpus, cache, out_dir = sys.argv[1:7]
pid, nproc = int(pid), int(nproc)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid
)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from param_decomp.config.pretrain_schema import TextData  # noqa: E402
from param_decomp.data.pipeline import TextBatches  # noqa: E402
from param_decomp.data.token_store import prepare_tokens  # noqa: E402

SEQ, BATCH, STEPS, SEED = 16, 8, 6, 11
store = prepare_tokens(TextData(corpus=corpus), SEQ, cache)  # both processes: one cache
checksum = jax.jit(lambda x: jnp.sum(x * (1 + jnp.arange(x.size).reshape(x.shape) % 7)))
result = {}
for name, shape, axes in (
    ("data4", (4,), ("data",)),
    ("data2_tensor2", (2, 2), ("data", "tensor")),
):
    mesh = Mesh(np.asarray(jax.devices()).reshape(shape), axes)
    batches = TextBatches(store.train, SEQ, BATCH, SEED, NamedSharding(mesh, PartitionSpec("data")))
    local, sums = [], []
    for _ in range(STEPS):
        batch = next(batches)
        shards = sorted(batch.addressable_shards, key=lambda s: s.index[0].start or 0)
        rows = {(s.index[0].start, s.index[0].stop): np.asarray(s.data) for s in shards}
        local.append(np.concatenate([rows[k] for k in sorted(rows)]).tolist())
        sums.append(int(checksum(batch)))
    result[name] = {"rows": [batches.rows.start, batches.rows.stop], "local": local, "sums": sums}
with open(os.path.join(out_dir, f"process{pid}.json"), "w") as f:
    json.dump(result, f)
jax.distributed.shutdown()
