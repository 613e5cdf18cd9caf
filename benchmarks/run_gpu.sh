#!/usr/bin/env bash
# The one script a session with a lent GPU runs, from the repository root on the GPU machine:
#
#   bash benchmarks/run_gpu.sh
#
# 1. prints the GPU (nvidia-smi) and the Python / torch / triton versions;
# 2. installs the package (pip install --no-build-isolation --no-deps --no-index -e .; the machine
#    has no network, and torch, triton, setuptools, pybind11 and ninja are preinstalled). If that
#    fails, the tree is used through PYTHONPATH: the three attention ops are Triton kernels and do
#    not need the compiled extension (omni_kernels._C / _cuda);
# 3. runs tests/test_gpu_kernels.py with TRITON_INTERPRET=0 (tests/conftest.py defaults it to 1);
# 4. runs the three benchmarks, which write benchmarks/results/<device-slug>/bench_*.json;
# 5. copies the JSON files, the pytest JUnit XML and this log into $OUT (what the device tool
#    brings back: at most 8 files, 2 folders deep) as $OUT/<device-slug>/bench_*.json.
#
# The whole run is budgeted to fit the device tool's 10-minute limit per command
# (OMNI_BENCH_TOTAL_S, default 540 s): every step gets its share plus whatever earlier steps left,
# and each benchmark stops starting new cases before its share runs out (results so far are kept).
# Environment knobs: PYTHON (default python3), OMNI_BENCH_TOTAL_S, OMNI_BENCH_SKIP_INSTALL=1,
# OMNI_BENCH_QUICK=1 (fewer shapes), OMNI_BENCH_STEPS (default "install test tmrope block_sparse dit"),
# OMNI_BENCH_ALLOW_CPU=1 (dry run without a GPU: quick CPU sweeps, results under $TMPDIR only).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
TOTAL=${OMNI_BENCH_TOTAL_S:-540}
STEPS=${OMNI_BENCH_STEPS:-"install test tmrope block_sparse dit"}
QUICK=${OMNI_BENCH_QUICK:+--quick}
OUT_DIR=${OUT:-}
if [ -n "$OUT_DIR" ]; then
    mkdir -p "$OUT_DIR"
    LOG="$OUT_DIR/run_gpu.log"
else
    LOG="${TMPDIR:-/tmp}/omni_kernels_run_gpu.log"
fi

