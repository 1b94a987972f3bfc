#!/usr/bin/env bash
# The prepared device run (issue: the GPU tests and benchmarks on a lent GPU, in one call).
#
#   bash benchmarks/gpu_check.sh [tests] [zoo] [bench ARGS...]
#
# Stages (each under its own time limit, its log in $OUT/<stage>.log, the tail printed):
#   env    the GPU, driver, torch / triton versions
#   tests  the GPU tests of tests/test_triton.py (kernels vs twins, the compiled step with and
#          without CUDA graphs), except the zoo and the benchmark-script test
#   zoo    every streamable example model teacher-forced on CUDA
#   bench  benchmarks/gpu.py with ARGS (results copied to $OUT)
# Caches go to a temporary directory (never a shared path). Limits: T_TESTS, T_ZOO, T_BENCH.
set -u
OUT=${OUT:-$PWD/.gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
CACHE=$(mktemp -d /tmp/lcsm-gpu-XXXX)
export LCSM_CACHE_DIR=$CACHE/lcsm TRITON_CACHE_DIR=$CACHE/triton TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor
unset TRITON_INTERPRET
PY=${PY:-python3}

stage() {
  local name=$1 lim=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${lim} s)"
  timeout -k 5 "$lim" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-12}" "$OUT/$name.log"
}

stage env 60 bash -c "nvidia-smi -L; $PY -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'"
what=${1:-all}
if [ "$what" = all ] || [ "$what" = tests ]; then
  stage tests "${T_TESTS:-150}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_triton.py \
    -k "${TESTS_K:-not every_example and not benchmark_script}" --tb=short
fi
if [ "$what" = all ] || [ "$what" = zoo ]; then
  stage zoo "${T_ZOO:-120}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_triton.py -k "${ZOO_K:-every_example}" --tb=line
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  [ $# -gt 0 ] && shift
  stage bench "${T_BENCH:-300}" $PY benchmarks/gpu.py --out "${OUT_NAME:-gpu}" "$@"
  cp benchmarks/results/"${OUT_NAME:-gpu}".md benchmarks/results/"${OUT_NAME:-gpu}".json "$OUT"/ 2>/dev/null
fi
ls "$OUT"
