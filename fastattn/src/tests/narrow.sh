#!/bin/sh
# Build and run fa_narrow_test.c (the narrow-lane linear tile of ../fa_narrow.h
# against the 64-lane one, bit for bit) and fa_gemm_test.c (the packed-panel
# GEMM of ../fa_gemm.h against the 64-lane tile, bit for bit) for every
# instruction set runnable here: the same builds as build.sh.
#   sh narrow.sh           tests
#   sh narrow.sh --bench   + one-thread timings (best runnable ISA)
# Exit status non-zero if any build or test fails.
set -u
cd "$(dirname "$0")"
SRC="${FA_SRC:-..}"
OUT=build
mkdir -p "$OUT"
CC="${CC:-gcc}"
BASE="-O3 -Wall -Wextra -std=c99 -I$SRC"
AVX512="-mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma -mavx2"
status=0
summary=""
best=""

one() {  # name cc flags...
    name=$1; cc=$2; shift 2
    tests="narrow gemm"
    # the generic layer at 64 bytes takes gcc many minutes (and > 1 GB) on
    # fa_gemm.h's unrolled micro-tile variants: emul512 runs the narrow test only
    case $name in emul512*) tests=narrow ;; esac
    for t in $tests; do
        if $cc $BASE "$@" fa_${t}_test.c -o "$OUT/fa_${t}_$name" -lm 2> "$OUT/${t}_$name.log" \
            && [ ! -s "$OUT/${t}_$name.log" ]; then
            echo "=== $name ($t)"
            if "$OUT/fa_${t}_$name"; then summary="$summary $name/$t:pass"; best=$name
            else summary="$summary $name/$t:FAIL"; status=1; fi
        else
            echo "[$name/$t] BUILD FAILED or warned:"; cat "$OUT/${t}_$name.log"
            summary="$summary $name/$t:BUILD-FAIL"; status=1
        fi
    done
}

HAVE_AVX2=0; grep -q ' avx2 ' /proc/cpuinfo 2>/dev/null && grep -q ' fma ' /proc/cpuinfo && HAVE_AVX2=1
HAVE_AVX512=0; grep -q ' avx512f ' /proc/cpuinfo 2>/dev/null && grep -q ' avx512dq ' /proc/cpuinfo && grep -q ' avx512bw ' /proc/cpuinfo && grep -q ' avx512vl ' /proc/cpuinfo && HAVE_AVX512=1

one sse2 "$CC"
one sse2_gnu "$CC" -std=gnu11
if [ $HAVE_AVX2 = 1 ]; then
    one avx2 "$CC" -mavx2 -mfma
    one avx2_gnu "$CC" -mavx2 -mfma -std=gnu11
    one emul512 "$CC" -mavx2 -mfma -Wno-psabi -DFA_FORCE_GENERIC=64 -DFA_FORCE_NREGS=32
    one emul512_gnu "$CC" -mavx2 -mfma -Wno-psabi -std=gnu11 -DFA_FORCE_GENERIC=64 -DFA_FORCE_NREGS=32
fi
one generic16 "$CC" -DFA_FORCE_GENERIC=16
one scalar "$CC" -DFA_FORCE_SCALAR
if [ $HAVE_AVX512 = 1 ]; then
    one avx512 "$CC" $AVX512
    one avx512_gnu "$CC" $AVX512 -std=gnu11
fi
if command -v clang > /dev/null; then
    one clang_sse2 clang
    [ $HAVE_AVX2 = 1 ] && one clang_avx2 clang -mavx2 -mfma
    [ $HAVE_AVX512 = 1 ] && one clang_avx512 clang $AVX512
fi
if [ "${1:-}" = "--bench" ] && [ -n "$best" ]; then
    b=avx512; [ $HAVE_AVX512 = 1 ] || b=avx2; [ $HAVE_AVX2 = 1 ] || b=sse2
    echo "=== benchmark ($b build, one thread)"
    "$OUT/fa_narrow_$b" --bench
    "$OUT/fa_gemm_$b" --bench
fi
echo "summary:$summary"
exit $status
