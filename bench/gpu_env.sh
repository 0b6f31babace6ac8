# Sourced by the GPU session scripts (gpu_bench.sh, gpu_flagship.sh), from the repository root
# with OUT_DIR and LOG set: `log`, `install WHEELS_DIR TARGET_DIR` (the carried wheels, no
# network), this project's wheels installed into /tmp/site_pd and put on PYTHONPATH, and the
# GPU and JAX versions logged. The image's own jax (CUDA) and torch (CUDA) are used as they are.
started=${started:-$(date +%s)}
log() { echo "[$(basename "$0") $(($(date +%s) - started)) s] $*" | tee -a "$LOG"; }

install() {  # wheels dir, target dir
  [[ -d $2 ]] && return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$2" "$1"/*.whl >>"$OUT_DIR/install.log" 2>&1 || { log "install $1 failed"; exit 3; }
}
install .whl_pd /tmp/site_pd
export PYTHONPATH="$PWD:/tmp/site_pd"
log "installed; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
python3 -c "import jax, flax, pydantic; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'pydantic', pydantic.VERSION)" 2>&1 | tee -a "$LOG"
