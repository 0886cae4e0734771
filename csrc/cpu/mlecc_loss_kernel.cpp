// CPU kernels of the log-space MLECC loss: one task per instance, rows of K keypoints.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <type_traits>
#include <limits>
#include <vector>

#include "common/mlecc_args.h"
#include "common/mlecc_math.h"
#include "cpu/cephes_exp.h"
#include "ops/mlecc_loss.h"

namespace fastops {
namespace {

using namespace mlecc;

constexpr int64_t kInstancesPerTask = 4;

// ---------------------------------------------------------------- AVX2 + FMA helpers
// Float rows take these paths when the CPU has AVX2 and FMA (checked at run time, so a baseline
// FASTOPS_CPU_ARCH=x86-64 build keeps them too). Double rows (gradcheck) stay scalar.
#if FASTOPS_HAS_AVX2
using cephes::exp256;

FASTOPS_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

FASTOPS_AVX2 inline float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes [i, min(i + 8, count)) of a row.
FASTOPS_AVX2 inline __m256i lane_mask(int64_t i, int64_t count) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(count - i, 8))), lanes);
}
#endif  // FASTOPS_HAS_AVX2

// ---------------------------------------------------------------- from probabilities

// sum_i a_i b_i accumulated in double (a product of two fp32 values lies in [1e-90, 1.2e77], far
// inside double's range, so it never underflows or overflows), and whether every a_i and b_i
// is finite and non-negative.
struct CheckedDot {
  double sum;
  bool valid;
};

template <typename T>
CheckedDot checked_dot(const T* a, const T* b, int64_t count) {
  double sum = 0.0;
  bool valid = true;
  for (int64_t i = 0; i < count; ++i) {
    valid &= a[i] >= T(0) && a[i] <= std::numeric_limits<T>::max() && b[i] >= T(0) &&
             b[i] <= std::numeric_limits<T>::max();
    sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  }
  return {sum, valid};
}

// d loss / d p_i = scale * t_i and d loss / d t_i = scale * p_i for one axis row.
template <typename T>
void write_probs_grads(const T* p, const T* t, T* grad_p, T* grad_t, int64_t count, double scale) {
  for (int64_t i = 0; i < count; ++i) {
    grad_p[i] = static_cast<T>(scale * static_cast<double>(t[i]));
    grad_t[i] = static_cast<T>(scale * static_cast<double>(p[i]));
  }
}

#if FASTOPS_HAS_AVX2
FASTOPS_AVX2 inline __m256d widen_lo(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
FASTOPS_AVX2 inline __m256d widen_hi(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

FASTOPS_AVX2 inline __m256 narrow(__m256d lo, __m256d hi) {
  return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

FASTOPS_AVX2 inline __m256 nonnegative_finite(__m256 v) {
  return _mm256_and_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ),
                       _mm256_cmp_ps(v, _mm256_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ));
}

FASTOPS_AVX2 CheckedDot checked_dot_avx2(const float* a, const float* b, int64_t count) {
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (int64_t i = 0; i < count; i += 8) {
    const __m256i mask = lane_mask(i, count);  // masked lanes load 0: valid, no contribution
    const __m256 va = _mm256_maskload_ps(a + i, mask), vb = _mm256_maskload_ps(b + i, mask);
    ok = _mm256_and_ps(ok, _mm256_and_ps(nonnegative_finite(va), nonnegative_finite(vb)));
    sum_lo = _mm256_fmadd_pd(widen_lo(va), widen_lo(vb), sum_lo);
    sum_hi = _mm256_fmadd_pd(widen_hi(va), widen_hi(vb), sum_hi);
  }
  const __m256d sum = _mm256_add_pd(sum_lo, sum_hi);
  const __m128d half = _mm_add_pd(_mm256_castpd256_pd128(sum), _mm256_extractf128_pd(sum, 1));
  return {_mm_cvtsd_f64(_mm_add_sd(half, _mm_unpackhi_pd(half, half))), _mm256_movemask_ps(ok) == 0xff};
}

FASTOPS_AVX2 void write_probs_grads_avx2(const float* p, const float* t, float* grad_p, float* grad_t,
                                         int64_t count, double scale) {
  const __m256d s = _mm256_set1_pd(scale);
  for (int64_t i = 0; i < count; i += 8) {
    const __m256i mask = lane_mask(i, count);
    const __m256 vp = _mm256_maskload_ps(p + i, mask), vt = _mm256_maskload_ps(t + i, mask);
    _mm256_maskstore_ps(grad_p + i, mask, narrow(_mm256_mul_pd(s, widen_lo(vt)), _mm256_mul_pd(s, widen_hi(vt))));
    _mm256_maskstore_ps(grad_t + i, mask, narrow(_mm256_mul_pd(s, widen_lo(vp)), _mm256_mul_pd(s, widen_hi(vp))));
  }
}
#endif  // FASTOPS_HAS_AVX2

template <typename T>
CheckedDot checked_dot_dispatch(const T* a, const T* b, int64_t count) {
#if FASTOPS_HAS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return checked_dot_avx2(a, b, count);
  }
#endif
  return checked_dot(a, b, count);
}

