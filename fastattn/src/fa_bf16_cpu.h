/*
 * fa_bf16_cpu.h -- run-time detection of AMX-BF16 and the Linux permission
 * request every process must make before its first tile instruction.
 *
 * Compiled into every kernel build (it uses no AMX instruction itself), and
 * called by fastattn/_dispatch.py through the baseline build before the amx
 * build is chosen, so a CPU or kernel without AMX never executes a tile
 * instruction (which would be SIGILL).
 *
 *   fa_amx_request(&reason)  1 when the CPU reports AMX-TILE and AMX-BF16
 *                            (cpuid leaf 7, EDX bits 24 and 22), the OS
 *                            enables the tile state in XCR0 (bits 17, 18)
 *                            and arch_prctl(ARCH_REQ_XCOMP_PERM,
 *                            XFEATURE_XTILEDATA) granted the permission for
 *                            this process (idempotent: asking twice is fine);
 *                            0 otherwise, with a static string saying why.
 */
#ifndef FASTATTN_FA_BF16_CPU_H
#define FASTATTN_FA_BF16_CPU_H

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#include <unistd.h>
#include <sys/syscall.h>

/* unistd.h declares syscall() only with _DEFAULT_SOURCE / _GNU_SOURCE, which a
 * header cannot set after the system headers were read (strict -std=c99) */
extern long syscall(long number, ...);

#define FA_ARCH_GET_XCOMP_PERM 0x1022
#define FA_ARCH_REQ_XCOMP_PERM 0x1023
#define FA_XFEATURE_XTILEDATA 18

static inline int fa_amx_request(const char **reason)
{
    unsigned int a, b, c, d;
    unsigned long long xcr0;
    unsigned long bitmask = 0;
    if (__get_cpuid_max(0, NULL) < 7) {
        *reason = "cpuid has no leaf 7";
        return 0;
    }
    __cpuid_count(7, 0, a, b, c, d);
    if (!(d & (1u << 24))) {
        *reason = "the CPU has no AMX-TILE (cpuid 7.EDX[24])";
        return 0;
    }
    if (!(d & (1u << 22))) {
        *reason = "the CPU has no AMX-BF16 (cpuid 7.EDX[22])";
        return 0;
    }
    __cpuid(1, a, b, c, d);
    if (!(c & (1u << 27))) {
        *reason = "the OS has not enabled XSAVE (no OSXSAVE)";
        return 0;
    }
    {
        unsigned int lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = ((unsigned long long)hi << 32) | lo;
    }
    if ((xcr0 & (3ull << 17)) != (3ull << 17)) {
        *reason = "the OS does not enable the AMX tile state (XCR0 bits 17-18)";
        return 0;
    }
    if (syscall(SYS_arch_prctl, FA_ARCH_REQ_XCOMP_PERM, FA_XFEATURE_XTILEDATA) != 0) {
        *reason = "the kernel refused arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) "
                  "(Linux < 5.16, or a sandbox forbids it)";
        return 0;
    }
    if (syscall(SYS_arch_prctl, FA_ARCH_GET_XCOMP_PERM, &bitmask) != 0
            || !(bitmask & (1ul << FA_XFEATURE_XTILEDATA))) {
        *reason = "arch_prctl granted no XTILEDATA permission";
        return 0;
    }
    *reason = "ok";
    return 1;
}
#else
static inline int fa_amx_request(const char **reason)
{
    *reason = "AMX needs Linux on x86-64 (and a GNU C compiler)";
    return 0;
}
#endif

#endif /* FASTATTN_FA_BF16_CPU_H */
