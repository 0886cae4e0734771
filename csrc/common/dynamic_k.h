// What the dynamic-k assigners (simota_assign, dynamic_soft_label_assign) share on host and
// device: the libm-rounded math of their costs, the box IoU and box test, and the rules of the
// dynamic-k matching itself (dynamic_k from the top-k indicators, ranking, NaN, conflicts).
//
// Every formula mirrors the float32 operation order of the stock code (mmdet 3.3.0 bbox_overlaps,
// SimOTAAssigner, DynamicSoftLabelAssigner; mmpose 1.3.2 SimOTAAssigner): arithmetic goes through
// common/rounded_math.h (no FMA contraction), and on the device the transcendentals go through
// double so that they round like the host's libm.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/rounded_math.h"

#ifdef __CUDACC__
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif

// Value errors of num_gts and gt_labels (op name first), shared by the CPU checks and the CUDA
// kernel asserts (printf formats).
#define FASTOPS_NUM_GTS_MSG "%s: num_gts[%lld] = %lld is outside [0, G = %lld] (G: the gt padding)"
#define FASTOPS_GT_LABEL_MSG "%s: gt_labels[%lld, %lld] = %lld of a real gt is outside [0, C = %lld)"

namespace fastops {
namespace dynamic_k {

constexpr float kLogEps = 1e-7f;    // stock EPS in -log(x + EPS)
constexpr float kUnionEps = 1e-6f;  // bbox_overlaps: union = max(union, 1e-6)

FASTOPS_HD float exp_f(float a) {
#ifdef __CUDA_ARCH__
  return static_cast<float>(::exp(static_cast<double>(a)));
#else
  return std::exp(a);
#endif
}
FASTOPS_HD float log_f(float a) {
#ifdef __CUDA_ARCH__
  return static_cast<float>(::log(static_cast<double>(a)));
#else
  return std::log(a);
#endif
}
FASTOPS_HD float log1p_f(float a) {
#ifdef __CUDA_ARCH__
  return static_cast<float>(::log1p(static_cast<double>(a)));
#else
  return std::log1p(a);
#endif
}
// pow through double on both sides: the stock CPU code takes Sleef's or libm's powf by position in
// the tensor, so no float pow matches it everywhere; the double result rounds the same on host and
// device.
FASTOPS_HD float pow_f(float base, float exponent) {
  return static_cast<float>(::pow(static_cast<double>(base), static_cast<double>(exponent)));
}
// torch.maximum / torch.minimum / clamp: NaN in either argument gives NaN (fmaxf/fminf would drop
// it, so that a NaN box got a finite overlap over the 1e-6 union floor: a huge IoU).
FASTOPS_HD float max_f(float a, float b) { return (a > b || a != a) ? a : b; }
FASTOPS_HD float min_f(float a, float b) { return (a < b || a != a) ? a : b; }

FASTOPS_HD float neg_log_eps(float x) { return -log_f(add_rn(x, kLogEps)); }

// Stock strict inequalities: prior centre (x, y) strictly inside the gt box. Branch-free (& on
// the comparisons), so that loops over priors vectorise.
FASTOPS_HD bool centre_in_box(float x, float y, const float* box) {
  return (sub_rn(x, box[0]) > 0) & (sub_rn(y, box[1]) > 0) & (sub_rn(box[2], x) > 0) & (sub_rn(box[3], y) > 0);
}

// bbox_overlaps(mode='iou') of two xyxy boxes: overlap / max(area1 + area2 - overlap, 1e-6).
FASTOPS_HD float box_iou(const float* a, const float* b) {
  float area1 = mul_rn(sub_rn(a[2], a[0]), sub_rn(a[3], a[1]));
  float area2 = mul_rn(sub_rn(b[2], b[0]), sub_rn(b[3], b[1]));
  float w = max_f(sub_rn(min_f(a[2], b[2]), max_f(a[0], b[0])), 0.f);
  float h = max_f(sub_rn(min_f(a[3], b[3]), max_f(a[1], b[1])), 0.f);
  float overlap = mul_rn(w, h);
  float union_area = max_f(sub_rn(add_rn(area1, area2), overlap), kUnionEps);
  return div_rn(overlap, union_area);
}

// max(1, trunc(sum)) as the stock clamp(sum.int(), min=1); NaN or negative sums give 1.
// The float-to-int cast saturates (+inf from an infinite indicator would be undefined behaviour);
// callers cap k at the number of valid priors.
FASTOPS_HD int64_t dynamic_k_of_sum(float sum) {
  constexpr float kCap = 4611686018427387904.f;  // 2^62
  return sum >= 2.f ? (sum < kCap ? static_cast<int64_t>(sum) : static_cast<int64_t>(kCap)) : 1;
}

// Non-finite values, one rule in every kernel and reference: a NaN cost or indicator is never
// picked (neither among a gt's top-k candidates, where it does not count toward dynamic_k, nor among
// its dynamic_k cheapest priors, nor as the winner of a conflict); ±inf order as numbers.
FASTOPS_HD bool is_nan(float x) { return x != x; }

// Order of the per-gt top-k scans: ascending key, then ascending index (ties to the lower prior).
FASTOPS_HD bool ranks_before(float key, int64_t idx, float other_key, int64_t other_idx) {
  return key < other_key || (key == other_key && idx < other_idx);
}

// Conflict argmin over the gts of one prior: whether `cost` beats the best so far (first index on
// ties, as torch.min; NaN never wins).
FASTOPS_HD bool beats_best_cost(float cost, float best_cost, bool have_best) {
  return !is_nan(cost) && (!have_best || cost < best_cost);
}

}  // namespace dynamic_k
}  // namespace fastops