template <typename T>
void write_probs_grads_dispatch(const T* p, const T* t, T* grad_p, T* grad_t, int64_t count, double scale) {
#if FASTOPS_HAS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return write_probs_grads_avx2(p, t, grad_p, grad_t, count, scale);
  }
#endif
  write_probs_grads(p, t, grad_p, grad_t, count, scale);
}

// log S_x, log S_y of one row, and whether its inputs are valid.
struct RowLogSums {
  double x, y;
  bool valid;
};

template <typename T>
RowLogSums row_log_sums(const ProbsArgs<T>& in, int64_t row) {
  const auto dx = checked_dot_dispatch(in.pred_x + row * in.wx, in.target_x + row * in.wx, in.wx);
  const auto dy = checked_dot_dispatch(in.pred_y + row * in.wy, in.target_y + row * in.wy, in.wy);
  return {std::log(dx.sum), std::log(dy.sum), dx.valid && dy.valid && is_finite(weight_at(in.weight, row))};
}

std::tuple<at::Tensor, at::Tensor> mlecc_from_probs_cpu(const at::Tensor& pred_x_in, const at::Tensor& pred_y_in,
                                                        const at::Tensor& target_x_in,
                                                        const at::Tensor& target_y_in,
                                                        const std::optional<at::Tensor>& weight_in, double floor) {
  check_mlecc_from_probs_args(pred_x_in, pred_y_in, target_x_in, target_y_in, weight_in, floor);
  const ContiguousInputs inputs({pred_x_in, pred_y_in, target_x_in, target_y_in}, weight_in);
  const int64_t rows = pred_x_in.size(0) * pred_x_in.size(1);
  auto loss = at::empty({pred_x_in.size(0), pred_x_in.size(1)}, pred_x_in.options());
  int64_t num_invalid = 0;
  AT_DISPATCH_FLOATING_TYPES(pred_x_in.scalar_type(), "mlecc_loss_from_probs_cpu", [&] {
    const auto in = inputs.probs_args<scalar_t>();
    const double log_floor = log_floor_of<double>(floor);
    scalar_t* out = loss.data_ptr<scalar_t>();
    num_invalid = at::parallel_reduce(
        0, rows, 64, int64_t(0),
        [&](int64_t begin, int64_t end, int64_t count) {
          for (int64_t row = begin; row < end; ++row) {
            const auto sums = row_log_sums(in, row);
            if (!sums.valid) {
              out[row] = scalar_t(0);
              ++count;
              continue;
            }
            const double s = sums.x + sums.y;
            out[row] = static_cast<scalar_t>(weight_at(in.weight, row) * nll_with_floor(s, log_floor));
          }
          return count;
        },
        std::plus<int64_t>());
  });
  return {loss, at::scalar_tensor(num_invalid, pred_x_in.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlecc_from_probs_backward_cpu(
    const at::Tensor& grad_loss_in, const at::Tensor& pred_x_in, const at::Tensor& pred_y_in,
    const at::Tensor& target_x_in, const at::Tensor& target_y_in, const std::optional<at::Tensor>& weight_in,
    double floor) {
  check_mlecc_from_probs_args(pred_x_in, pred_y_in, target_x_in, target_y_in, weight_in, floor);
  check_mlecc_grad_arg(grad_loss_in, pred_x_in);
  const auto grad_loss = grad_loss_in.contiguous();
  const ContiguousInputs inputs({pred_x_in, pred_y_in, target_x_in, target_y_in}, weight_in);
  const auto& t = inputs.tensors;
  auto grad_px = at::empty_like(t[0]), grad_py = at::empty_like(t[1]);
  auto grad_tx = at::empty_like(t[2]), grad_ty = at::empty_like(t[3]);
  const int64_t rows = pred_x_in.size(0) * pred_x_in.size(1);
  AT_DISPATCH_FLOATING_TYPES(pred_x_in.scalar_type(), "mlecc_loss_from_probs_backward_cpu", [&] {
    const auto in = inputs.probs_args<scalar_t>();
    const double log_floor = log_floor_of<double>(floor);
    const scalar_t* go = grad_loss.data_ptr<scalar_t>();
    scalar_t* gpx = grad_px.data_ptr<scalar_t>();
    scalar_t* gpy = grad_py.data_ptr<scalar_t>();
    scalar_t* gtx = grad_tx.data_ptr<scalar_t>();
    scalar_t* gty = grad_ty.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t ox = row * in.wx, oy = row * in.wy;
        const auto sums = row_log_sums(in, row);
        if (!sums.valid) {  // 0 loss, so 0 gradient (scale 0 times an inf input would be NaN)
          for (scalar_t* grad : {gpx + ox, gtx + ox}) std::fill_n(grad, in.wx, scalar_t(0));
          for (scalar_t* grad : {gpy + oy, gty + oy}) std::fill_n(grad, in.wy, scalar_t(0));
          continue;
        }
        // d/dS_x of -log(S_x S_y + floor) = -S_y / (S_x S_y + floor) = -exp(log S_y - lae).
        const double lae = log_add_exp(sums.x + sums.y, log_floor);
        const double upstream = -static_cast<double>(go[row]) * weight_at(in.weight, row);
        const double scale_x = upstream * std::exp(sums.y - lae);
        const double scale_y = upstream * std::exp(sums.x - lae);
        write_probs_grads_dispatch(in.pred_x + ox, in.target_x + ox, gpx + ox, gtx + ox, in.wx, scale_x);
        write_probs_grads_dispatch(in.pred_y + oy, in.target_y + oy, gpy + oy, gty + oy, in.wy, scale_y);
      }
    });
  });
  return {grad_px, grad_py, grad_tx, grad_ty};
}

