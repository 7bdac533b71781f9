#!/usr/bin/env bash
# One command that checks gpuconv's GPU side on a card (H100/H200), in about 8 minutes (issue 18).
#
#   scripts/gpu_check.sh [--dry-run] [OUT_DIR]
#
# Steps, in order, each under its own time limit (on a GPU the limits add up to 505 s):
#   env              nvidia-smi, `gpuconv info` (compiles every kernel), CuPy / PyTorch / cuDNN versions
#   gpu_tests        pytest -m gpu tests/gpu
#   other_gpu_tests  the gpu-marked tests outside tests/gpu (not the slow one: the train step covers it)
#   kernel_startup   a fresh process's first convolutions with an empty, then a warm kernel cache
#   train            gpuconv train --device cuda: test accuracy and s/epoch (first epoch apart)
#   tune             gpuconv tune: the autotuner's warm-up for the benchmark's layers
#   bench            python -m bench run: small_cnn + resnet50, batch 32, float32 (TF32 off and on), float16
#   memcheck         compute-sanitizer memcheck over a fixed selection of the GPU tests
#   racecheck        compute-sanitizer racecheck over the same selection
#
# --dry-run runs each step's CPU-side part, without a GPU (CI does, in tests/test_gpu_check_script.py).
# OUT_DIR (default: tmp/gpu_check in the repository; git ignores /tmp/) gets <step>.log for every step, junit
# XML, a copy of the benchmark results under bench/, the autotuner's cache and summary.txt.
# Runs from the tree (PYTHONPATH=the repository); installs nothing.
#
# Environment: PYTHON (default: python, else python3); GPU_CHECK_ONLY="step,step..." runs only those steps
# (the others show SKIP); GPU_CHECK_BUDGET_<step>=SECONDS changes one step's limit.
# Exit status: 0 if no step FAILed or timed out, 1 if one did, 2 for a wrong command line.

# The step_* functions (and through them the helpers) are called as "step_$name"; commas inside arguments
# (--suite a,b) are meant:
# shellcheck disable=SC2329,SC2054
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

mode=gpu
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) mode=dry; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -gt 1 ]; then usage >&2; exit 2; fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
out_dir=${1:-$repo/tmp/gpu_check}  # a relative OUT_DIR is relative to where the script was started
mkdir -p "$out_dir" && out_dir=$(cd "$out_dir" && pwd) || exit 2
cd "$repo" || exit 2

PY=${PYTHON:-$(command -v python || command -v python3 || echo python)}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # logs stay in order, and hold everything up to the moment a step is stopped
export MPLBACKEND=Agg      # the benchmark's plots, on a machine without a display
# Kernel caches of this run only, so that what the steps compile (and the startup step's cold cache) does not
# depend on earlier runs; emptied now, CuPy's compiled modules removed at the end (the autotuner's JSON stays).
cache=$out_dir/cache
rm -rf "$cache"
mkdir -p "$cache"
export CUPY_CACHE_DIR=$cache/cupy GPUCONV_CACHE_DIR=$cache/gpuconv HYPOTHESIS_STORAGE_DIRECTORY=$cache/hypothesis
# An in-memory CuPy cache would hide recompilation from the startup step; CuPy's TF32 switch would put
# gpuconv's cuBLAS GEMMs in TF32 and fail the benchmark's float32 check (TF32 is the cudnn-tf32 impl's job);
# GPUCONV_AUTOTUNE=0 from the caller's shell would make bench's gpuconv:auto and training skip the tuned choices.
unset CUPY_CACHE_IN_MEMORY CUPY_TF32 GPUCONV_AUTOTUNE

STEPS=(env gpu_tests other_gpu_tests kernel_startup train tune bench memcheck racecheck)
# Seconds per step. Nothing has run on a card yet, so the GPU figures are estimates (505 s in all, under the
# 8.5 minutes); GPU_CHECK_BUDGET_<step> overrides one. Dry-run limits are loose: CI's 2 cores may be busy.
declare -A GPU_BUDGET=([env]=75 [gpu_tests]=90 [other_gpu_tests]=30 [kernel_startup]=25 [train]=35 [tune]=35
                       [bench]=150 [memcheck]=30 [racecheck]=35)
