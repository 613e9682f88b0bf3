#!/usr/bin/env bash
# The GPU lane in one run: the CUDA tests (tests/gpu/, pytest marker `gpu`) and the
# entropy kernel's bandwidth benchmark, with everything written under OUT (default
# gpu-check/). Needs CUDA PyTorch, Triton, transformers and pytest; no vLLM, no network.
#
#   bash scripts/gpu_check.sh [OUT]          # on the GPU machine, from the repository root
#
# ENTROPY_SERVE_TEST_DEVICE=cpu TRITON_INTERPRET=1 bash scripts/gpu_check.sh --dry-run OUT
# runs the same lane on the CPU, small (CI does this: tests/test_gpu_lane.py).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUT="${1:-gpu-check}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE="${ENTROPY_SERVE_TEST_DEVICE:-cuda}"
export ENTROPY_SERVE_TEST_DEVICE="$DEVICE"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

"$PYTHON" -m pytest -m gpu --noconftest -p no:cacheprovider -q -rA tests/gpu --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log"
TESTS=${PIPESTATUS[0]}

BENCH_ARGS=(--device "$DEVICE" --out "$OUT/entropy_kernel.json")
if [ "$DRY_RUN" = 1 ]; then BENCH_ARGS+=(--quick --repeats 2); fi
"$PYTHON" benchmarks/entropy_kernel.py "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/entropy_kernel.log"
BENCH=${PIPESTATUS[0]}

echo "tests exit $TESTS, benchmark exit $BENCH" | tee "$OUT/summary.txt"
[ "$TESTS" = 0 ] && [ "$BENCH" = 0 ]
