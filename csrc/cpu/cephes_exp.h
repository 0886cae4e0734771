// The CPU kernels' single-precision exp, in two forms of one polynomial: a scalar form that
// compilers vectorise inside loops (cross-entropy rows; fused multiply-adds where the build targets
// FMA), and an 8-lane AVX2 + FMA form for kernels that dispatch on the CPU at run time (MLECC rows).
//
// exp(x) = 2^n e^r with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two constants,
// Cody-Waite), e^r from Cephes' degree-6 minimax polynomial (about 1 ulp on |r| <= ln2 / 2).
// Arguments above kMaxArg are clipped to it; below kMinArg the result is 0. exp(kMinArg) = 1.6e-38
// is just above the smallest normal float, so that no intermediate is ever subnormal: x86 CPUs
// take a microcode assist (~100 cycles) for every operation that produces or reads a subnormal,
// which made the MLECC rows ~1.6x slower, most of their bins lying far from the target.
#pragma once

#include <cstdint>

#include "cpu/isa.h"

namespace fastops {
namespace cephes {

constexpr float kMaxArg = 88.3762626647949f;
constexpr float kMinArg = -87.0f;  // log(2^-126) = -87.34; the margin keeps 2^n e^r normal
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                           4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// a * b + c, fused where the build targets FMA: the polynomials below are as accurate either way
// (GCC vectorises __builtin_fmaf), and the fused form halves their dependency chains.
FASTOPS_ROW_INLINE float mul_add(float a, float b, float c) {
#ifdef __FMA__
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// e^x for x in [kMinArg, kMaxArg], which the callers below clip. Branch-free and call-free, so
// that a loop over it vectorises: n is rounded by adding and subtracting 1.5 * 2^23.
FASTOPS_ROW_INLINE float exp_in_range(float x) {
  constexpr float kRound = 12582912.f;
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = mul_add(-n, kLn2Lo, mul_add(-n, kLn2Hi, x));
  float p = mul_add(kPoly[0], r, kPoly[1]);  // unrolled by hand: GCC vectorises no inner loop
  p = mul_add(p, r, kPoly[2]);
  p = mul_add(p, r, kPoly[3]);
  p = mul_add(p, r, kPoly[4]);
  p = mul_add(p, r, kPoly[5]);
  const float e_r = mul_add(p, r * r, r + 1.f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return e_r * __builtin_bit_cast(float, bits);
}

FASTOPS_ROW_INLINE float exp(float arg) {
  const float above = arg < kMinArg ? kMinArg : arg;  // two selects: one max and one min
  const float x = above > kMaxArg ? kMaxArg : above;
  return arg < kMinArg ? 0.f : exp_in_range(x);
}

// exp for arguments <= 0 (x - max(x), x - logsumexp(x) of a clamped row; NaN gives NaN): exp
// without its overflow clip, which the softmax loops that take it do not pay.
FASTOPS_ROW_INLINE float exp_nonpositive(float arg) {
  return arg < kMinArg ? 0.f : exp_in_range(arg < kMinArg ? kMinArg : arg);
}

#if FASTOPS_HAS_AVX2
FASTOPS_AVX2 inline __m256 exp256(__m256 arg) {
  const __m256 x = _mm256_max_ps(_mm256_min_ps(arg, _mm256_set1_ps(kMaxArg)), _mm256_set1_ps(kMinArg));
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kPoly[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
  // 0 below kMinArg; NaN stays NaN, as in the scalar form (the clamp above made it kMaxArg).
  const __m256 below = _mm256_cmp_ps(arg, _mm256_set1_ps(kMinArg), _CMP_LT_OQ);
  return _mm256_blendv_ps(_mm256_andnot_ps(below, result), arg, _mm256_cmp_ps(arg, arg, _CMP_UNORD_Q));
}
#endif

}  // namespace cephes
}  // namespace fastops
