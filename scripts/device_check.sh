#!/usr/bin/env bash
# Issue 26's checks on one device in one command: the functional, metric and callback tests
# on it, benchmarks/gpu.py, and bit-identical training with and without every monitor.
#
# On the device machine (one GPU; no network: prepare the wheels here first with
#     bash scripts/prepare_device_wheels.sh
# which fills the git-ignored .whl/), paste into the `run` tool:
#     command:   bash scripts/device_check.sh --device cuda
#     carry:     [".whl"]
#     timeout_s: 600
# Parts, most wanted first, each stopped at its own limit by SIGINT (pytest then prints what
# failed so far) so that what it wrote comes back: functional and metric tests 140 s,
# bit-identical with deterministic=True 45 s, the benchmark 150 s, callback tests 170 s,
# bit-identical with deterministic=False 45 s: 550 s at worst, plus the install. A rerun of
# parts on the still-warm machine: `--only functional`, `--only bits`, `--only bench`,
# `--only callbacks` (repeatable; `bits` runs both settings).
#
# Here, the same steps on the CPU, with no limits (outputs under outputs/device_check/):
#     bash scripts/device_check.sh --device cpu
#
# Writes under $OUT (the device machine's return folder; else --out, else
# outputs/device_check): env.txt (machine, driver, versions), pytest_functional.log and
# pytest_callbacks.log (one line per test, then the failures and the 25 slowest),
# gpu_table.md (the benchmark's tables, written as they finish), gpu_bench.log,
# bit_identical.log, summary.txt (each part's exit status and seconds).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
PARTS=()
QUICK=()
OUTDIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --only) PARTS+=("$2"); shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --out) OUTDIR=$2; shift 2 ;;
        *) echo "usage: $0 [--device cuda|cpu] [--only functional|callbacks|bench|bits]..." \
               "[--quick] [--out DIR]"
           exit 2 ;;
    esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(functional bits-true bench callbacks bits-false)
OUT=${OUT:-${OUTDIR:-outputs/device_check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD MPLBACKEND=Agg
declare -A LIMIT=([functional]=140 [callbacks]=170 [bench]=150 [bits]=45)
if [ "$DEVICE" = cuda ]; then
    export CUBLAS_WORKSPACE_CONFIG=:4096:8  # before any cuBLAS handle: deterministic runs
else
    LIMIT=([functional]=0 [callbacks]=0 [bench]=0 [bits]=0)  # 0: no limit
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/memwatch_site .whl/*.whl && export PYTHONPATH=/tmp/memwatch_site:$PWD
fi

{
    date -u
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv
    python3 - << 'EOF'
import platform, sys
import lightning, torch, torchmetrics
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
print("lightning", lightning.__version__, "torchmetrics", torchmetrics.__version__)
for name in ("diffusers", "jsonargparse", "xdist", "pytest_timeout"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "present"))
    except ImportError as error:
        print(name, "missing:", error)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

: > "$OUT/summary.txt"
part() {  # part NAME LIMIT LOG COMMAND...: run it, keep its exit status and seconds
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
    local status=${PIPESTATUS[0]}
    echo "$name: exit $status, $((SECONDS - start)) s (limit ${limit} s; 0 = none)" \
        | tee -a "$OUT/summary.txt"
}

tests() {  # tests NAME PATH...: the tests under PATH on the device
    local name=$1
    shift
    local extra=(-p no:cacheprovider -v -rfE --maxfail=25 --durations=25)
    if [ "$DEVICE" = cuda ] && python3 -c "import xdist" 2> /dev/null; then
        extra+=(-n 4)  # four test processes on the one GPU
    fi
    if python3 -c "import pytest_timeout" 2> /dev/null; then
        extra+=(--timeout=100)
    fi
    part "$name tests" "${LIMIT[$name]}" "pytest_$name.log" \
        env MEMWATCH_TEST_DEVICE="$DEVICE" python3 -m pytest "$@" "${extra[@]}"
}

bits() {  # bits true|false
    part "bits (deterministic=$1)" "${LIMIT[bits]}" bit_identical.log \
        python3 scripts/bit_identical.py --device "$DEVICE" --deterministic "$1" \
        ${QUICK[@]+"${QUICK[@]}"}
}

for p in "${PARTS[@]}"; do
    case "$p" in
        functional) tests functional tests/functional tests/metrics ;;
        callbacks) tests callbacks tests/callbacks ;;
        bench)
            part bench "${LIMIT[bench]}" gpu_bench.log \
                python3 benchmarks/gpu.py --device "$DEVICE" --out "$OUT/gpu_table.md" \
                ${QUICK[@]+"${QUICK[@]}"}
            ;;
        bits) bits true; bits false ;;
        bits-true) bits true ;;
        bits-false) bits false ;;
        *) echo "unknown part $p (functional, callbacks, bench, bits)"; exit 2 ;;
    esac
done
cat "$OUT/summary.txt"
