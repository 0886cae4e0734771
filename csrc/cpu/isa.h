// Instruction-set selection of the CPU kernels.
//
// FASTOPS_AVX2: a function compiled for AVX2 + FMA whatever the build's -march, for kernels that
// check the CPU at run time (cpu_has_avx2_fma) before calling it.
// FASTOPS_CPU_CLONES: GCC function multi-versioning: an AVX-512 (x86-64-v4) clone next to the
// build's default, picked once at load time by the CPU that runs it (an ifunc), for row loops that
// gain from AVX-512 where the CPU has it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTOPS_HAS_AVX2 1
#define FASTOPS_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTOPS_HAS_AVX2 0
#endif

namespace fastops {

inline bool cpu_has_avx2_fma() {
#if FASTOPS_HAS_AVX2
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

}  // namespace fastops

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTOPS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define FASTOPS_CPU_CLONES
#endif

// For the helpers of FASTOPS_CPU_CLONES functions: inlined, they are compiled for each clone's
// target; called, they would run the default target's code.
#if defined(__GNUC__)
#define FASTOPS_ROW_INLINE inline __attribute__((always_inline))
#else
#define FASTOPS_ROW_INLINE inline
#endif
