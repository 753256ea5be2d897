/* fa_util.h -- small portable helpers for fastattn's Cython kernels:
 * aligned allocation, the OpenMP shim (serial stand-ins when the build has no
 * OpenMP), and the name of the instruction set this translation unit targets. */
#ifndef FASTATTN_FA_UTIL_H
#define FASTATTN_FA_UTIL_H

#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#define FA_OPENMP 1
static inline int fa_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define FA_OPENMP 0
static inline int fa_omp_max_threads(void) { return 1; }
#endif

#if defined(__AVX512F__)
#define FA_BUILD_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define FA_BUILD_ISA "avx2"
#else
#define FA_BUILD_ISA "baseline"
#endif

/* 64-byte aligned, zero-initialised buffer (NULL on failure or n == 0). */
static inline void *fa_aligned_calloc(size_t nbytes)
{
    void *p = NULL;
    if (nbytes == 0) nbytes = 64;
    nbytes = (nbytes + 63) & ~(size_t)63;
#if defined(_MSC_VER) || defined(_WIN32)
    p = _aligned_malloc(nbytes, 64);
#else
    if (posix_memalign(&p, 64, nbytes) != 0) p = NULL;
#endif
    if (p) memset(p, 0, nbytes);
    return p;
}

static inline void fa_aligned_free(void *p)
{
#if defined(_MSC_VER) || defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

#endif
