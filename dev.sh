#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (once) and runs the main job or the tests.
#   ./dev.sh bench   quick CPU benchmark of the attention backends (the main job)
#   ./dev.sh test    the test suite
#   ./dev.sh setup   only the environment
set -euo pipefail
cd "$(dirname "$0")"
VENV=${BIGBIRD_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local py="$VENV/bin/python"
  "$py" -m pip install -q --upgrade pip
  if ! "$py" -c "import torch" 2>/dev/null; then
    # pinned: an unpinned torch pulls several GB of CUDA wheels on CPU machines
    "$py" -m pip install -q "torch==${BIGBIRD_TORCH_VERSION:-2.13.0}"
  fi
  "$py" -m pip install -q "triton==${BIGBIRD_TRITON_VERSION:-3.7.1}"
  BIGBIRD_BUILD_CUDA=${BIGBIRD_BUILD_CUDA:-0} "$py" -m pip install -q -e ".[test,sentencepiece,plot]"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  test)
    setup
    # one worker per core (pytest-xdist, from the test extra): the suite is CPU-bound
    exec "$VENV/bin/python" -m pytest -q -n auto "$@"
    ;;
  bench)
    setup
    exec "$VENV/bin/bigbird" bench attention --quick "$@"
    ;;
  *) echo "usage: ./dev.sh {test|bench|setup} [args...]" >&2; exit 2 ;;
esac
