#!/usr/bin/env bash
# The SPD paper's long toy runs on one GPU (prepared, not yet run): ResidMLP-2 (25 000 steps) and
# ResidMLP-3 (50 000 steps) at full length, plus any of the other five not done, then the write-up.
# Records go to $RUNS (default runs_gpu/reproduce/*.json); copy them into the CPU machine's
# runs/reproduce/ with the runs' figures and re-render there:
#   param-decomp reproduce configs/reproduce/paper.yaml --render-only
# Each record names the machine (GPU) and the wall time. Usage, from the repository root:
#   bash bench/gpu_paper_toys.sh [RUNS] [ONLY]
# ONLY (comma-separated experiment names) defaults to resid_mlp_2,resid_mlp_3.
set -euo pipefail
RUNS="${1:-runs_gpu}"
ONLY="${2:-resid_mlp_2,resid_mlp_3}"
PY="${PYTHON:-.venv/bin/python}"
if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "no GPU backend for jax ($PY); install jax[cuda12] into the venv first" >&2
  exit 1
fi
"$PY" -c "import jax; print('devices:', jax.devices())"
# one experiment at a time, so a failure in the second keeps the first's record
IFS=',' read -ra NAMES <<< "$ONLY"
for name in "${NAMES[@]}"; do
  "$PY" -m param_decomp.cli reproduce configs/reproduce/paper.yaml --runs-dir "$RUNS" \
    --only "$name" --no-progress --out "$RUNS/paper_toys.md"
done
echo "records: $RUNS/reproduce/; write-up of this machine's runs: $RUNS/paper_toys.md"
