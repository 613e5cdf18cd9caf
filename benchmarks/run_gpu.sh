#!/usr/bin/env bash
# The one script a session with a lent GPU runs, from the repository root on the GPU machine:
#
#   bash benchmarks/run_gpu.sh
#
# 1. prints the GPU (nvidia-smi) and the Python / torch / triton versions;
# 2. installs the package (pip install --no-build-isolation --no-deps --no-index -e .; the machine
#    has no network, and torch, triton, setuptools, pybind11 and ninja are preinstalled), which
#    builds omni_kernels._C (the C++ CPU twin) and omni_kernels._cuda (the paged KV-cache ops, with
#    the machine's nvcc). If pip fails, `setup.py build_ext --inplace` builds the two modules into
#    the tree, used through PYTHONPATH (`import omni_kernels` needs _C; the KV-cache ops need _cuda);
# 3. runs tests/test_gpu_{paged,kernels,engine,speech,token2wav}.py with TRITON_INTERPRET=0
#    (tests/conftest.py defaults it to 1), one pytest process each, their JUnit XMLs merged into one;
# 4. runs the six kernel benchmarks (paged KV-cache ops, paged decode, paged prefill, tmrope, block
#    sparse, DiT window), the Thinker end to end vs transformers (bench_thinker: bf16 and fp32) and
#    the engine's decode tokens/s vs transformers and the plain-loop floor (bench_engine_decode,
#    bf16) and speech out (bench_speech: the Talker and Token2Wav vs transformers), which write
#    benchmarks/results/<device-slug>/bench_*.json; then omni-bench at the 7B shapes, bf16, 1 and 8
#    concurrent spoken turns (bench_omni.json); on request (OMNI_BENCH_STEPS="... omni_bench serve"),
#    the same load through omni-serve's HTTP path (bench_serve: 1 and 8 streamed spoken requests at
#    the 7B shapes; skipped unless fastapi, uvicorn and openai are importable); and transformers' own
#    generate patched with omni_kernels.transformers vs unpatched (bench_transformers_patch, --quick,
#    7b-ratios tiny checkpoint);
# 5. copies the JSON files and this log into $OUT (what the device tool brings back: at most 8
#    files, 2 folders deep): $OUT/run_gpu.log and $OUT/<device-slug>/bench_*.json -- exactly 8
#    files; add no more. The tests' merged JUnit XML, bench_engine_decode.json, bench_speech.json,
#    bench_omni.json, bench_serve.json and bench_transformers_patch.json are appended to the end of run_gpu.log instead, each between "=== NAME" and "=== end of NAME"
#    lines (`sed -n '/^=== bench_engine_decode.json/,/^=== end of/p' run_gpu.log | sed '1d;$d'`
#    gives the JSON back).
#
# The whole run is budgeted to fit the device tool's 10-minute limit per command
# (OMNI_BENCH_TOTAL_S, default 570 s): every step gets its share plus whatever earlier steps left,
# and each benchmark stops starting new cases before its share runs out (results so far are kept;
# skipped cases are listed in its JSON and output). Shares (s): install 55, test 145, kv_cache 20,
# paged_decode 30, paged_prefill 25, tmrope 35, block_sparse 40, dit 45, speech 10, omni_bench 60,
# transformers_patch 30, thinker 40, engine_decode 35 = 570, 30 s under the device tool's 600 s per
# command (engine_decode's, speech's and omni_bench's came out of the kernel benchmarks, which stop
# early, not out of install or the tests; serve, 30, is not a default step); a benchmark's case budget is its timeout minus RESERVE (start-up, the last
# case's overrun, the table). thinker and engine_decode run last, so whatever the earlier steps leave
# unused goes to them (engine_decode also finds the Triton kernels thinker compiled in its cache).
# Environment knobs: PYTHON (default python3), OMNI_BENCH_TOTAL_S, OMNI_BENCH_SKIP_INSTALL=1,
# OMNI_BENCH_QUICK=1 (fewer shapes), OMNI_BENCH_STEPS (default
# "install test kv_cache paged_decode paged_prefill tmrope block_sparse dit speech omni_bench transformers_patch thinker engine_decode"),
# OMNI_BENCH_ALLOW_CPU=1 (dry run without a GPU: quick CPU sweeps, results under $TMPDIR only).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
TOTAL=${OMNI_BENCH_TOTAL_S:-570}
STEPS=${OMNI_BENCH_STEPS:-"install test kv_cache paged_decode paged_prefill tmrope block_sparse dit speech omni_bench transformers_patch thinker engine_decode"}
QUICK=${OMNI_BENCH_QUICK:+--quick}
OUT_DIR=${OUT:-}
if [ -n "$OUT_DIR" ]; then
    mkdir -p "$OUT_DIR"
    LOG="$OUT_DIR/run_gpu.log"
