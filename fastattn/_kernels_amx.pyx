# cython: language_level=3
"""fastattn attention kernels, amx instruction-set build (see _kernels.pxi)."""
include "_kernels.pxi"