// ---------------------------------------------------------------- from logits

// One keypoint's 1-D heatmap logits on one axis with its Laplace target.
template <typename T>
struct AxisRow {
  const T* logits;
  const T* lin;  // base bins linspace(-0.5, 0.5, W)
  int64_t bins;
  LaplaceAxis<T> target;
};

template <typename T>
struct AxisForward {
  LogNormalisers<T> lse;
  bool finite;  // every logit of the row is finite (else the row is invalid)
};

// Two passes: the largest clamped logit z_max (and a shift close to max_i d_i + e_i, so the
// joint log-sum-exp neither over- nor underflows), then the two sums.
template <typename T>
AxisForward<T> axis_forward(const AxisRow<T>& row, T* exponents) {
  T z_max = -std::numeric_limits<T>::infinity();
  T joint_max = z_max;
  bool finite = true;
  for (int64_t i = 0; i < row.bins; ++i) {
    finite &= std::isfinite(row.logits[i]);
    const T z = clamp_logit(row.logits[i]);
    const T e = row.target.exponent(row.lin[i]);
    exponents[i] = e;
    z_max = std::max(z_max, z);
    joint_max = std::max(joint_max, z + e);
  }
  const T shift = joint_max - z_max;
  T sum_softmax = 0, sum_joint = 0;
  for (int64_t i = 0; i < row.bins; ++i) {
    const T d = clamp_logit(row.logits[i]) - z_max;
    sum_softmax += std::exp(d);
    sum_joint += std::exp(d + exponents[i] - shift);
  }
  return {{z_max, std::log(sum_softmax + static_cast<T>(kSoftmaxEps)), shift + std::log(sum_joint)}, finite};
}

// d s_a / d(sigma', center, scale) of one axis.
template <typename T>
struct AxisGrads {
  T sigma, center, scale;
};