else
    LOG="${TMPDIR:-/tmp}/omni_kernels_run_gpu.log"
fi
# The tests' merged JUnit XML: written by the test step, appended to the log file at the very end
# (after the summary, so the terminal's last lines stay the summary). Likewise the JSON of the
# benchmarks in LOG_ONLY, which would be a 9th file in $OUT.
XML_MERGED=$(mktemp "${TMPDIR:-/tmp}/omni_test_gpu.XXXXXX.xml")
LOG_ONLY="bench_engine_decode bench_speech bench_omni bench_serve bench_transformers_patch"
LOG_JSON_DIR=$(mktemp -d "${TMPDIR:-/tmp}/omni_bench_logjson.XXXXXX")

main() {
export TRITON_INTERPRET=0
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Seconds each step is planned to take; a step may use what earlier steps left over.
declare -A SHARE=([install]=55 [test]=145 [kv_cache]=20 [paged_decode]=30 [paged_prefill]=25 [tmrope]=35
                  [block_sparse]=40 [dit]=45 [thinker]=40 [engine_decode]=35 [speech]=10 [omni_bench]=60 [serve]=30
                  [transformers_patch]=30)
# Seconds of a benchmark's timeout not given to its cases: interpreter start-up and imports, the
# last case started before the budget ran out (torch.compile'd peers make those long), the table.
# thinker, engine_decode: importing transformers and writing the tiny checkpoint count inside their
# case budget; the reserve covers the last case started (a few seconds) and the table.
declare -A RESERVE=([kv_cache]=15 [paged_decode]=20 [paged_prefill]=20 [tmrope]=35 [block_sparse]=35 [dit]=35
                    [thinker]=15 [engine_decode]=10 [speech]=10 [serve]=10 [transformers_patch]=10)
declare -A MODULE=([kv_cache]=bench_kv_cache_ops [paged_decode]=bench_paged_decode_attention
                   [paged_prefill]=bench_paged_prefill_attention [tmrope]=bench_tmrope_attention
                   [block_sparse]=bench_block_sparse_attention [dit]=bench_dit_window_attention
                   [thinker]=bench_thinker [engine_decode]=bench_engine_decode [speech]=bench_speech
                   [serve]=bench_serve [transformers_patch]=bench_transformers_patch)
# Arguments of a benchmark beyond --out / --budget-s / --quick. serve: the 7B shapes omni_bench wrote
# (the same cached random checkpoint), 1 and 8 streams.
declare -A ARGS=([serve]="--shapes 7b --levels 1,8" [transformers_patch]="--quick")

# nvcc for the extension build: the CUDA image keeps it in /usr/local/cuda/bin.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi

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

need_omni_runtime() {
    if ! $PY -c "import omni_runtime" >/dev/null 2>&1; then
        # Not pip-installed (install skipped or fell back to build_ext --inplace): the package
        # directory is runtime/, imported as omni_runtime -- put a link by that name on the path.
        SHIM=$(mktemp -d "${TMPDIR:-/tmp}/omni_runtime_shim.XXXXXX")
        ln -s "$ROOT/runtime" "$SHIM/omni_runtime"
        export PYTHONPATH="$SHIM:$PYTHONPATH"
        echo "omni_runtime is not installed: importing it from $ROOT/runtime through $SHIM"
    fi
}

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
        else
            rc=$?
            echo "pip install failed (rc $rc): building the extension in place (setup.py build_ext --inplace)"
            if timeout -k 10 "$(step_timeout install)" $PY setup.py -q build_ext --inplace; then
                STATUS[install]="pip failed (rc $rc); built in place, used through PYTHONPATH=$ROOT"
            else
                STATUS[install]="FAILED (pip rc $rc, build_ext rc $?)"
                echo "the extension did not build: import omni_kernels (which needs omni_kernels._C) will fail"
            fi
        fi
        if [ "${STATUS[install]}" != skipped ]; then
            $PY -c "import omni_kernels, omni_kernels.extension as e; print('omni_kernels:', omni_kernels.__file__, '| CUDA extension:', e.cuda_extension_available(), e.cuda_device_status())" \
                || echo "omni_kernels does not import"
        fi
        ;;
    test)
        # One pytest process per file, so a CUDA error that poisons one process (an illegal
        # address is sticky) cannot fail the other file's tests; the JUnit XMLs are merged into one.
        banner "tests/test_gpu_{paged,kernels,engine,speech,token2wav}.py; TRITON_INTERPRET=0 (timeout ${T}s)"
        TEST_START=$(date +%s)
        XMLS=()
        FAILED=""
        for f in tests/test_gpu_paged.py tests/test_gpu_kernels.py tests/test_gpu_engine.py tests/test_gpu_speech.py tests/test_gpu_token2wav.py; do
            if [ "$f" = tests/test_gpu_paged.py ]; then
                FT=$((T - 80)); if [ "$FT" -lt 60 ]; then FT=60; fi  # leave the second file >= 80 s
            else
                FT=$((T - ($(date +%s) - TEST_START))); if [ "$FT" -lt 30 ]; then FT=30; fi
            fi
            XML="$RUN_DIR/$(basename "$f" .py).xml"
            echo "--- $f (timeout ${FT}s)"
            timeout -k 10 "$FT" $PY -m pytest "$f" -q -rfEs -p no:cacheprovider --junitxml "$XML"
            rc=$?
            XMLS+=("$XML")
            if [ $rc != 0 ]; then FAILED="$FAILED $(basename "$f") (rc $rc$([ $rc = 124 ] && echo ', timed out'))"; fi
        done
        STATUS[test]=$([ -z "$FAILED" ] && echo passed || echo "FAILED:$FAILED")
        if [ -n "$OUT_DIR" ]; then
            # Appended to the log file after the run (the 8-file limit), not printed.
            $PY - "$XML_MERGED" "${XMLS[@]}" <<'EOF'
