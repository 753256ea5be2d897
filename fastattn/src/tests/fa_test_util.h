/* What every standalone C test needs, in one place: a xorshift64 generator
 * (seed: define FA_TEST_SEED before including this header), 64-byte aligned
 * zero-filled allocation that exits on failure, and two clocks (CPU time for
 * timings on a loaded machine, wall time for multithreaded ones).
 * Everything is static inline, so a test that uses only part of it compiles
 * without unused-function warnings (the harness fails on any warning). */
#ifndef FA_TEST_UTIL_H
#define FA_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef FA_TEST_SEED
#define FA_TEST_SEED 0x9E3779B97F4A7C15ull
#endif

static uint64_t rng_state = FA_TEST_SEED;

static inline uint64_t rnext(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* uniform in [0, 1), 53 random bits */
static inline double urand(void) { return (double)(rnext() >> 11) * (1.0 / 9007199254740992.0); }

/* uniform integer in [0, n), n > 0 */
static inline int irand(int n) { return (int)(rnext() % (uint64_t)n); }

/* n bytes (rounded up to a whole 64-byte line, all of it zeroed) */
static inline void *xalloc(size_t n)
{
    void *p = NULL;
    size_t whole = (n + 63) / 64 * 64;
    if (posix_memalign(&p, 64, whole ? whole : 64)) { fprintf(stderr, "out of memory\n"); exit(2); }
    memset(p, 0, whole);
    return p;
}

static inline double now_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static inline double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

#endif