declare -A DRY_BUDGET=([env]=90 [gpu_tests]=90 [other_gpu_tests]=60 [kernel_startup]=40 [train]=40 [tune]=20
                       [bench]=60 [memcheck]=20 [racecheck]=20)

only=" ${GPU_CHECK_ONLY:-} "
only=${only//,/ }
for name in $only; do
    if [[ " ${STEPS[*]} " != *" $name "* ]]; then
        echo "gpu_check.sh: GPU_CHECK_ONLY names an unknown step '$name' (steps: ${STEPS[*]})" >&2
        exit 2
    fi
done
selected() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ $only == *" $1 "* ]]; }

# The fixed selections. Emulated kernel tests for the dry run (72 tests, ~15 s on 2 cores with an empty
# emulator cache): every implicit-GEMM variant and the im2col family on one 3x3 case, and both pools.
EMULATED_K="(3x3-pad1 and float32) or (test_max_pool and float32 and distinct)"
EMULATED_K+=" or (test_avg_pool and float32 and include-pad)"
# What the sanitizers run (23 tests; each launch is 10-100x slower under them): edge shapes through both
# algorithms (tile remainders, split-K wgrad and its reduction, depthwise, im2col/col2im with float16 cuBLAS),
# a pool, and every registered implicit-GEMM variant (the 2-stage ones use shared memory: racecheck) once.
SANITIZER_K="(test_edge_cases_match_reference and float32 and implicit_gemm and (channels-not-multiple-of-tile"
SANITIZER_K+=" or split-wgrad-reduction or depthwise-x2-stride2))"
SANITIZER_K+=" or (test_edge_cases_match_reference and stride-4sided-pad-dilation-odd and float16 and im2col)"
SANITIZER_K+=" or (test_pools_match_reference and 3x3-stride2-pad1 and float32)"
SANITIZER_K+=" or (test_every_registered_variant_matches_reference and several-tiles and float32)"

# ------------------------------------------------------------------------------------------------ helpers ---

now() { date +%s.%N; }
add_note() { step_note=${step_note:+$step_note; }$*; }
fail() { step_failed=1; echo "gpu_check: FAIL: $*"; add_note "$*"; }

# Runs "$@" in what is left of the step's limit. SIGINT first: pytest and the benchmark stop cleanly on it and
# still write their junit XML or the results measured so far; SIGKILL 10 s later if that did not end it.
within() {
    local left=$((step_deadline - SECONDS)) rc
    if [ "$left" -le 0 ]; then
        step_timed_out=1
        echo "gpu_check: no time left for: $*"
        return 124
    fi
    echo "\$ $*"
    timeout -s INT -k 10 "$left" "$@"
    rc=$?
    if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$SECONDS" -ge "$step_deadline" ]; }; then
        step_timed_out=1
        echo "gpu_check: TIMEOUT: the step's ${step_budget} s ran out in: $*"
    fi
    return "$rc"
}

run_pytest() {  # XML_FILE PYTEST_ARGS...; a non-zero exit is a failure
    local xml=$1 rc
    shift
    within "$PY" -m pytest -q -p no:cacheprovider -rfE --durations=10 --junitxml="$xml" "$@"
    rc=$?
    [ "$rc" -eq 0 ] || [ "$step_timed_out" = 1 ] || fail "pytest exited with $rc"
}

# Adds "P passed, F failed, E errors, S skipped" over the junit files to the note; FAIL on a failure or an
# error, and on a GPU also when nothing passed (a card that is not usable makes every GPU test skip).
check_junit() {
    local counts passed failed errors skipped
    counts=$("$PY" - "$@" <<'EOF'
import sys
import xml.etree.ElementTree as ET

total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        sys.exit(f"{path}: {exc}")
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in total:
            total[key] += int(suite.get(key, 0))
print(total["tests"] - total["failures"] - total["errors"] - total["skipped"], total["failures"],
      total["errors"], total["skipped"])
EOF
    ) || { fail "no readable junit XML"; return; }
    read -r passed failed errors skipped <<<"$counts"
    add_note "$passed passed, $failed failed, $errors errors, $skipped skipped"
    if [ "$failed" != 0 ] || [ "$errors" != 0 ]; then fail "failing tests (see the log)"; fi
    if [ "$mode" = gpu ] && [ "$passed" = 0 ]; then fail "no test passed"; fi
}

