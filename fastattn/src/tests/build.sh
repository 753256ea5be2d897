#!/bin/sh
# The C tile harness: builds fa_test.c against ../fa_simd.h, ../fa_util.h and
# ../fa_tiles.h once per instruction-set build and runs every build this CPU
# can run (the rest are compiled, not run).
#
#   sh fastattn/src/tests/build.sh           from the repository root (or any
#                                            directory: paths are resolved
#                                            from this script's location)
#   sh fastattn/src/tests/build.sh --bench   ... then the single-thread
#                                            benchmarks (best runnable build)
#   sh fastattn/src/tests/build.sh -v        print every build's full output
#
# Environment: CC (default gcc); FA_SRC (directory of the headers, default
# this script's parent); FA_TEST_BUILD_DIR (where the binaries go; emptied
# first; default a fresh temporary directory, removed on exit); FA_TEST_JOBS
# (builds at a time, default the number of CPUs).
#
# Exit status: 0 iff every build compiled without a single warning, every
# runnable build reported the expected instruction set and passed all its
# tests; 1 otherwise; 2 for a usage error.  A build the CPU cannot run is
# compiled (warnings still fail) and listed as "compiled", never as passed.
# The last line is the summary:
#   tile harness: PASS, 9 builds run (sse2 avx2 ...), 0 failed (-), compiled only: -
set -u
usage() { echo "usage: sh build.sh [--bench] [-v]" >&2; exit 2; }
BENCH=0; VERBOSE=0
for a in "$@"; do
    case $a in --bench) BENCH=1 ;; -v|--verbose) VERBOSE=1 ;; *) usage ;; esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "${FA_SRC:-$HERE/..}" && pwd) || { echo "FA_SRC: no such directory" >&2; exit 2; }
if [ -n "${FA_TEST_BUILD_DIR:-}" ]; then
    OUT=$FA_TEST_BUILD_DIR
    rm -rf "$OUT" && mkdir -p "$OUT" || exit 2
else
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/fa_tiles_harness.XXXXXX") || exit 2
    trap 'rm -rf "$OUT"' EXIT
    trap 'exit 1' INT TERM
fi
CC="${CC:-gcc}"
BASE="-O3 -Wall -Wextra -std=c99 -I$SRC"
AVX512="-mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma -mavx2"
JOBS=${FA_TEST_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}
status=0

flag() { grep -q "^flags.* $1\( \|$\)" /proc/cpuinfo 2>/dev/null; }
HAVE_AVX2=0; flag avx2 && flag fma && HAVE_AVX2=1
HAVE_AVX512=0; flag avx512f && flag avx512dq && flag avx512bw && flag avx512vl && [ $HAVE_AVX2 = 1 ] && HAVE_AVX512=1

# one build: name, expected fa_tiles_isa(), runnable (1/0), [--runner R], cc, flags...
# Writes its report to $OUT/$name.msg and its outcome (ran, failed, compiled;
# one word a line) to $OUT/$name.res; the builds run $JOBS at a time.
one_job() {
    name=$1; isa=$2; runnable=$3; shift 3
    runner=""
    if [ "$1" = "--runner" ]; then runner=$2; shift 2; fi
    cc=$1; shift
    if ! $cc $BASE "$@" "$HERE/fa_test.c" -o "$OUT/fa_test_$name" -lm > "$OUT/$name.build.log" 2>&1; then
        echo "[$name] BUILD FAILED ($cc $*):"; cat "$OUT/$name.build.log"
        echo failed >&3; return
    fi
    if [ -s "$OUT/$name.build.log" ]; then
        echo "[$name] WARNINGS ($cc $*):"; cat "$OUT/$name.build.log"
        echo failed >&3
    fi
    if [ "$runnable" != 1 ]; then
        echo "[$name] compiled (this CPU cannot run it)"
        echo compiled >&3; return
    fi
    $runner "$OUT/fa_test_$name" > "$OUT/$name.log" 2>&1
    rc=$?
    echo ran >&3
    got=$(sed -n 's/^fa_tiles.h ISA: \([a-z0-9]*\).*/\1/p' "$OUT/$name.log")
    last=$(tail -n 1 "$OUT/$name.log")
    if [ $rc = 0 ] && [ "$got" = "$isa" ] && [ "$last" = "$isa: ${last#*: }" ] && ! grep -q FAIL "$OUT/$name.log"; then
        echo "[$name] ok: $last"
        [ $VERBOSE = 1 ] && cat "$OUT/$name.log"
    else
        echo "[$name] FAILED (exit status $rc, instruction set '$got', expected '$isa'):"
        cat "$OUT/$name.log"
        echo failed >&3
    fi
}
names=""; njobs=0
one() {
    names="$names $1"
    one_job "$@" > "$OUT/$1.msg" 2>&1 3> "$OUT/$1.res" &
    njobs=$((njobs + 1))
    if [ $njobs -ge $JOBS ]; then wait; njobs=0; fi
}