// Writes d loss / d logits = grad_s * (r_i - p_i) (see logit_grad), with
// p the softmax and r_i = p_i t_i / sum_j p_j t_j the posterior over bins, and returns the
// derivatives of s_a through the Laplace exponents e_i = -q_i / 2, q_i = |g - b_i| / a' / s':
//   d s_a / d s' = sum_i r_i q_i / (2 s') - 1 / s',  d s_a / d b_i = r_i sign(g - b_i) / (2 a' s').
template <typename T>
AxisGrads<T> axis_backward(const AxisRow<T>& row, const LogNormalisers<T>& lse, T grad_s, T* grad_logits) {
  T sum_rq = 0, sum_rs = 0, sum_rls = 0;
  const auto& tgt = row.target;
  for (int64_t i = 0; i < row.bins; ++i) {
    const T raw = row.logits[i];
    const T d = clamp_logit(raw) - lse.z_max;
    const T diff = tgt.coord - tgt.bin(row.lin[i]);
    const T q = tgt.distance(row.lin[i]);
    const T r = std::exp(d - q * T(0.5) - lse.joint);
    const T p = std::exp(d - lse.softmax);
    grad_logits[i] = logit_grad(raw, grad_s, r, p);
    const T signed_r = diff > 0 ? r : (diff < 0 ? -r : T(0));
    sum_rq += r * q;
    sum_rs += signed_r;
    sum_rls += signed_r * row.lin[i];
  }
  const T half_inv_sigma = T(0.5) / tgt.sigma;
  const T bin_scale = half_inv_sigma / tgt.area;
  return {sum_rq * half_inv_sigma - T(1) / tgt.sigma, sum_rs * bin_scale, sum_rls * bin_scale};
}

#if FASTOPS_HAS_AVX2
// The Laplace target's vector constants of one axis.
struct LaplaceAxis256 {
  __m256 coord, center, scale, area, sigma;
  FASTOPS_AVX2 explicit LaplaceAxis256(const LaplaceAxis<float>& t)
      : coord(_mm256_set1_ps(t.coord)), center(_mm256_set1_ps(t.center)), scale(_mm256_set1_ps(t.scale)),
        area(_mm256_set1_ps(t.area)), sigma(_mm256_set1_ps(t.sigma)) {}
  FASTOPS_AVX2 __m256 diff(__m256 lin) const {
    __m256 product = _mm256_mul_ps(lin, scale);
    __asm__("" : "+x"(product));  // keeps GCC from contracting lin * scale + center into an FMA
    return _mm256_sub_ps(coord, _mm256_add_ps(product, center));
  }
  FASTOPS_AVX2 __m256 distance(__m256 diff) const {
    const __m256 abs_diff = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), diff);
    return _mm256_div_ps(_mm256_div_ps(abs_diff, area), sigma);
  }
};

FASTOPS_AVX2 inline __m256 clamp_logit256(__m256 z) {
  const float lim = static_cast<float>(kLogitClamp);
  return _mm256_max_ps(_mm256_min_ps(z, _mm256_set1_ps(lim)), _mm256_set1_ps(-lim));
}

