#!/bin/sh
# Build and run the fa_tiles.h tests for every instruction set available here.
#   sh build.sh            build all, run the tests of each runnable build
#   sh build.sh --bench    also run the benchmarks (avx2 build, or sse2 if no AVX2)
# FA_SRC overrides the directory holding fa_tiles.h (default: ..).
# Builds go to ./build/.  Exit status non-zero if any build or test fails.
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

build() {  # name cc flags...
    name=$1; cc=$2; shift 2
    if $cc $BASE "$@" fa_test.c -o "$OUT/fa_test_$name" -lm 2> "$OUT/$name.log"; then
        if [ -s "$OUT/$name.log" ]; then echo "[$name] WARNINGS:"; cat "$OUT/$name.log"; status=1; fi
        return 0
    fi
    echo "[$name] BUILD FAILED:"; cat "$OUT/$name.log"; status=1; return 1
}
run() {  # name [runner]
    name=$1; shift
    echo "=== $name"
    if "$@" "$OUT/fa_test_$name"; then summary="$summary $name:pass"; else summary="$summary $name:FAIL"; status=1; fi
}
compile_only() {  # name cc flags...
    name=$1; cc=$2; shift 2
    printf '#include "fa_tiles.h"\nconst char *isa(void) { return fa_tiles_isa(); }\n' > "$OUT/co.c"
    # also instantiate every function so that all code is compiled
    cat >> "$OUT/co.c" <<'EOC'
void all_f32(float *a, float *b, float *c, float *m, float *l, float *al) {
    fa_qk_f32(a, 129, 63, 129, b, c); fa_gemm_nt_f32(a, 129, 63, 129, b, c, 1); fa_pv_f32(a, 130, 61, 127, c, b); fa_rescale_pv_f32(a, 130, 61, 127, c, b, m);
    fa_softmax_f32(c, 61, m, l, al); fa_rescale_f32(b, 127, al);
    fa_dot_rows_f32(a, 7, b, 131, 1000, 127, c, 1003); fa_axpy_rows_f32(a, 7, 1003, b, 131, 999, 127, c);
    m[0] = fa_exp2_sub_sum_f32(a, 1001, m[1]) + fa_max_f32(b, 77) + fa_exp2_f32(l[3]);
}
void all_f64(double *a, double *b, double *c, double *m, double *l, double *al) {
    fa_qk_f64(a, 129, 63, 129, b, c); fa_gemm_nt_f64(a, 129, 63, 129, b, c, 0); fa_pv_f64(a, 130, 61, 127, c, b); fa_rescale_pv_f64(a, 130, 61, 127, c, b, m);
    fa_softmax_f64(c, 61, m, l, al); fa_rescale_f64(b, 127, al);
    fa_dot_rows_f64(a, 7, b, 131, 1000, 127, c, 1003); fa_axpy_rows_f64(a, 7, 1003, b, 131, 999, 127, c);
    m[0] = fa_exp2_sub_sum_f64(a, 1001, m[1]) + fa_max_f64(b, 77) + fa_exp2_f64(l[3]);
}
EOC
    if $cc $BASE "$@" -c "$OUT/co.c" -o "$OUT/co_$name.o" 2> "$OUT/co_$name.log" && [ ! -s "$OUT/co_$name.log" ]; then
        summary="$summary $name:compiles"
    else
        echo "[$name] compile check:"; cat "$OUT/co_$name.log"; summary="$summary $name:COMPILE-FAIL"; status=1
    fi
}

HAVE_AVX2=0; grep -q ' avx2 ' /proc/cpuinfo 2>/dev/null && grep -q ' fma ' /proc/cpuinfo && HAVE_AVX2=1
HAVE_AVX512=0; grep -q ' avx512f ' /proc/cpuinfo 2>/dev/null && grep -q ' avx512dq ' /proc/cpuinfo && grep -q ' avx512bw ' /proc/cpuinfo && grep -q ' avx512vl ' /proc/cpuinfo && HAVE_AVX512=1

# runnable builds: portable (x86-64 baseline SSE2), AVX2+FMA, the generic
# vector-extension layer (what aarch64 etc. use), the 1-lane plain-C layer, and
# the generic layer at 512 bits with the AVX-512 register blocking (runs the
# AVX-512 build's kernel logic on AVX2 hardware, only the intrinsic layer differs)
build sse2 "$CC" && run sse2
if [ $HAVE_AVX2 = 1 ]; then
    build avx2 "$CC" -mavx2 -mfma && run avx2
    build avx2_wrapv "$CC" -mavx2 -mfma -fwrapv && run avx2_wrapv
    build avx2_gnu "$CC" -mavx2 -mfma -std=gnu99 && run avx2_gnu
    build emul512 "$CC" -mavx2 -mfma -Wno-psabi -DFA_FORCE_GENERIC=64 -DFA_FORCE_NREGS=32 && run emul512
fi
build generic16 "$CC" -DFA_FORCE_GENERIC=16 && run generic16
build scalar "$CC" -DFA_FORCE_SCALAR && run scalar
if [ $HAVE_AVX512 = 1 ]; then
    build avx512 "$CC" $AVX512 && run avx512
else
    compile_only avx512 "$CC" $AVX512
fi
compile_only avx512_wrapv "$CC" $AVX512 -fwrapv
if command -v clang > /dev/null; then
    for f in "" "-mavx2 -mfma" "$AVX512" "-DFA_FORCE_GENERIC=16" "-DFA_FORCE_SCALAR"; do
        compile_only "clang[${f:-sse2}]" clang $f
    done
    [ $HAVE_AVX2 = 1 ] && build clang_avx2 clang -mavx2 -mfma && run clang_avx2
    build clang_sse2 clang && run clang_sse2
fi
if command -v aarch64-linux-gnu-gcc > /dev/null; then
    if build aarch64 aarch64-linux-gnu-gcc -static; then
        if command -v qemu-aarch64 > /dev/null; then run aarch64 qemu-aarch64; else summary="$summary aarch64:compiles"; fi
    fi
fi
if [ "${1:-}" = "--bench" ]; then
    if [ $HAVE_AVX512 = 1 ]; then b=avx512; elif [ $HAVE_AVX2 = 1 ]; then b=avx2; else b=sse2; fi
    echo "=== benchmark ($b build, one thread)"
    "$OUT/fa_test_$b" --bench-only
fi
echo "summary:$summary"
exit $status
