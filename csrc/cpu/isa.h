// Instruction-set selection of the CPU kernels.
//
// The kernels are built for the build's -march (x86-64-v3 by default, setup.py) and carry faster
// paths for wider instruction sets, taken when cpu_isa() allows at run time:
//   FASTOPS_AVX2    a function compiled for AVX2 + FMA (MLECC rows: 8-lane intrinsics);
//   FASTOPS_AVX512  a function compiled for x86-64-v4 (cross-entropy rows: the same C++ loops,
//                   vectorised 16 floats wide).
// FASTOPS_CPU_ISA=baseline|avx2|avx512 caps the choice (read once), so that one machine can test
// every path; unset, the CPU decides.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTOPS_HAS_AVX2 1
#define FASTOPS_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTOPS_HAS_AVX2 0
#endif

#if FASTOPS_HAS_AVX2 && !defined(__clang__)
#define FASTOPS_HAS_AVX512 1
#define FASTOPS_AVX512 __attribute__((target("arch=x86-64-v4")))
#else
#define FASTOPS_HAS_AVX512 0
#endif

// For the helpers of FASTOPS_AVX2 / FASTOPS_AVX512 functions: inlined, they are compiled for the
// caller's instruction set; called, they would run the build's.
#if defined(__GNUC__)
#define FASTOPS_ROW_INLINE inline __attribute__((always_inline))
#else
#define FASTOPS_ROW_INLINE inline
#endif

namespace fastops {

enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline CpuIsa detect_cpu_isa() {
#if FASTOPS_HAS_AVX2
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return CpuIsa::kBaseline;
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512cd");
  return avx512 && FASTOPS_HAS_AVX512 ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
#else
  return CpuIsa::kBaseline;
#endif
}

inline CpuIsa cpu_isa() {
  static const CpuIsa isa = [] {
    const CpuIsa detected = detect_cpu_isa();
    const char* cap = std::getenv("FASTOPS_CPU_ISA");
    if (cap == nullptr) return detected;
    const bool baseline = std::strcmp(cap, "baseline") == 0, avx2 = std::strcmp(cap, "avx2") == 0;
    TORCH_CHECK(baseline || avx2 || std::strcmp(cap, "avx512") == 0,
                "FASTOPS_CPU_ISA must be baseline, avx2 or avx512, got '", cap, "'");
    const CpuIsa limit = baseline ? CpuIsa::kBaseline : avx2 ? CpuIsa::kAvx2 : CpuIsa::kAvx512;
    return std::min(detected, limit);
  }();
  return isa;
}

inline bool cpu_has_avx2_fma() { return cpu_isa() >= CpuIsa::kAvx2; }

}  // namespace fastops
