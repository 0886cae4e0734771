// Device-agnostic math of the log-space MLECC loss, shared by the CPU and CUDA kernels.
//
// Stock RTMO (mmpose 1.3.2) computes, per keypoint and axis a in {x, y}:
//   p_i = exp(z_i - max z) / (sum_j exp(z_j - max z) + 1e-8),  z = clamp(logits, -5e4, 5e4)
//   t_i = exp(-|g - b_i| / a' / s' / 2) / s',  b_i = lin_i * scale + center,
//         a' = max(sqrt(area), 1), s' = max(sigma, 1e-3)
//   loss = -log(prod_a sum_i p_i t_i + 1e-4)
// Here every factor stays a logarithm: s_a = log sum_i p_i t_i = lse(z + e) - lse_eps(z) - log s'
// with e_i = -|g - b_i| / a' / s' / 2, and loss = -logaddexp(s_x + s_y, log floor).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

#include "common/rounded_math.h"

namespace fastops {
namespace mlecc {

constexpr double kLogitClamp = 5e4;   // DCC._apply_softmax clamps the 1-D heatmap logits
constexpr double kSoftmaxEps = 1e-8;  // DCC._apply_softmax: exp / (sum(exp) + EPS)
constexpr double kSigmaMin = 1e-3;    // generate_target_heatmap: sigmas.clip(min=1e-3)

template <typename T>
C10_HOST_DEVICE inline T clamp_logit(T z) {
  const T lim = static_cast<T>(kLogitClamp);
  return z < -lim ? -lim : (z > lim ? lim : z);
}

template <typename T>
C10_HOST_DEVICE inline bool logit_in_clamp_range(T z) {
  const T lim = static_cast<T>(kLogitClamp);
  return z >= -lim && z <= lim;
}

// d loss / d z_i = grad_s (r_i - p_i), zero where the stock clamp saturates, and flushed to zero
// below the smallest normal number: subnormal gradients (r_i and p_i near exp(-100)) change nothing
// in training but make every CPU GEMM that reads them (the DCC's logits = features x bin
// encodings) up to 30x slower.
template <typename T>
C10_HOST_DEVICE inline T logit_grad(T raw, T grad_s, T r, T p) {
  if (!logit_in_clamp_range(raw)) return T(0);
  const T grad = grad_s * (r - p);
  return std::fabs(grad) < std::numeric_limits<T>::min() ? T(0) : grad;
}

// Per-axis constants of one keypoint's Laplace target.
template <typename T>
struct LaplaceAxis {
  T coord;   // ground-truth keypoint coordinate g on this axis
  T center;  // bbox center on this axis
  T scale;   // bbox scale (padded width or height) on this axis
  T area;    // a' = max(sqrt(area), 1)
  T sigma;   // s' = max(sigma, 1e-3)

  C10_HOST_DEVICE T bin(T lin) const { return add_rn(mul_rn(lin, scale), center); }
  // Normalised distance q = |g - b| / a' / s' (divisions in the stock order).
  C10_HOST_DEVICE T distance(T lin) const {
    return div_rn(div_rn(std::fabs(coord - bin(lin)), area), sigma);
  }
  // log t + log s' = -q / 2.
  C10_HOST_DEVICE T exponent(T lin) const { return distance(lin) * static_cast<T>(-0.5); }
};

template <typename T>
C10_HOST_DEVICE inline T area_scale(T area) {
  const T root = std::sqrt(area);
  return root < T(1) ? T(1) : root;  // areas.pow(0.5).clip(min=1); NaN rows are rejected earlier
}

template <typename T>
C10_HOST_DEVICE inline T clipped_sigma(T sigma) {
  const T lo = static_cast<T>(kSigmaMin);
  return sigma < lo ? lo : sigma;
}

// log(exp(a) + exp(b)), exact for -inf arguments.
template <typename T>
C10_HOST_DEVICE inline T log_add_exp(T a, T b) {
  const T hi = a > b ? a : b;
  const T lo = a > b ? b : a;
  if (hi == -std::numeric_limits<T>::infinity()) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

template <typename T>
C10_HOST_DEVICE inline T log_floor_of(double floor) {
  return floor > 0.0 ? static_cast<T>(std::log(floor)) : -std::numeric_limits<T>::infinity();
}

// Per-keypoint loss -log(exp(s) + floor) of the summed axis log-likelihoods s.
template <typename T>
C10_HOST_DEVICE inline T nll_with_floor(T s, T log_floor) {
  return -log_add_exp(s, log_floor);
}

// d nll_with_floor / ds = -exp(s) / (exp(s) + floor).
template <typename T>
C10_HOST_DEVICE inline T nll_with_floor_grad(T s, T log_floor) {
  return -std::exp(s - log_add_exp(s, log_floor));
}

// Log-normalisers of one axis row, relative to the row's largest clamped logit z_max so that
// large logits cost no precision (d_i = z_i - z_max is exact for every term that matters):
//   softmax = log(sum_i exp(d_i) + 1e-8)         (the stock softmax denominator)
//   joint   = log(sum_i exp(d_i + e_i))           (e_i the Laplace exponent)
// so log p_i = d_i - softmax, r_i = p_i t_i / sum_j p_j t_j = exp(d_i + e_i - joint).
template <typename T>
struct LogNormalisers {
  static constexpr int kCount = 3;  // values saved per axis in row_stats
  T z_max, softmax, joint;

  C10_HOST_DEVICE void store(T* out) const {
    out[0] = z_max;
    out[1] = softmax;
    out[2] = joint;
  }
  C10_HOST_DEVICE static LogNormalisers load(const T* in) { return {in[0], in[1], in[2]}; }
  // Axis log-likelihood s_a = log sum_i p_i t_i = joint - softmax - log s'.
  C10_HOST_DEVICE T log_likelihood(T sigma) const { return joint - softmax - std::log(sigma); }
};

// row_stats holds the x then the y axis' LogNormalisers of every (instance, keypoint) row.
constexpr int kRowStats = 2 * LogNormalisers<float>::kCount;

}  // namespace mlecc
}  // namespace fastops