# -------------------------------------------------------------------------------------------------- steps ---

VERSIONS_PY=$(cat <<'EOF'
import importlib
import importlib.metadata
import platform

print(f"python {platform.python_version()}")
for name in ("numpy", "cupy", "torch", "torchvision", "pytest", "hypothesis", "sklearn", "tqdm", "matplotlib",
             "pynvml", "ml_dtypes", "mpi4py"):
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", None)
        if version is None and name == "pynvml":  # nvidia-ml-py's module has no __version__
            version = importlib.metadata.version("nvidia-ml-py")
        print(f"{name} {version}")
    except Exception as exc:  # report, do not stop: the checks below say what a GPU run needs
        print(f"{name} not importable: {type(exc).__name__}: {exc}")
try:
    import cupy
    print(f"cupy cuda runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")
except Exception as exc:
    print(f"cupy cuda: {type(exc).__name__}: {exc}")
try:
    import torch
    print(f"torch cuda {torch.version.cuda}, available {torch.cuda.is_available()}")
    print(f"cudnn {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
except Exception as exc:
    print(f"torch: {type(exc).__name__}: {exc}")
EOF
)

step_env() {
    git rev-parse HEAD
    git --no-optional-locks status --short | head -n 30  # what was checked (read only: no index refresh)
    if [ "$mode" = dry ]; then
        echo "nvidia-smi: skipped (dry run)"
    else
        within nvidia-smi || fail "nvidia-smi failed"
        within nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit,pstate \
            --format=csv
        within compute-sanitizer --version | head -n 3
        within ncu --version | tail -n 1
    fi
    # The module form: with PYTHONPATH=. the console script `gpuconv` need not exist.
    within "$PY" -m gpuconv.cli info || fail "gpuconv info exited with $?"
    if grep -qE '^  [^ ]+\.cu +FAILED' "$step_log"; then fail "kernels that do not compile (gpuconv info)"; fi
    grep -qE '^  [^ ]+\.cu +ok \(' "$step_log" || fail "gpuconv info compiled no kernel"
    if grep -q '^CUDA usable: *yes' "$step_log"; then
        add_note "$(sed -nE 's/^GPU 0: +([^,]+,[^,]+).*/\1/p' "$step_log")"
    elif [ "$mode" = gpu ]; then
        fail "gpuconv info: CUDA not usable"
    fi
    printf '%s\n' "$VERSIONS_PY" >"$cache/versions.py"
    within "$PY" "$cache/versions.py"
    add_note "$(grep -E '^(cupy|torch|cudnn) [^ ]+$' "$step_log" | tr '\n' ' ' | sed 's/ $//')"
    if [ "$mode" = gpu ]; then
        grep -q '^torch cuda .*, available True' "$step_log" || fail "PyTorch cannot use CUDA (bench needs it)"
        grep -qE '^cudnn [0-9]+' "$step_log" || fail "no cuDNN in PyTorch"
    fi
    return 0
}

step_gpu_tests() {
    # On a CPU every test here skips ('no CUDA device'): the dry run still shows that the selection collects,
    # then runs a fixed slice of the emulated kernel tests (kernels/*.cu on the CPU), the GPU's stand-in.
    run_pytest "$out_dir/gpu_tests.xml" -m gpu tests/gpu
    local xml=("$out_dir/gpu_tests.xml")
    if [ "$mode" = dry ]; then
        run_pytest "$out_dir/gpu_tests-emulated.xml" tests/test_kernels_emulated.py -k "$EMULATED_K"
        xml+=("$out_dir/gpu_tests-emulated.xml")
    fi
    check_junit "${xml[@]}"
}

step_other_gpu_tests() {
    # Every other test that uses a card is gpu-marked (bench, determinism, devices, errors, properties): select
    # by marker, so new ones join. Left out: 'slow' (the 25-epoch training run, which the train step repeats
    # with the same 97% bar); test_cuda_info.py, unmarked, repeats the env step's `gpuconv info` (~20 s of
    # compiles); test_train.py::test_cuda_device, unmarked, is one epoch of the train step.
    run_pytest "$out_dir/other_gpu_tests.xml" -m "gpu and not slow" tests --ignore=tests/gpu
    check_junit "$out_dir/other_gpu_tests.xml"
}

FIRST_CONV_PY=$(cat <<'EOF'
"""A fresh process's first convolutions: import, CUDA context, each first call (compile or cache load, cuBLAS
handle) and the same call again; and how many files it added to CuPy's kernel cache (new files = compiled)."""
import os
import sys
import time

t0 = time.perf_counter()
label, device, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = os.environ["CUPY_CACHE_DIR"]


def cache_files():
    return sum(len(files) for _, _, files in os.walk(cache))


before = cache_files()
import numpy as np  # noqa: E402
import gpuconv  # noqa: E402

t_import = time.perf_counter() - t0
t_context = 0.0
if device == "cuda":
    import cupy as xp
    t = time.perf_counter()
    xp.empty(1)  # creates the context
    xp.cuda.Device().synchronize()
    t_context = time.perf_counter() - t
    sync, wgrad_algo = xp.cuda.Device().synchronize, "implicit_gemm"
else:
    xp, sync, wgrad_algo = np, (lambda: None), "auto"  # the CPU has no implicit GEMM
rng = np.random.default_rng(0)


def data(*shape):
    return xp.asarray(rng.standard_normal(shape, dtype=np.float32))


x, dy, w, w_dw = data(batch, 64, 56, 56), data(batch, 64, 56, 56), data(64, 64, 3, 3), data(64, 1, 3, 3)
calls = {  # kernel_startup.py's first calls; on a GPU the fixed rule runs im2col + cuBLAS for the dense fprop
    "dense 3x3 fprop": lambda: gpuconv.conv2d(x, w, padding=1),
    "depthwise 3x3 fprop": lambda: gpuconv.conv2d(x, w_dw, padding=1, groups=64),
    f"dense 3x3 wgrad, {wgrad_algo}": lambda: gpuconv.conv2d_grad_weight(x, dy, w.shape, padding=1, algo=wgrad_algo),
}
first = []
for name, call in calls.items():
    times = []
    for _ in range(2):
        t = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t)
    first.append(times[0])
    print(f"{label}: {name}, {device}, batch {batch}: first call {times[0]:.3f} s, second {times[1]:.4f} s")
new = cache_files() - before
print(f"{label}: import {t_import:.2f} s, CUDA context {t_context:.2f} s; CuPy cache files {before} -> "
      f"{before + new}")
print(f"RESULT {label} startup_s={t_import + t_context + sum(first):.2f} first_call_s={first[0]:.3f} "
      f"new_cache_files={new}")
EOF
)

