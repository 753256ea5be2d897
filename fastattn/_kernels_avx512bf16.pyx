# cython: language_level=3
"""fastattn attention kernels, avx512bf16 instruction-set build (see _kernels.pxi)."""
include "_kernels.pxi"
