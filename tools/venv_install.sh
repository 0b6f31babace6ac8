#!/usr/bin/env bash
# `pip install ARGS` into .venv, done by uv when it can be had (make demo / make test).
#   tools/venv_install.sh [pip install arguments...]
# Why: on 2 cores pip takes about a minute to resolve and install this project's dependencies
# and the test extras; uv installs the same versions from the same wheels in under 10 s
# (issue 19: the minute counted against the 10-minute CI budget). uv is given pip's own
# configuration (find-links, constraint files, extra indexes, certificate), so a machine's
# local wheels and caps still apply, and `--index-strategy unsafe-best-match` picks versions
# across indexes the way pip does. Where uv cannot be installed or fails, pip does the install.
set -euo pipefail
py=${VENV_PYTHON:-.venv/bin/python}
if "$py" -m pip install -q uv >/dev/null 2>&1; then
  uv_args=(--python "$py" --index-strategy unsafe-best-match)
  # `pip config list` prints key='value' lines, from files and PIP_* variables alike
  while IFS= read -r line; do
    key=${line%%=*}; value=${line#*=}; value=${value#\'}; value=${value%\'}
    for v in $value; do
      case ${key##*.} in
        find-links) uv_args+=(--find-links "$v") ;;
        constraint) [[ -f $v ]] && uv_args+=(--constraint "$v") ;;
        extra-index-url) uv_args+=(--extra-index-url "$v") ;;
        index-url) uv_args+=(--index-url "$v") ;;
        cert) export SSL_CERT_FILE=${SSL_CERT_FILE:-$v} ;;
      esac
    done
  done < <("$py" -m pip config list 2>/dev/null)
  if "$py" -m uv pip install -q "${uv_args[@]}" "$@"; then
    exit 0
  fi
  echo "venv_install: uv could not install; pip does" >&2
fi
exec "$py" -m pip install -q "$@"