step_kernel_startup() {
    # Two fresh processes sharing their own caches, empty for the first. The autotuner is off, so a first call
    # compiles what the fixed rule picks (tuning is the tune step's). scripts/kernel_startup.py is not run: it
    # times NVRTC alone, CPU side (~40 s on 2 cores), not a process's first call on a card. Dry run: the same
    # processes on the CPU (nothing to compile), to check the measurement itself.
    local dir=$cache/startup device=cuda batch=32 run line startup first new re
    if [ "$mode" = dry ]; then device=cpu batch=2; fi
    printf '%s\n' "$FIRST_CONV_PY" >"$cache/first_conv.py"
    re='^RESULT [a-z]+ startup_s=([0-9.]+) first_call_s=([0-9.]+) new_cache_files=(-?[0-9]+)$'
    for run in cold warm; do
        within env CUPY_CACHE_DIR="$dir/cupy" GPUCONV_CACHE_DIR="$dir/gpuconv" GPUCONV_AUTOTUNE=0 \
            "$PY" "$cache/first_conv.py" "$run" "$device" "$batch" || { fail "the $run process failed"; return 0; }
        line=$(grep "^RESULT $run " "$step_log" | tail -n 1)
        if ! [[ $line =~ $re ]]; then fail "no RESULT line from the $run process"; return 0; fi
        startup=${BASH_REMATCH[1]} first=${BASH_REMATCH[2]} new=${BASH_REMATCH[3]}
        add_note "$run: ${startup} s to 3 first calls (first ${first} s), $new kernels compiled"
        if [ "$run" = cold ] && [ "$mode" = gpu ] && [ "$new" -le 0 ]; then
            fail "the cold process wrote no kernel to CUPY_CACHE_DIR: is the cache on disk?"
        fi
        if [ "$run" = warm ] && [ "$new" -ne 0 ]; then fail "the warm process recompiled $new kernel(s)"; fi
    done
    return 0
}

