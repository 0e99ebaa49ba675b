#!/usr/bin/env bash
# One GPU session in one command (see benchmarks/gpu_session.py for the phases and options):
#   bash benchmarks/gpu_session.sh              # on a CUDA machine; results under $OUT
#   bash benchmarks/gpu_session.sh --dry-run    # rehearse every phase on the CPU (CI)
# Uses the python that holds torch and triton ($PYTHON, default python3); nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
exec "${PYTHON:-python3}" benchmarks/gpu_session.py "$@"
