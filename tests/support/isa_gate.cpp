// Skips a test executable built for a fixed x86-64 instruction set (tests/CMakeLists.txt,
// "The SIMD kernel tests once more") on a CPU that lacks it: exit code 77, which CTest reports
// as skipped (SKIP_RETURN_CODE). This file is compiled for the baseline ISA, and its check
// runs before the test's own static initialisers (constructor priority 101), which may
// already use the wider instructions.
#include <cstdio>
#include <cstdlib>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
__attribute__((constructor(101))) static void rlpo_isa_gate() {
    __builtin_cpu_init();
    bool ok = true;
#if defined(RLPO_TEST_NEEDS_X86_64_V3) || defined(RLPO_TEST_NEEDS_X86_64_V4)
    ok = ok && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2");
#endif
#if defined(RLPO_TEST_NEEDS_X86_64_V4)
    ok = ok && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
#endif
    if (!ok) {
        std::fputs("skipped: this CPU lacks the instruction set the test was built for\n", stderr);
        std::_Exit(77);
    }
}
#endif