step_train() {
    # Default epochs (25), batch size, learning rate and seed: the run test_full_default_run_reaches_97_percent
    # makes, with its bar. Dry run: 2 epochs on the CPU.
    local args=(--device cuda) re line accuracy device
    if [ "$mode" = dry ]; then args=(--device cpu --epochs 2); fi
    within "$PY" -m gpuconv.cli train "${args[@]}" --no-progress || fail "gpuconv train exited with $?"
    re='^test accuracy ([0-9.]+)% on [0-9]+ images \| ([0-9.]+) s/epoch on ([a-z0-9:]+) \(first epoch ([0-9.]+) s\)'
    line=$(grep '^test accuracy ' "$step_log" | tail -n 1)
    if ! [[ $line =~ $re ]]; then fail "no 'test accuracy' line"; return 0; fi
    accuracy=${BASH_REMATCH[1]} device=${BASH_REMATCH[3]}
    add_note "accuracy $accuracy%, ${BASH_REMATCH[2]} s/epoch on $device (first epoch ${BASH_REMATCH[4]} s)"
    if [ "$mode" = gpu ]; then
        [[ $device == cuda* ]] || fail "trained on $device, not cuda"
        awk -v a="$accuracy" 'BEGIN { exit !(a >= 97) }' || fail "accuracy under 97%"
    fi
    return 0
}

step_tune() {
    # The benchmark's layers at its batch, in both of its dtypes, so that bench's gpuconv:auto runs tuned
    # choices (its first_call_ms would otherwise include the tuning). Dry run: the same commands must get as far
    # as the CUDA check (flags, suite names and passes are checked before it) and say why they stop.
    local dtype rc tuned cached
    for dtype in float32 float16; do
        within "$PY" -m gpuconv.cli tune --suite small_cnn,resnet50 --batch 32 --dtype "$dtype" --passes \
            fprop,dgrad,wgrad
        rc=$?
        if [ "$mode" = gpu ]; then
            [ "$rc" -eq 0 ] || fail "gpuconv tune --dtype $dtype exited with $rc"
        elif [ "$rc" -ne 2 ] || ! grep -q 'CUDA requested but unavailable' "$step_log"; then
            fail "gpuconv tune --dtype $dtype: expected exit 2 and 'CUDA requested but unavailable', got $rc"
        fi
    done
    if [ "$mode" = gpu ]; then
        tuned=$(grep -cE '^  .* tuned  median ms:' "$step_log")
        cached=$(grep -cE '^  .* cached  median ms:' "$step_log")
        add_note "$tuned shapes tuned, $cached cached; cache $GPUCONV_CACHE_DIR"
    else
        add_note "dry run: arguments accepted, stops at the CUDA check"
    fi
    return 0
}