# x86-64 baseline; AVX2+FMA (also with -fwrapv, as Python's own CFLAGS add,
# and -std=gnu99); the real AVX-512 build (also -fwrapv); emul512 = the generic
# layer at 64 bytes with 32 registers: the avx512 build's register blocking and
# 16-lane logic through GNU vector extensions, runnable on AVX2 hardware; the
# generic layer at 16 bytes (the aarch64 / other-target path); scalar (MSVC path).
one sse2 sse2 1 "$CC"
one avx2 avx2 $HAVE_AVX2 "$CC" -mavx2 -mfma
one avx2_wrapv avx2 $HAVE_AVX2 "$CC" -mavx2 -mfma -fwrapv
one avx2_gnu99 avx2 $HAVE_AVX2 "$CC" -mavx2 -mfma -std=gnu99
one avx512 avx512 $HAVE_AVX512 "$CC" $AVX512
one avx512_wrapv avx512 $HAVE_AVX512 "$CC" $AVX512 -fwrapv
one emul512 generic $HAVE_AVX2 "$CC" -mavx2 -mfma -Wno-psabi -DFA_FORCE_GENERIC=64 -DFA_FORCE_NREGS=32
one generic generic 1 "$CC" -DFA_FORCE_GENERIC=16
one scalar scalar 1 "$CC" -DFA_FORCE_SCALAR
if command -v clang > /dev/null 2>&1; then
    one clang_sse2 sse2 1 clang
    one clang_avx2 avx2 $HAVE_AVX2 clang -mavx2 -mfma
    one clang_avx512 avx512 $HAVE_AVX512 clang $AVX512
    one clang_generic generic 1 clang -DFA_FORCE_GENERIC=16
    one clang_scalar scalar 1 clang -DFA_FORCE_SCALAR
fi
if command -v aarch64-linux-gnu-gcc > /dev/null 2>&1; then
    if command -v qemu-aarch64 > /dev/null 2>&1; then
        one aarch64 generic 1 --runner qemu-aarch64 aarch64-linux-gnu-gcc -static
    else
        one aarch64 generic 0 aarch64-linux-gnu-gcc -static
    fi
fi

wait
ran=""; failed=""; compiled=""
for n in $names; do
    cat "$OUT/$n.msg"
    grep -q '^ran$' "$OUT/$n.res" && ran="$ran $n"
    grep -q '^compiled$' "$OUT/$n.res" && compiled="$compiled $n"
    if grep -q '^failed$' "$OUT/$n.res" || ! grep -q '^\(ran\|compiled\)$' "$OUT/$n.res"; then
        failed="$failed $n"; status=1
    fi
done

if [ $BENCH = 1 ]; then
    if [ $HAVE_AVX512 = 1 ]; then b=avx512; elif [ $HAVE_AVX2 = 1 ]; then b=avx2; else b=sse2; fi
    echo "=== benchmark ($b build, one thread)"
    "$OUT/fa_test_$b" --bench-only || status=1
fi

count() { set -- $1; echo $#; }
list() { if [ -n "$1" ]; then echo "${1# }"; else echo -; fi; }
[ $status = 0 ] && verdict=PASS || verdict=FAIL
echo "tile harness: $verdict, $(count "$ran") builds run ($(list "$ran")), $(count "$failed") failed ($(list "$failed")), compiled only: $(list "$compiled")"
exit $status
