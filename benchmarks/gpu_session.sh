#!/usr/bin/env bash
# Everything a GPU session checks, in one command (runs in the repository root on a CUDA machine whose
# python already holds torch, triton and transformers; nothing is fetched):
#   1. GPU correctness tests (Triton and CUDA backends vs the reference, race/determinism checks),
#   2. the attention benchmark (every backend and peer, fwd/bwd/fwd+bwd, S = 1k..64k),
#   3. the model benchmark (bf16, batch 8, 4096 tokens, ours vs transformers).
# Results land in benchmarks/results/<device slug>/ and, when $OUT is set, are copied there too.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}
slug=$($PY -c "from bigbird_kernels.bench import device_slug; print(device_slug('cuda'))")
res=benchmarks/results/$slug
mkdir -p "$res"
$PY -m bigbird_kernels.info | tee "$res/info.txt"
BIGBIRD_TEST_INTERPRET=0 $PY -m pytest -q -x tests/gpu 2>&1 | tee "$res/gpu_tests.log"
$PY -m bigbird_kernels.bench --device cuda --passes fwd bwd fwd+bwd --out-dir "$res" 2>&1 | tee "$res/attention.log"
$PY benchmarks/bench_model.py --device cuda --dtype bf16 --batch 8 --backends ours,transformers,transformers-patched 2>&1 | tee "$res/model.log"
if [ -n "${OUT:-}" ]; then cp "$res"/* "$OUT"/; fi
