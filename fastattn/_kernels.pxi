# Shared body of fastattn's attention kernels, compiled once per instruction
# set (_kernels_baseline.pyx, _kernels_avx2.pyx, _kernels_avx512.pyx,
# _kernels_avx512bf16.pyx, _kernels_amx.pyx include
# this file; setup.py gives each its own -m flags and fa_tiles.h picks its
# SIMD branch from them).  One include per concern:
#
#   _k_common.pxi        fused types, C externs, constants, the per-dtype
#                        tile table, the one parallel scratch scaffold
#   _k_flash.pxi         the fused attention (lanes, rows/split-K, variable-
#                        length batches) and its call object FlashCall
#   _k_bf16_flash.pxi    the fused attention on bfloat16 operands (flash_bf16)
#   _k_mask.pxi          classify_mask (per-tile mask summary), MaskCall
#   _k_materialised.pxi  scores, softmax, weighted_sum and their calls
#   _k_gemm.pxi          linear (the tiled GEMM), LinearCall
#   _k_bf16_gemm.pxi     bfloat16: conversions, weight packing, bf16_linear
#                        (AMX / vdpbf16ps / widening microkernels, fa_bf16.h)
#   _k_gemv.pxi          gemv (decode-sized projections, W in rows), GemvCall
#
# Parallel layout: every kernel flattens the leading (batch, head)
# dimensions into a list of element offsets computed in Python
# (functional.py), so broadcast dimensions (stride 0), negative strides and
# views straight out of a fused QKV projection are read in place; only the
# last axis must be contiguous.  Each kernel takes one named call object
# (FlashCall, MaskCall, ScoresCall, SoftmaxCall, WeightedSumCall,
# LinearCall) built by the public functions after they validated the user's
# input; the kernels check only the call object's own consistency.

include "_k_common.pxi"
include "_k_flash.pxi"
include "_k_bf16_flash.pxi"
include "_k_mask.pxi"
include "_k_materialised.pxi"
include "_k_gemm.pxi"
include "_k_bf16_gemm.pxi"
include "_k_gemv.pxi"