FASTOPS_AVX2 AxisForward<float> axis_forward_avx2(const AxisRow<float>& row, float* exponents) {
  const LaplaceAxis256 tgt(row.target);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 z_max = neg_inf, joint_max = neg_inf;
  __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (int64_t i = 0; i < row.bins; i += 8) {
    const __m256i mask = lane_mask(i, row.bins);
    const __m256 valid = _mm256_castsi256_ps(mask);
    const __m256 raw = _mm256_maskload_ps(row.logits + i, mask);
    finite = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_sub_ps(raw, raw), _mm256_setzero_ps(), _CMP_EQ_OQ));
    const __m256 z = clamp_logit256(raw);
    const __m256 e = _mm256_mul_ps(tgt.distance(tgt.diff(_mm256_maskload_ps(row.lin + i, mask))), _mm256_set1_ps(-0.5f));
    _mm256_maskstore_ps(exponents + i, mask, e);
    z_max = _mm256_max_ps(z_max, _mm256_blendv_ps(neg_inf, z, valid));
    joint_max = _mm256_max_ps(joint_max, _mm256_blendv_ps(neg_inf, _mm256_add_ps(z, e), valid));
  }
  const float z_max_s = hmax256(z_max);
  const float shift_s = hmax256(joint_max) - z_max_s;
  const __m256 zm = _mm256_set1_ps(z_max_s), shift = _mm256_set1_ps(shift_s);
  __m256 sum_softmax = _mm256_setzero_ps(), sum_joint = _mm256_setzero_ps();
  for (int64_t i = 0; i < row.bins; i += 8) {
    const __m256i mask = lane_mask(i, row.bins);
    const __m256 valid = _mm256_castsi256_ps(mask);
    const __m256 d = _mm256_sub_ps(clamp_logit256(_mm256_maskload_ps(row.logits + i, mask)), zm);
    const __m256 e = _mm256_maskload_ps(exponents + i, mask);
    sum_softmax = _mm256_add_ps(sum_softmax, _mm256_and_ps(valid, exp256(d)));
    sum_joint = _mm256_add_ps(sum_joint, _mm256_and_ps(valid, exp256(_mm256_sub_ps(_mm256_add_ps(d, e), shift))));
  }
  return {{z_max_s, std::log(hsum256(sum_softmax) + static_cast<float>(kSoftmaxEps)),
           shift_s + std::log(hsum256(sum_joint))},
          _mm256_movemask_ps(finite) == 0xff};
}

FASTOPS_AVX2 AxisGrads<float> axis_backward_avx2(const AxisRow<float>& row, const LogNormalisers<float>& lse,
                                                 float grad_s, float* grad_logits) {
  const LaplaceAxis256 tgt(row.target);
  const float lim = static_cast<float>(kLogitClamp);
  const __m256 z_max = _mm256_set1_ps(lse.z_max);
  const __m256 lse_joint = _mm256_set1_ps(lse.joint), lse_softmax = _mm256_set1_ps(lse.softmax);
  const __m256 grad = _mm256_set1_ps(grad_s), sign_bit = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
  const __m256 smallest_normal = _mm256_set1_ps(std::numeric_limits<float>::min());
  __m256 sum_rq = zero, sum_rs = zero, sum_rls = zero;
  for (int64_t i = 0; i < row.bins; i += 8) {
    const __m256i mask = lane_mask(i, row.bins);
    const __m256 valid = _mm256_castsi256_ps(mask);
    const __m256 raw = _mm256_maskload_ps(row.logits + i, mask);
    const __m256 d = _mm256_sub_ps(clamp_logit256(raw), z_max);
    const __m256 lin = _mm256_maskload_ps(row.lin + i, mask);
    const __m256 diff = tgt.diff(lin);
    const __m256 q = tgt.distance(diff);
    const __m256 e = _mm256_mul_ps(q, _mm256_set1_ps(-0.5f));
    const __m256 r = _mm256_and_ps(valid, exp256(_mm256_sub_ps(_mm256_add_ps(d, e), lse_joint)));
    const __m256 p = exp256(_mm256_sub_ps(d, lse_softmax));
    const __m256 unclamped = _mm256_and_ps(_mm256_cmp_ps(raw, _mm256_set1_ps(-lim), _CMP_GE_OQ),
                                           _mm256_cmp_ps(raw, _mm256_set1_ps(lim), _CMP_LE_OQ));
    const __m256 grad_i = _mm256_mul_ps(grad, _mm256_sub_ps(r, p));
    const __m256 not_subnormal = _mm256_cmp_ps(_mm256_andnot_ps(sign_bit, grad_i), smallest_normal, _CMP_NLT_UQ);
    _mm256_maskstore_ps(grad_logits + i, mask, _mm256_and_ps(_mm256_and_ps(unclamped, not_subnormal), grad_i));
    // r * sign(diff): r >= 0 takes diff's sign bit, and is zeroed where diff == 0.
    const __m256 signed_r = _mm256_and_ps(_mm256_cmp_ps(diff, zero, _CMP_NEQ_OQ),
                                          _mm256_or_ps(r, _mm256_and_ps(diff, sign_bit)));
    sum_rq = _mm256_fmadd_ps(r, q, sum_rq);
    sum_rs = _mm256_add_ps(sum_rs, signed_r);
    sum_rls = _mm256_fmadd_ps(signed_r, lin, sum_rls);
  }
  const float half_inv_sigma = 0.5f / row.target.sigma;
  const float bin_scale = half_inv_sigma / row.target.area;
  return {hsum256(sum_rq) * half_inv_sigma - 1.0f / row.target.sigma, hsum256(sum_rs) * bin_scale,
          hsum256(sum_rls) * bin_scale};
}
#endif  // FASTOPS_HAS_AVX2