import sys
import xml.etree.ElementTree as ET
root = ET.Element("testsuites")
for path in sys.argv[2:]:
    try:
        top = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue  # a file killed by its timeout wrote no XML
    root.extend([top] if top.tag == "testsuite" else list(top))
ET.ElementTree(root).write(sys.argv[1], encoding="utf-8", xml_declaration=True)
EOF
        fi
        ;;
    kv_cache|paged_decode|paged_prefill|tmrope|block_sparse|dit|thinker|engine_decode|speech|serve|transformers_patch)
        mod=${MODULE[$step]}
        if [[ $step = thinker || $step = engine_decode || $step = speech || $step = serve || $step = transformers_patch ]]; then need_omni_runtime; fi
        if [ "$step" = serve ] && ! $PY -c "import fastapi, uvicorn, openai" >/dev/null 2>&1; then
            STATUS[$step]="skipped (fastapi, uvicorn or openai not installed)"
            banner "$mod: ${STATUS[$step]}"
            continue
        fi
        BUDGET=$((T - ${RESERVE[$step]})); if [ "$BUDGET" -lt 10 ]; then BUDGET=10; fi
        banner "$mod (timeout ${T}s, case budget ${BUDGET}s)"
        timeout -k 10 "$T" $PY -m "benchmarks.$mod" --out "$RUN_DIR" --budget-s "$BUDGET" $QUICK ${ARGS[$step]:-}
        rc=$?
        STATUS[$step]=$([ $rc = 0 ] && echo ok || echo "FAILED (rc $rc$([ $rc = 124 ] && echo ', timed out'))")
        if [ -f "$RUN_DIR/$mod.json" ]; then
            cp "$RUN_DIR/$mod.json" "$RESULTS/"
            if [[ " $LOG_ONLY " = *" $mod "* ]]; then
                cp "$RUN_DIR/$mod.json" "$LOG_JSON_DIR/"  # to the end of the log: $OUT holds 8 files
            elif [ -n "$OUT_DIR" ]; then
                cp "$RUN_DIR/$mod.json" "$OUT_DIR/$SLUG/"
            fi
        else
            echo "$mod wrote no JSON"
        fi
        ;;
    omni_bench)
        # The headline: whole spoken turns at the real 7B shapes (random weights), bf16, CUDA graphs,
        # at 1 and 8 concurrent streams (first packet, packet gaps, RTF, Thinker / Talker speed).
        need_omni_runtime
        banner "omni-bench --shapes 7b (timeout ${T}s)"
        timeout -k 10 "$T" $PY -c "import sys; from omni_runtime.bench import main; sys.exit(main())" --shapes 7b --device cuda --dtype bf16 --no-peer \
            --scenarios text --concurrency 1,8 --text-tokens 100 --codes 150 --quiet --json "$RUN_DIR/bench_omni.json"
        rc=$?
        STATUS[$step]=$([ $rc = 0 ] && echo ok || echo "FAILED (rc $rc$([ $rc = 124 ] && echo ', timed out'))")
        if [ -f "$RUN_DIR/bench_omni.json" ]; then
            cp "$RUN_DIR/bench_omni.json" "$RESULTS/" && cp "$RUN_DIR/bench_omni.json" "$LOG_JSON_DIR/"
        fi
        ;;
    *)
        echo "unknown step $step"
        ;;
    esac
