#!/usr/bin/env bash
# The reference's `run.sh` interface (../shared/reference/run.sh) on a GPU machine, where
# ../shared does not travel and nothing can be installed from the network:
#   bench/gpu_reference_run.sh tms|resid           -> one JSON line, the toy step on cuda
#   bench/gpu_reference_run.sh python SCRIPT ARGS  -> SCRIPT in the reference's environment
# The reference runs from its snapshot unpacked in $REF_SRC (default .refsnap/spd-3f0bb61e,
# carried with the working tree) on the machine's own python with torch, and the wheels it
# lacks installed into $REF_SITE (bench/gpu_bench.sh does that). PYTHONPATH is replaced, not
# extended, so this project's packages (another pydantic) never reach the reference.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=${REF_SRC:-$repo/.refsnap/spd-3f0bb61e}
py=${REF_PYTHON:-python3}
cd "$src"
export PYTHONPATH=".:${REF_SITE:-/tmp/site_ref}"
case ${1:-} in
  python) shift; script=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift
          exec "$py" "$script" "$@" ;;
  # GPU steps take milliseconds: longer runs than run.sh's so the difference is well above noise
  tms) "$py" "$repo/bench/reference_toy_harness.py" tms "${REF_TMS_STEPS:-100,1100}" \
         --device "${REF_DEVICE:-cuda}" | grep '^{' ;;
  resid) "$py" "$repo/bench/reference_toy_harness.py" resid "${REF_RESID_STEPS:-20,220}" \
           --device "${REF_DEVICE:-cuda}" | grep '^{' ;;
  *) echo "usage: gpu_reference_run.sh tms|resid | python SCRIPT [ARGS...]" >&2; exit 2 ;;
esac
