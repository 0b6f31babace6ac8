"""One process of the two-process test: 2 CPU devices each, one 4-device mesh over gloo.

Usage: python multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES OUT_JSON MESH[,MESH...]
Each process feeds only its slice of every global batch (make_array_from_process_local_data).
Every named mesh runs in the same pair of processes, one after the other (one start-up and
one gloo handshake for all of them); OUT_JSON holds each mesh's trajectory under its name.
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

port, pid, nproc, out_path, mesh_names = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    sys.argv[4],
    sys.argv[5],
)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid
)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from trajectory_problem import MESHES, N_STEPS, build_run, toy_problem  # noqa: E402

problem = toy_problem()
runs = {}
for mesh_name in mesh_names.split(","):
    compiled, batches = build_run(problem, MESHES[mesh_name][0], jax.devices())
    state, history = compiled.state, []
    sharding = compiled.batch_sharding
    for batch in batches:
        batch = np.asarray(batch)
        rows = batch.shape[0] // jax.process_count()
        local = batch[pid * rows : (pid + 1) * rows]
        global_batch = jax.make_array_from_process_local_data(sharding, local, batch.shape)
        state, metrics = compiled.train_step(state, compiled.target_state, global_batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = nnx.to_pure_dict(jax.tree.map(lambda a: np.asarray(a).tolist(), params))
    runs[mesh_name] = {"history": history, "params": flat, "n_steps": N_STEPS}
if pid == 0:
    with open(out_path, "w") as f:
        json.dump({"runs": runs, "devices": jax.device_count()}, f)
jax.distributed.shutdown()
