// Pair math of the dynamic soft-label assigner, shared by the CPU and CUDA kernels: the stock
// mmdet 3.3.0 DynamicSoftLabelAssigner cost, in its float32 operation order,
//   cost = soft_cls_cost + -log(IoU + 1e-7) * iou_weight + 10 ** (distance / stride - radius).
// soft_cls_cost sums over classes BCE-with-logits(x, t) * |t - sigmoid(x)|^2 with t = one_hot *
// IoU; only the gt's class has t != 0, so it is the prior's sum of target-0 terms (in double, once
// per prior) corrected at the label.
#pragma once

#include "common/dynamic_k.h"

namespace fastops {
namespace soft_label {

using dynamic_k::exp_f;
using dynamic_k::log1p_f;
using dynamic_k::min_f;

constexpr float kUnmatchedOverlap = -100000000.f;  // stock max_overlaps of unmatched priors: -INF

// Scalar settings of one call.
struct Params {
  float soft_center_radius;
  int64_t topk;
  float iou_weight;
  int64_t P, G, C;
};

// Raw pointers of one image (batch offsets applied); gt_centers and cls_neg_sum are derived buffers
// (the CPU kernel fills cls_neg_sum lazily, and passes it to pair_cost itself).
struct ImageData {
  const float* priors;       // [P,4] x, y, stride_x, stride_y
  const float* boxes;        // [P,4] xyxy
  const float* scores;       // [P,C] logits
  const float* gt_boxes;     // [G,4]
  const int64_t* gt_labels;  // [G]
  const float* gt_centers;   // [G,2]
  double* cls_neg_sum;       // [P] sum over classes of the target-0 soft-label BCE
  int64_t num_gt;
};

// Pointers of image b given those of image 0 (priors are shared by the batch).
FASTOPS_HD ImageData image_at(const ImageData& base, const Params& prm, int64_t b, int64_t num_gt) {
  ImageData img = base;
  img.boxes += b * prm.P * 4;
  img.scores += b * prm.P * prm.C;
  img.gt_boxes += b * prm.G * 4;
  img.gt_labels += b * prm.G;
  img.gt_centers += b * prm.G * 2;
  img.cls_neg_sum += b * prm.P;
  img.num_gt = num_gt;
  return img;
}

// A prior is valid (kept by the stock code) when its centre lies strictly inside some gt box.
FASTOPS_HD bool prior_is_valid(const ImageData& img, int64_t p) {
  const float* prior = img.priors + p * 4;
  for (int64_t g = 0; g < img.num_gt; ++g) {
    if (dynamic_k::centre_in_box(prior[0], prior[1], img.gt_boxes + g * 4)) return true;
  }
  return false;
}

// torch's CPU kernels: log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), sigmoid(x) = 1 / (1 + exp(-x)).
struct LogitTerms {
  float log_sigmoid, sigmoid;
};
FASTOPS_HD LogitTerms logit_terms(float x) {
  return {sub_rn(min_f(x, 0.f), log1p_f(exp_f(-fabsf(x)))), div_rn(1.f, add_rn(1.f, exp_f(-x)))};
}

// BCE-with-logits(x, t) * |t - sigmoid(x)|^2, as torch: ((1 - t) * x - log_sigmoid(x)) * d * d.
FASTOPS_HD float soft_label_bce(float x, float t, const LogitTerms& terms) {
  const float d = fabsf(sub_rn(t, terms.sigmoid));
  return mul_rn(sub_rn(mul_rn(sub_rn(1.f, t), x), terms.log_sigmoid), mul_rn(d, d));
}

FASTOPS_HD double class_neg_sum(const ImageData& img, const Params& prm, int64_t p) {
  double total = 0.0;
  for (int64_t c = 0; c < prm.C; ++c) {
    const float x = img.scores[p * prm.C + c];
    total += static_cast<double>(soft_label_bce(x, 0.f, logit_terms(x)));
  }
  return total;
}

// The class cost of gt g given the prior's class_neg_sum: its label's term moves from t = 0 to t = IoU.
FASTOPS_HD float pair_cls_cost(const ImageData& img, const Params& prm, int64_t p, int64_t g, float iou,
                               double neg_sum) {
  const float x = img.scores[p * prm.C + img.gt_labels[g]];
  const LogitTerms terms = logit_terms(x);
  return static_cast<float>(neg_sum - static_cast<double>(soft_label_bce(x, 0.f, terms)) +
                            static_cast<double>(soft_label_bce(x, iou, terms)));
}

// 10 ** (|prior centre - gt centre| / stride_x - soft_center_radius).
FASTOPS_HD float center_cost(const ImageData& img, const Params& prm, int64_t p, int64_t g) {
  const float* prior = img.priors + p * 4;
  const float dx = sub_rn(prior[0], img.gt_centers[2 * g]), dy = sub_rn(prior[1], img.gt_centers[2 * g + 1]);
  const float distance = div_rn(sqrt_rn(add_rn(mul_rn(dx, dx), mul_rn(dy, dy))), prior[2]);
  return dynamic_k::pow_f(10.f, sub_rn(distance, prm.soft_center_radius));
}

FASTOPS_HD float pair_iou(const ImageData& img, int64_t p, int64_t g) {
  return dynamic_k::box_iou(img.boxes + p * 4, img.gt_boxes + g * 4);
}

FASTOPS_HD float pair_cost(const ImageData& img, const Params& prm, int64_t p, int64_t g, float iou,
                           double neg_sum) {
  const float iou_cost = mul_rn(dynamic_k::neg_log_eps(iou), prm.iou_weight);
  return add_rn(add_rn(pair_cls_cost(img, prm, p, g, iou, neg_sum), iou_cost), center_cost(img, prm, p, g));
}

}  // namespace soft_label
}  // namespace fastops
