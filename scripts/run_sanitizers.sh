#!/usr/bin/env bash
# Run gpuconv's GPU kernel tests under compute-sanitizer's four tools (memcheck, racecheck,
# initcheck, synccheck) and fail if any tool reports anything.
#
#   scripts/run_sanitizers.sh [LOG_DIR] [-- PYTEST_ARGS...]
#
# Default pytest selection: the GPU tests with fixed edge shapes (hypothesis-driven tests are
# deselected: under the sanitizers every launch is 10-100x slower). Logs go to LOG_DIR
# (default: sanitizer-logs/), one file per tool, and a summary line per tool is printed.
set -uo pipefail
cd "$(dirname "$0")/.."

log_dir=${1:-sanitizer-logs}
shift || true
[ "${1:-}" = "--" ] && shift
if [ $# -gt 0 ]; then pytest_args=("$@"); else pytest_args=(tests/gpu -m gpu -k "not hypothesis"); fi

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -z "$sanitizer" ]; then
    echo "compute-sanitizer not found (it ships with the CUDA toolkit)" >&2
    exit 2
fi
mkdir -p "$log_dir"

failed=0
for tool in memcheck racecheck initcheck synccheck; do
    log="$log_dir/$tool.log"
    # --error-exitcode makes any report fail the run even if the tests themselves pass.
    "$sanitizer" --tool "$tool" --error-exitcode 86 --target-processes all --print-limit 200 \
        python -m pytest -q -p no:cacheprovider "${pytest_args[@]}" >"$log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)
    tests=$(grep -E "passed|failed|error" "$log" | tail -n 1)
    echo "$tool: exit $rc | ${summary:-no summary line} | pytest: ${tests:-no result line}"
    [ $rc -eq 0 ] || failed=1
done
exit $failed