done

banner "results"
ls -l "$RUN_DIR"
echo "copied to $RESULTS${OUT_DIR:+ and $OUT_DIR/$SLUG} ($LOG_ONLY.json: to the end of the log instead)"

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
    if data.get("benchmark") == "thinker":  # no targets: the measured ratios, ours vs transformers
        for c in cases:
            if "results" in c:
                sp = "-" if c.get("speedup") is None else f"{c['speedup']:.2f}x"
                ids = c.get("ids", {}).get("identical")
                print(f"  {c['case']} {c.get('dtype')}: speedup {sp}" + ("" if ids is None else f", ids identical: {ids}"))
    if data.get("benchmark") == "bench_speech":
        for c in cases:
            r = c.get("ratios", {})
            print("  speech: " + ", ".join(f"{k} ours/transformers {v:.2f}x" for k, v in r.items()))
    if data.get("benchmark") == "engine_decode":  # time ratios (< 1: ours faster)
        x = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        for c in cases:
            if c.get("kind") == "decode":
                print(f"  {c['case']}: ours/transformers {x(c['ours_over_transformers'])}, ours/floor "
                      f"{x(c['ours_over_floor'])}, ids identical: {c.get('ids_identical')}")
            elif c.get("kind") == "prefill":
                print(f"  {c['case']}: chunked/one-shot {x(c['chunked_over_one_shot'])}")
EOF
echo "total $(($(date +%s) - START)) s"
}

# Everything goes to the terminal and to the log; the pipe ends only when both are done.
main 2>&1 | tee -a "$LOG"
rc=$?
if [ -s "$XML_MERGED" ]; then
    { echo; echo "=== test_gpu.xml (JUnit; tests/test_gpu_{paged,kernels,engine,speech,token2wav}.py merged) ==="
      cat "$XML_MERGED"; echo; echo "=== end of test_gpu.xml ==="; } >> "$LOG"
fi
for json in "$LOG_JSON_DIR"/*.json; do
    [ -f "$json" ] || continue
    { echo; echo "=== $(basename "$json")"; cat "$json"; echo "=== end of $(basename "$json")"; } >> "$LOG"
done
rm -rf "$XML_MERGED" "$LOG_JSON_DIR"
exit $rc
