// Scalar math shared by the CPU and CUDA kernels of the clamped losses. T is the accumulation
// type: float for float32/float16/bfloat16 inputs, double for float64 (gradcheck).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define FASTOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTOPS_HOST_DEVICE inline
#endif

namespace fastops {

// Clamp to [-bound, bound] keeping NaN as NaN (fmin/fmax would turn NaN into a bound). Written as
// two selects on the running value, which x86 compilers turn into one max and one min.
template <typename T>
FASTOPS_HOST_DEVICE T clamp_keep_nan(T x, T bound) {
  const T above = x < -bound ? -bound : x;
  return above > bound ? bound : above;
}

// Gradient mask of torch.clamp: passes where -bound <= x <= bound (so not for ±inf or NaN).
template <typename T>
FASTOPS_HOST_DEVICE bool inside_clamp(T x, T bound) {
  return (x >= -bound) & (x <= bound);
}

// Whether the clamp changes x: |x| > bound, ±inf included, NaN excluded (counted apart).
template <typename T>
FASTOPS_HOST_DEVICE bool changed_by_clamp(T x, T bound) {
  return (x > bound) | (x < -bound);
}

// Whether a float target marks its element ignored: below 0 or equal to ignore_index, mmdet's
// valid mask (a NaN target is not ignored: its loss is NaN).
template <typename T>
FASTOPS_HOST_DEVICE bool ignored_target(T t, int64_t ignore_index) {
  return (t < T(0)) | (t == static_cast<T>(ignore_index));
}

// Stable BCE-with-logits with pos_weight p (torch's formula):
//   l(x, t) = (1 - t) x + (1 + (p - 1) t) (log1p(exp(-|x|)) + max(-x, 0)),
//   dl/dx   = (1 + (p - 1) t) sigmoid(x) - p t.
// The _of forms take log1p(exp(-|x|)) and sigmoid(x) from the caller (the CPU kernel's vector math).
template <typename T>
FASTOPS_HOST_DEVICE T bce_with_logits_of(T x, T t, T p, T log1p_exp_neg_abs_x) {
  return (T(1) - t) * x + (T(1) + (p - T(1)) * t) * (log1p_exp_neg_abs_x + (x < T(0) ? -x : T(0)));
}

template <typename T>
FASTOPS_HOST_DEVICE T bce_with_logits(T x, T t, T p) {
  using std::exp;
  using std::fabs;
  using std::log1p;
  return bce_with_logits_of(x, t, p, log1p(exp(-fabs(x))));
}

template <typename T>
FASTOPS_HOST_DEVICE T bce_with_logits_grad_of(T sigmoid_x, T t, T p) {
  return (T(1) + (p - T(1)) * t) * sigmoid_x - p * t;
}

template <typename T>
FASTOPS_HOST_DEVICE T bce_with_logits_grad(T x, T t, T p) {
  using std::exp;
  return (T(1) + (p - T(1)) * t) / (T(1) + exp(-x)) - p * t;
}

}  // namespace fastops