// Float rows take the AVX2 path where the CPU has it; double rows (gradcheck) stay scalar.
template <typename T>
AxisForward<T> axis_forward_dispatch(const AxisRow<T>& row, T* exponents) {
#if FASTOPS_HAS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return axis_forward_avx2(row, exponents);
  }
#endif
  return axis_forward(row, exponents);
}

template <typename T>
AxisGrads<T> axis_backward_dispatch(const AxisRow<T>& row, const LogNormalisers<T>& lse, T grad_s, T* grad_logits) {
#if FASTOPS_HAS_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return axis_backward_avx2(row, lse, grad_s, grad_logits);
  }
#endif
  return axis_backward(row, lse, grad_s, grad_logits);
}

template <typename T>
AxisRow<T> axis_row(const LogitsArgs<T>& in, int64_t row, int dim) {
  return {in.logits(row, dim), in.bins(dim), in.num_bins(dim), in.target(row, dim)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlecc_from_logits_cpu(
    const at::Tensor& logits_x, const at::Tensor& logits_y, const at::Tensor& keypoints, const at::Tensor& bbox_cs,
    const at::Tensor& sigmas, const at::Tensor& areas, const std::optional<at::Tensor>& weight_in,
    const at::Tensor& x_bins, const at::Tensor& y_bins, double floor) {
  check_mlecc_from_logits_args(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight_in, x_bins, y_bins,
                               floor);
  const ContiguousInputs inputs({logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, x_bins, y_bins}, weight_in);
  const int64_t n_inst = logits_x.size(0), k = logits_x.size(1);
  auto loss = at::empty({n_inst, k}, logits_x.options());
  auto stats = at::empty({n_inst, k, kRowStats}, logits_x.options());
  int64_t num_invalid = 0;
  AT_DISPATCH_FLOATING_TYPES(logits_x.scalar_type(), "mlecc_loss_from_logits_cpu", [&] {
    const auto in = inputs.logits_args<scalar_t>();
    const scalar_t log_floor = log_floor_of<scalar_t>(floor);
    scalar_t* out = loss.data_ptr<scalar_t>();
    scalar_t* stat = stats.data_ptr<scalar_t>();
    num_invalid = at::parallel_reduce(
        0, n_inst, kInstancesPerTask, int64_t(0),
        [&](int64_t begin, int64_t end, int64_t count) {
          std::vector<scalar_t> exponents(std::max(in.wx, in.wy));
          for (int64_t n = begin; n < end; ++n) {
            for (int64_t kk = 0; kk < k; ++kk) {
              const int64_t row = n * k + kk;
              const auto ax = axis_row(in, row, 0), ay = axis_row(in, row, 1);
              const bool scalars_ok = in.scalars_valid(row);
              const auto fx = axis_forward_dispatch(ax, exponents.data());
              const auto fy = axis_forward_dispatch(ay, exponents.data());
              if (!(scalars_ok && fx.finite && fy.finite)) {
                out[row] = scalar_t(0);
                std::fill_n(stat + row * kRowStats, kRowStats, std::numeric_limits<scalar_t>::quiet_NaN());
                ++count;
                continue;
              }
              const auto &lx = fx.lse, &ly = fy.lse;
              const scalar_t s = lx.log_likelihood(ax.target.sigma) + ly.log_likelihood(ay.target.sigma);
              out[row] = weight_at(in.weight, row) * nll_with_floor(s, log_floor);
              lx.store(stat + row * kRowStats);
              ly.store(stat + row * kRowStats + LogNormalisers<scalar_t>::kCount);
            }
          }
          return count;
        },
        std::plus<int64_t>());
  });
  return {loss, at::scalar_tensor(num_invalid, logits_x.options().dtype(at::kLong)), stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlecc_from_logits_backward_cpu(
    const at::Tensor& grad_loss_in, const at::Tensor& logits_x, const at::Tensor& logits_y,
    const at::Tensor& keypoints, const at::Tensor& bbox_cs, const at::Tensor& sigmas, const at::Tensor& areas,
    const std::optional<at::Tensor>& weight_in, const at::Tensor& x_bins, const at::Tensor& y_bins,
    const at::Tensor& row_stats_in, double floor) {
  check_mlecc_from_logits_args(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight_in, x_bins, y_bins,
                               floor);
  check_mlecc_grad_arg(grad_loss_in, logits_x);
  check_mlecc_row_stats_arg(row_stats_in, logits_x);
  const ContiguousInputs inputs({logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, x_bins, y_bins}, weight_in);
  const auto& t = inputs.tensors;
  const auto grad_loss = grad_loss_in.contiguous(), row_stats = row_stats_in.contiguous();
  const int64_t n_inst = logits_x.size(0), k = logits_x.size(1);
  auto grad_lx = at::empty_like(t[0]), grad_ly = at::empty_like(t[1]);
  auto grad_sigmas = at::empty_like(t[4]), grad_bbox = at::empty_like(t[3]);
  AT_DISPATCH_FLOATING_TYPES(logits_x.scalar_type(), "mlecc_loss_from_logits_backward_cpu", [&] {
    const auto in = inputs.logits_args<scalar_t>();
    const scalar_t log_floor = log_floor_of<scalar_t>(floor);
    const scalar_t* go = grad_loss.data_ptr<scalar_t>();
    const scalar_t* stat = row_stats.data_ptr<scalar_t>();
    scalar_t* glx = grad_lx.data_ptr<scalar_t>();
    scalar_t* gly = grad_ly.data_ptr<scalar_t>();
    scalar_t* gsig = grad_sigmas.data_ptr<scalar_t>();
    scalar_t* gbox = grad_bbox.data_ptr<scalar_t>();
    at::parallel_for(0, n_inst, kInstancesPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        scalar_t box[4] = {0, 0, 0, 0};
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t row = n * k + kk;
          const scalar_t* rs = stat + row * kRowStats;
          if (std::isnan(rs[0])) {  // invalid inputs: counted in the forward, no gradient
            std::fill_n(glx + row * in.wx, in.wx, scalar_t(0));
            std::fill_n(gly + row * in.wy, in.wy, scalar_t(0));
            gsig[row] = 0;
            continue;
          }
          const auto ax = axis_row(in, row, 0), ay = axis_row(in, row, 1);
          const auto lx = LogNormalisers<scalar_t>::load(rs);
          const auto ly = LogNormalisers<scalar_t>::load(rs + LogNormalisers<scalar_t>::kCount);
          const scalar_t s = lx.log_likelihood(ax.target.sigma) + ly.log_likelihood(ay.target.sigma);
          const scalar_t grad_s = go[row] * weight_at(in.weight, row) * nll_with_floor_grad(s, log_floor);
          const auto gx = axis_backward_dispatch(ax, lx, grad_s, glx + row * in.wx);
          const auto gy = axis_backward_dispatch(ay, ly, grad_s, gly + row * in.wy);
          const bool sigma_unclipped = in.sigmas[row] >= static_cast<scalar_t>(kSigmaMin);
          gsig[row] = sigma_unclipped ? grad_s * (gx.sigma + gy.sigma) : scalar_t(0);
          box[0] += grad_s * gx.center;
          box[1] += grad_s * gy.center;
          box[2] += grad_s * gx.scale;
          box[3] += grad_s * gy.scale;
        }
        std::copy_n(box, 4, gbox + n * 4);
      }
    });
  });
  return {grad_lx, grad_ly, grad_sigmas, grad_bbox};
}

}  // namespace
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("mlecc_loss_from_probs", &fastops::mlecc_from_probs_cpu);
  m.impl("mlecc_loss_from_probs_backward", &fastops::mlecc_from_probs_backward_cpu);
  m.impl("mlecc_loss_from_logits", &fastops::mlecc_from_logits_cpu);
  m.impl("mlecc_loss_from_logits_backward", &fastops::mlecc_from_logits_backward_cpu);
}
