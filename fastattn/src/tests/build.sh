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

HAVE_BF16=0; [ $HAVE_AVX512 = 1 ] && flag avx512_bf16 && HAVE_BF16=1
HAVE_AMX=0; [ $HAVE_BF16 = 1 ] && flag amx_tile && flag amx_bf16 && HAVE_AMX=1

# one build: name, expected fa_tiles_isa(), runnable (1/0), [--runner R],
# [--src F] (default fa_test.c), cc, flags...
# Writes its report to $OUT/$name.msg and its outcome (ran, failed, compiled;
# one word a line) to $OUT/$name.res; the builds run $JOBS at a time.
one_job() {
    name=$1; isa=$2; runnable=$3; shift 3
    runner=""
    if [ "$1" = "--runner" ]; then runner=$2; shift 2; fi
    src=fa_test.c
    if [ "$1" = "--src" ]; then src=$2; shift 2; fi
    cc=$1; shift
    if ! $cc $BASE "$@" "$HERE/$src" -o "$OUT/fa_test_$name" -lm > "$OUT/$name.build.log" 2>&1; then
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
    got=$(sed -n 's/^fa_[a-z0-9_]*\.h ISA: \([a-z0-9]*\).*/\1/p' "$OUT/$name.log")
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

# The bf16 kernels (fa_bf16_test.c: conversions, packing, the GEMM task against
# float64 with the fp32-accumulation bound, a row alone == the row in a batch):
# the real AMX / AVX512-BF16 paths where the CPU has them, the widen path on
# each vector layer, and the amx and dp paths on emulated instructions
# (fa_bf16_emul.h), runnable on any CPU.
B=fa_bf16_test.c
one bf16_amx bf16amx $HAVE_AMX --src $B "$CC" $AVX512 -mavx512bf16 -mamx-tile -mamx-bf16
one bf16_dp bf16dp $HAVE_BF16 --src $B "$CC" $AVX512 -mavx512bf16
one bf16_widen512 bf16widen $HAVE_AVX512 --src $B "$CC" $AVX512
one bf16_widen2 bf16widen $HAVE_AVX2 --src $B "$CC" -mavx2 -mfma
one bf16_widenc bf16widen 1 --src $B "$CC"
one bf16_emul_amx bf16emulamx 1 --src $B "$CC" -DFA_BF16_EMUL_AMX
one bf16_emul_dp bf16emuldp 1 --src $B "$CC" -DFA_BF16_EMUL_DP

# The bf16 operands of the fused attention (fa_bf16_attn_test.c): rounding and
# widening against an independent reference, the rows tiles reading bf16 K/V
# bit for bit against the fp32 tiles on every vector layer, the lanes packs
# and stores, and (amx, dp) the tile products against float64 with the
# fp32-accumulation bound.
A=fa_bf16_attn_test.c
one attn_amx attnamx $HAVE_AMX --src $A "$CC" $AVX512 -mavx512bf16 -mamx-tile -mamx-bf16
one attn_dp attndp $HAVE_BF16 --src $A "$CC" $AVX512 -mavx512bf16
one attn_widen512 attnwiden $HAVE_AVX512 --src $A "$CC" $AVX512
one attn_widen2 attnwiden $HAVE_AVX2 --src $A "$CC" -mavx2 -mfma
one attn_widensse2 attnwiden 1 --src $A "$CC"
one attn_generic attnwiden 1 --src $A "$CC" -DFA_FORCE_GENERIC=16
one attn_scalar attnwiden 1 --src $A "$CC" -DFA_FORCE_SCALAR

wait
# Digests of every GEMM result: the emulated vdpbf16ps must give the real
# instruction's bits; the widen builds agree with each other and with the
# emulated AMX (the SDM's tdpbf16ps pseudocode is the same k-ordered chain of
# exact products).  The real tdpbf16ps rounds differently from its
# pseudocode on Sapphire Rapids, so bf16_amx is checked against the bound
# only (docs/architecture.md, "bfloat16 GEMM").
dig() { sed -n 's/^digest: //p' "$OUT/$1.log" 2>/dev/null; }
same() {
    a=$(dig "$1"); b=$(dig "$2")
    if [ -n "$a" ] && [ -n "$b" ] && [ "$a" != "$b" ]; then
        echo "[$1] FAILED: digest $a differs from $2's $b" >> "$OUT/$1.msg"
        echo failed >> "$OUT/$1.res"
    fi
}
same bf16_emul_dp bf16_dp
same bf16_widen2 bf16_widenc
same bf16_widen512 bf16_widenc
same bf16_emul_amx bf16_widenc
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
