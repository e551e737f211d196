#!/usr/bin/env bash
# The GPU checks as ONE call on a machine with an NVIDIA card, well under 10 minutes, installing nothing
# heavy: the `gpu` tests, a look at discovery and idle attestation through the real nvidia-smi, then
# bench/gpu.py. Everything it prints also lands in $OUT (when set, else ./gpu_check_out).
#
#   bash bench/gpu_check.sh --prepare   # here, first: fetches a pycocotools wheel for the GPU image's Python
#                                       # (3.12) into .whl/ (git-ignored), for the AP columns
#   bash bench/gpu_check.sh             # on the GPU machine, with .whl carried along
#
# The oracle (checkpoint script, parameters, photographs) travels in the repository: tests/fixtures/oracle.
# Python: .venv/bin/python when it imports torch, else python3 (a CUDA image's own torch and
# onnxruntime). Wheels found in .whl/ (say pycocotools, for the AP columns) are installed into
# /tmp/site first, without dependencies or network.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    # pycocotools for the AP columns, built for the GPU image's Python (3.12, x86-64); skipped when pip cannot
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pycocotools \
        || echo "pycocotools wheel not fetched: no AP columns" >&2
    du -sh .whl 2>/dev/null
    exit 0
fi
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; fi
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - start )) s)"; }

{
    step "machine"
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv
    $PY - <<'PY'
import onnxruntime as ort, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.get_available_providers())
PY
    step "discovery and idle attestation (workers.devices, the real nvidia-smi)"
    $PY -c "from workers.devices import discover, attest; d = discover(); print(d); [print(x, attest(x)) for x in d]"
} 2>&1 | tee "$OUT/machine.txt"

step "gpu tests" | tee "$OUT/gpu_tests.txt"
timeout 240 $PY -m pytest -p no:cacheprovider --noconftest -m gpu -rs -s -q \
    tests/workers/backends/test_gpu.py tests/workers/backends/test_torch_backend.py 2>&1 | tee -a "$OUT/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

step "bench/gpu.py" | tee "$OUT/gpu_bench.txt"
timeout 230 $PY bench/gpu.py --budget-s 150 --json "$OUT/gpu_bench.json" 2>&1 | tee -a "$OUT/gpu_bench.txt"
bench_rc=${PIPESTATUS[0]}

step "done: tests exit $tests_rc, bench exit $bench_rc" | tee -a "$OUT/gpu_bench.txt"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