step_bench() {
    # TF32 off and on: the bench's cudnn impl runs cuDNN with TF32 off, cudnn-tf32 with it on (float32 only),
    # in the same run, the baseline of gpuconv's TF32 tensor-core variants (named: auto never picks TF32).
    # A second run times ResNet-50 in bfloat16 (auto: the tensor cores) against cuDNN in bfloat16.
    # Timing is cut from the defaults (20 runs, 0.2 s, 3 warm-ups) to fit about 1300 measurements in the budget.
    # Dry run: the CPU impls (numpy, torch-cpu) at batch 1 on small_cnn's two layers and ResNet-50's stem
    # (--layers conv1,conv2 picks those), one timed run each, written to OUT_DIR only (never bench/results/).
    local args file summary tf32 runs=1
    if [ "$mode" = gpu ]; then
        tf32=$("$PY" -c 'from gpuconv.cuda import registry as r; print(",".join("gpuconv:" + v.name for v in r.VARIANTS if v.tf32))')
        args=(--suite small_cnn,resnet50 --device cuda --batch 32 --dtypes float32,float16 --passes fprop,dgrad,wgrad
              --impls "gpuconv:auto,gpuconv:im2col,gpuconv:implicit_gemm,cudnn,cudnn-tf32,cublas-gemm,$tf32"
              --min-runs 10 --min-time 0.02 --max-time 0.5 --warmup 1 --gpu-warmup 1 --no-progress)
        bf16_args=(--suite resnet50 --device cuda --batch 32 --dtypes bfloat16 --passes fprop,dgrad,wgrad
                   --impls gpuconv:auto,cudnn --min-runs 10 --min-time 0.02 --max-time 0.5 --warmup 1 --gpu-warmup 1
                   --no-progress)
        runs=2
    else
        args=(--suite small_cnn,resnet50 --layers conv1,conv2 --device cpu --batch 1 --dtypes float32
              --min-runs 1 --min-time 0 --max-time 0.05 --warmup 0 --no-progress --out "$out_dir/bench/cpu_dry_run")
    fi
    mkdir -p "$out_dir/bench"
    within "$PY" -m bench run "${args[@]}" || fail "python -m bench run exited with $?"
    if [ "$runs" = 2 ]; then
        within "$PY" -m bench run "${bf16_args[@]}" || fail "python -m bench run (bfloat16) exited with $?"
    fi
    if [ "$mode" = gpu ]; then  # results stay where the bench writes them (bench/results/); a copy in OUT_DIR
        sed -n 's/^wrote //p' "$step_log" | while read -r file; do cp -v "$file" "$out_dir/bench/"; done
    fi
    if [ "$mode" = gpu ] && grep -q '^bench: skipping ' "$step_log"; then
        fail "implementations the bench could not run (see the log)"
    fi
    summary=$(grep -E '^[0-9]+ measurements on ' "$step_log" | tail -n "$runs")
    if [ "$(printf '%s\n' "$summary" | grep -c .)" != "$runs" ]; then fail "no result summary from the bench"; return 0; fi
    add_note "$(printf '%s' "$summary" | tr '\n' ';')"
    if printf '%s\n' "$summary" | grep -qv ': 0 error(s), 0 wrong result(s)$'; then
        fail "errors or wrong results (see the .md)"
    fi
    ls "$out_dir/bench"/*.json >/dev/null 2>&1 || fail "no result .json in $out_dir/bench"
    return 0
}

sanitize() {  # TOOL: the fixed selection under compute-sanitizer, with scripts/run_sanitizers.sh's options
    # (not that script itself: it always runs all four tools over every non-hypothesis GPU test, too long here).
    local tool=$1 sanitizer rc junit=$out_dir/$1.xml select=(-m gpu tests/gpu -k "$SANITIZER_K") plugin=()
    if [ "$tool" = memcheck ]; then
        # CuPy's memory pool carves arrays out of larger blocks, so memcheck would miss a read past an array's
        # end that stays inside its block. With the pool off, each array is its own cudaMalloc.
        mkdir -p "$cache/plugins"
        printf '%s\n' 'try:' '    import cupy' 'except ImportError:  # a machine without CuPy: no pool to switch off' \
            '    pass' 'else:' '    cupy.cuda.set_allocator(None)' >"$cache/plugins/gpu_check_unpooled.py"
        plugin=(-p gpu_check_unpooled)
    fi
    if [ "$mode" = dry ]; then  # not run; but a selection that no longer collects must fail CI
        step_skip=1
        within env PYTHONPATH="$cache/plugins:$PYTHONPATH" "$PY" -m pytest --collect-only -q -p no:cacheprovider \
            "${plugin[@]}" "${select[@]}" || fail "the sanitizer selection does not collect"
        if grep -qE '^[1-9][0-9]*/[0-9]+ tests collected' "$step_log"; then
            add_note "dry run: not run; selects $(sed -nE 's|^([0-9]+)/([0-9]+) tests collected.*|\1 of \2|p' \
                "$step_log") GPU tests"
        else
            fail "the sanitizer selection is empty"
        fi
        return 0
    fi
    sanitizer=$(command -v compute-sanitizer || compgen -G '/usr/local/cuda*/bin/compute-sanitizer' | head -n 1)
    if [ -z "$sanitizer" ]; then fail "compute-sanitizer not found"; return 0; fi
    # --error-exitcode: any report fails the run even when the tests pass.
    within env PYTHONPATH="$cache/plugins:$PYTHONPATH" \
        "$sanitizer" --tool "$tool" --error-exitcode 86 --target-processes all --print-limit 200 \
        "$PY" -m pytest -q -p no:cacheprovider -rfE --junitxml="$junit" "${plugin[@]}" "${select[@]}"
    rc=$?
    add_note "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$step_log" | tail -n 1 | sed 's/^=* *//')"
    [ "$rc" -ne 86 ] || fail "compute-sanitizer $tool reported errors"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 86 ] || [ "$step_timed_out" = 1 ] || fail "exit status $rc"
    check_junit "$junit"
}
step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }

# ------------------------------------------------------------------------------------------------ running ---

r_name=() r_status=() r_secs=() r_log=() r_note=()
run_step() {
    local name=$1 budget_var="GPU_CHECK_BUDGET_$1" start rc status secs
    r_name+=("$name")
    if ! selected "$name"; then
        r_status+=(SKIP) r_secs+=(0.0) r_log+=(-) r_note+=("not in GPU_CHECK_ONLY")
        return
    fi
    if [ "$mode" = gpu ]; then step_budget=${GPU_BUDGET[$name]}; else step_budget=${DRY_BUDGET[$name]}; fi
    step_budget=${!budget_var:-$step_budget}
    step_deadline=$((SECONDS + step_budget)) step_timed_out=0 step_failed=0 step_skip=0 step_note=""
    step_log=$out_dir/$name.log
    echo "==> $name (limit ${step_budget} s): $step_log"
    start=$(now)
    {
        echo "# gpu_check.sh ($mode): step $name, limit ${step_budget} s, started $(date -u +%FT%TZ)"
        "step_$name"
    } >"$step_log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$step_timed_out" = 1 ]; then status=TIMEOUT
    elif [ "$rc" -ne 0 ] || [ "$step_failed" = 1 ]; then status=FAIL
    elif [ "$step_skip" = 1 ]; then status=SKIP
    else status=PASS
    fi
    echo "    $status, ${secs} s${step_note:+: $step_note}"
    r_status+=("$status") r_secs+=("$secs") r_log+=("$name.log") r_note+=("$step_note")
}

started=$(now)
echo "gpu_check.sh ($mode run) -> $out_dir"
for name in "${STEPS[@]}"; do run_step "$name"; done
rm -rf "$cache/cupy" "$cache/startup" "$cache/hypothesis"  # hundreds of compiled modules: not results

failed=0 bad=()
for i in "${!r_name[@]}"; do
    case ${r_status[$i]} in FAIL | TIMEOUT) failed=1 bad+=("${r_name[$i]}") ;; esac
done
{
    printf '\ngpu_check.sh summary (%s run, %s, %s); logs in %s\n' "$mode" "$(hostname)" "$(date -u +%FT%TZ)" \
        "$out_dir"
    printf '%-16s %-8s %8s  %-20s %s\n' step status seconds log result
    for i in "${!r_name[@]}"; do
        printf '%-16s %-8s %8s  %-20s %s\n' "${r_name[$i]}" "${r_status[$i]}" "${r_secs[$i]}" "${r_log[$i]}" \
            "${r_note[$i]}"
    done
    printf '%-16s %-8s %8s  %-20s %s\n' total "$([ "$failed" = 0 ] && echo PASS || echo FAIL)" \
        "$(awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')" summary.txt \
        "${bad[*]:-no step} failed or timed out"
} | tee "$out_dir/summary.txt"
exit "$failed"
