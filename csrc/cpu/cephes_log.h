// The CPU kernels' single-precision log and log1p, branch-free and call-free like cephes::exp
// (cpu/cephes_exp.h), so that loops over them vectorise.
//
// log(x) = k ln 2 + log(1 + f), with x = 2^k m, m in [sqrt(1/2), sqrt(2)) and f = m - 1 exact;
// log(1 + f) = f - f^2 / 2 + f^3 P(f), Cephes' degree-8 minimax P (about 1 ulp on that range).
#pragma once

#include <cstdint>

#include "cpu/cephes_exp.h"

namespace fastops {
namespace cephes {

constexpr float kLogPoly[] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                              -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                              2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};

// k ln 2 + log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1] and k integral.
FASTOPS_ROW_INLINE float log1p_scaled(float f, float k) {
  const float z = f * f;
  float p = mul_add(kLogPoly[0], f, kLogPoly[1]);  // unrolled by hand, as in cephes::exp
  p = mul_add(p, f, kLogPoly[2]);
  p = mul_add(p, f, kLogPoly[3]);
  p = mul_add(p, f, kLogPoly[4]);
  p = mul_add(p, f, kLogPoly[5]);
  p = mul_add(p, f, kLogPoly[6]);
  p = mul_add(p, f, kLogPoly[7]);
  p = mul_add(p, f, kLogPoly[8]);
  float y = mul_add(p * f, z, k * kLn2Lo);
  y = mul_add(-0.5f, z, y);
  return mul_add(k, kLn2Hi, f + y);
}

// x positive, finite and normal, or NaN (returned as is).
FASTOPS_ROW_INLINE float log(float x) {
  constexpr int32_t kSqrtHalfBits = 0x3f3504f3;  // sqrt(1/2)
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  // k = floor(log2(x / sqrt(1/2))): the exponent that leaves the mantissa in [sqrt(1/2), sqrt(2)).
  const int32_t k = (bits - kSqrtHalfBits) >> 23;
  const float f = __builtin_bit_cast(float, bits - (k << 23)) - 1.f;
  return x == x ? log1p_scaled(f, static_cast<float>(k)) : x;
}

// log(1 + e) for e in [0, 1] or NaN, without forming 1 + e (which would round small e away):
// below sqrt(2) - 1, f = e as is; above, 1 + e = 2 (1 + f) with f = (e - 1) / 2 (within half an
// ulp of f).
FASTOPS_ROW_INLINE float log1p(float e) {
  constexpr float kSqrt2Minus1 = 0.41421356f;
  const bool halve = e > kSqrt2Minus1;
  return log1p_scaled(halve ? (e - 1.f) * 0.5f : e, halve ? 1.f : 0.f);
}

}  // namespace cephes
}  // namespace fastops