main() {
export TRITON_INTERPRET=0
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Seconds each step is planned to take; a step may use what earlier steps left over.
declare -A SHARE=([install]=80 [test]=130 [tmrope]=95 [block_sparse]=125 [dit]=110)

later_shares() {  # sum of the shares of the steps after $1
    local seen=0 sum=0 s
    for s in $STEPS; do
        if [ "$seen" = 1 ]; then sum=$((sum + ${SHARE[$s]:-0})); fi
        if [ "$s" = "$1" ]; then seen=1; fi
    done
    echo "$sum"
}

step_timeout() {  # what is left of the total, minus what the later steps are planned to need
    local left=$((START + TOTAL - $(date +%s) - $(later_shares "$1")))
    local share=${SHARE[$1]}
    if [ "$left" -lt "$share" ]; then left=$share; fi  # never starve a step below its share...
    local hard=$((START + TOTAL - $(date +%s)))
    if [ "$left" -gt "$hard" ]; then left=$hard; fi  # ...unless the total is spent
    if [ "$left" -lt 20 ]; then left=20; fi
    echo "$left"
}

banner() { echo; echo "=== $* [$(($(date +%s) - START)) s] ==="; }

banner "device"
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>/dev/null || true
$PY - <<'EOF'
import platform, torch, triton
print(f"python {platform.python_version()}  torch {torch.__version__} (CUDA {torch.version.cuda})  triton {triton.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
else:
    print("torch sees no CUDA device")
EOF
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' || true

SLUG=$($PY -c "import torch; from benchmarks.common import slugify; print(slugify(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else 'cpu')")
RESULTS="$ROOT/benchmarks/results/$SLUG"
if [ "$SLUG" = cpu ]; then
    if [ -z "${OMNI_BENCH_ALLOW_CPU:-}" ]; then
        echo "no CUDA device: this script is for a GPU machine (OMNI_BENCH_ALLOW_CPU=1 dry-runs it on CPU)"
        exit 2
    fi
    RESULTS="${TMPDIR:-/tmp}/omni_kernels_bench_cpu"  # CPU numbers never go under benchmarks/results
    QUICK=--quick
fi
mkdir -p "$RESULTS"
declare -A STATUS
# This run's JSON is written here first, then copied to $RESULTS and $OUT/<slug>/ after each
# benchmark: results committed by earlier runs are replaced, never reported as this run's.
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/omni_bench_run.XXXXXX")
if [ -n "$OUT_DIR" ]; then mkdir -p "$OUT_DIR/$SLUG"; fi

for step in $STEPS; do
    T=$(step_timeout "$step")
    case "$step" in
    install)
        banner "install (timeout ${T}s)"
        if [ -n "${OMNI_BENCH_SKIP_INSTALL:-}" ]; then
            echo "skipped (OMNI_BENCH_SKIP_INSTALL); using PYTHONPATH=$ROOT"
            STATUS[install]=skipped
        elif timeout -k 10 "$T" $PY -m pip install --no-build-isolation --no-deps --no-index -q -e . ; then
            STATUS[install]=ok
            $PY -c "import omni_kernels, omni_kernels.extension as e; print('installed:', omni_kernels.__file__, '| CUDA extension:', e.cuda_extension_available(), e.cuda_device_status())" \
                || echo "(the compiled extension does not import; the Triton ops do not need it)"
        else
            STATUS[install]="failed (rc $?)"
            echo "pip install failed: using the source tree through PYTHONPATH=$ROOT (the Triton attention ops need no compiled extension)"
        fi
        ;;
    test)
        banner "tests/test_gpu_kernels.py, TRITON_INTERPRET=0 (timeout ${T}s)"
        JUNIT=()
        if [ -n "$OUT_DIR" ]; then JUNIT=(--junitxml "$OUT_DIR/test_gpu_kernels.xml"); fi
        timeout -k 10 "$T" $PY -m pytest tests/test_gpu_kernels.py -q -rfEs -p no:cacheprovider ${JUNIT[@]+"${JUNIT[@]}"}
        rc=$?
        STATUS[test]=$([ $rc = 0 ] && echo passed || echo "FAILED (rc $rc$([ $rc = 124 ] && echo ', timed out'))")
        ;;
    tmrope|block_sparse|dit)
        case "$step" in
        tmrope) mod=bench_tmrope_attention ;;
        block_sparse) mod=bench_block_sparse_attention ;;
        dit) mod=bench_dit_window_attention ;;
        esac
        BUDGET=$((T - 35)); if [ "$BUDGET" -lt 10 ]; then BUDGET=10; fi
        banner "$mod (timeout ${T}s, case budget ${BUDGET}s)"
        timeout -k 10 "$T" $PY -m "benchmarks.$mod" --out "$RUN_DIR" --budget-s "$BUDGET" $QUICK
        rc=$?
        STATUS[$step]=$([ $rc = 0 ] && echo ok || echo "FAILED (rc $rc$([ $rc = 124 ] && echo ', timed out'))")
        if [ -f "$RUN_DIR/$mod.json" ]; then
            cp "$RUN_DIR/$mod.json" "$RESULTS/"
            if [ -n "$OUT_DIR" ]; then cp "$RUN_DIR/$mod.json" "$OUT_DIR/$SLUG/"; fi
        else
            echo "$mod wrote no JSON"
        fi
        ;;
    *)
        echo "unknown step $step"
        ;;
    esac
done

banner "results"
ls -l "$RUN_DIR"
echo "copied to $RESULTS${OUT_DIR:+ and $OUT_DIR/$SLUG}"

banner "summary"
for step in $STEPS; do echo "  $step: ${STATUS[$step]:-not run}"; done
$PY - "$RUN_DIR" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    data = json.loads(path.read_text())
    cases = data.get("cases", [])
    done = sum("results" in c for c in cases)
    print(f"{path.name}: {done}/{len(cases)} cases measured on {data['device'].get('name')}")
    for t in data.get("targets", []):
        status = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        print(f"  {t['target']}: {value} ({t['op']} {t['threshold']}) {status}")
EOF
echo "total $(($(date +%s) - START)) s"
}

# Everything goes to the terminal and to the log; the pipe ends only when both are done.
main 2>&1 | tee -a "$LOG"
