#!/usr/bin/env bash
# Build fastattn's extensions with AddressSanitizer + UndefinedBehaviorSanitizer
# in a separate copy of the tree and run tests under them.
#
#   tools/sanitize.sh            full: the whole test suite
#   tools/sanitize.sh --quick    kernels (fp32 and bf16 attention, decode
#                                attention, varlen, every GEMM: tiled, narrow,
#                                packed, gemv, bf16, fused activations),
#                                few-query tiles, decode plans, row-wise layers, weights,
#                                the quick fuzz profile, hostile model folders
#                                and the model server load (a few minutes)
#   tools/sanitize.sh [--quick] -- <pytest args>   extra pytest arguments
#   --no-build    reuse the sanitizer build already in the copy (refresh only
#                 the Python files and tests; e.g. while another run uses it)
#
# The copy lives in build/sanitize/ (gitignored; override with
# FASTATTN_SANITIZE_DIR), so the normal in-place build is never touched; it is
# refreshed from the working tree (tracked and untracked, unignored files) on
# every run and rebuilt incrementally.  The sanitizer runtimes are found with
# `gcc -print-file-name` and preloaded into the (uninstrumented) interpreter.
# Exit status: non-zero if pytest fails or if the log holds any sanitizer
# report (a second net in case a report did not stop the process).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
CC=${CC:-gcc}
MODE=full
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick; shift ;;
        --full) MODE=full; shift ;;
        --no-build) BUILD=0; shift ;;
        --) shift; break ;;
        *) echo "usage: $0 [--quick|--full] [--no-build] [-- pytest args]" >&2; exit 2 ;;
    esac
done
DEST=${FASTATTN_SANITIZE_DIR:-$ROOT/build/sanitize}
LOG=$DEST/sanitize-$MODE.log
START=$(date +%s)

ASAN_LIB=$($CC -print-file-name=libasan.so)
UBSAN_LIB=$($CC -print-file-name=libubsan.so)
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do
    if [ ! -e "$lib" ]; then
        echo "sanitize: $CC has no $(basename "$lib") (install the gcc sanitizer runtimes)" >&2
        exit 1
    fi
done
ASAN_LIB=$(readlink -f "$ASAN_LIB")
UBSAN_LIB=$(readlink -f "$UBSAN_LIB")

echo "== sanitize ($MODE): copying the tree to $DEST"
mkdir -p "$DEST"
# tar keeps modification times, so unchanged sources are not rebuilt
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - -cf - | tar -C "$DEST" -xf -

if [ "$BUILD" = 1 ]; then
    echo "== sanitize: building with FASTATTN_SANITIZE=1 (log $DEST/build.log)"
    ( cd "$DEST" && FASTATTN_SANITIZE=1 CC="$CC" "$PY" setup.py build_ext --inplace \
          > "$DEST/build.log" 2>&1 ) || { tail -30 "$DEST/build.log"; exit 1; }
fi

if [ "$MODE" = quick ]; then
    # test_varlen's own hypothesis test is the slowest under ASan (~1.5 min);
    # test_fuzz_kernels.py's quick profile fuzzes varlen_attention here
    TESTS=(test_kernels.py test_varlen.py test_gemm.py test_layers_kernels.py
           test_weights.py test_hardening.py test_fuzz_kernels.py
           test_hardening_models.py test_server_load.py
           test_bf16_gemm.py test_bf16_attention.py test_bf16_rows.py test_gemv.py
           test_decode_attention.py test_gemm_packed.py test_gemm_narrow.py
           test_gemm_act.py test_fewq_lanes.py test_decode_plan.py
           --deselect test_varlen.py::test_fuzz_against_reference_and_alone)
else
    TESTS=()
fi

echo "== sanitize: running pytest ${TESTS[*]:-(all)} $* (log $LOG)"
rc=0
(
    cd "$DEST/tests"
    # detect_leaks=0: the interpreter's own allocations at exit are not ours.
    # PYTHONMALLOC=malloc: Python objects go through ASan's allocator too.
    export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
    # allocator_may_return_null=1: a request too large to allocate must give
    # NULL (then MemoryError), as with the system malloc, not an ASan abort.
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
    export PYTHONMALLOC=malloc
    export PYTHONPATH="$DEST"
    export HF_HUB_OFFLINE=1
    export FASTATTN_SANITIZED=1
    # --capture=sys: pytest's default fd capture would swallow a report
    # printed to fd 2 just before the process aborts; this way it reaches $LOG
    "$PY" -m pytest -q -p no:cacheprovider -x --capture=sys --durations=10 "${TESTS[@]}" "$@"
) > "$LOG" 2>&1 || rc=$?
tail -5 "$LOG"
PAT='ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer'
if grep -nE "$PAT" "$LOG"; then
    echo "sanitize: sanitizer report(s) in $LOG" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "sanitize: pytest failed (exit $rc); see $LOG" >&2
    exit "$rc"
fi
# the runtime really was loaded: a build without it would not import at all,
# but check the extension is instrumented so a silent plain build cannot pass
# (no pipe: under pipefail, `nm | grep -q` fails whenever grep exits at the
# first match while nm is still writing, and nm dies of SIGPIPE)
syms=$(nm -D "$DEST"/fastattn/_kernels_baseline*.so 2>&1 || true)
if [[ "$syms" != *__asan_init* ]]; then
    echo "sanitize: $DEST/fastattn/_kernels_baseline*.so is not instrumented" >&2
    exit 1
fi
echo "== sanitize ($MODE): no sanitizer reports, pytest passed, $(( $(date +%s) - START )) s"
