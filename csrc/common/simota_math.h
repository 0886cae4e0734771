// Pair math of the SimOTA assigner, shared by the CPU and CUDA kernels. What SimOTA shares with
// the other dynamic-k assigner (libm-rounded math, IoU, the matching rules) is in common/dynamic_k.h.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dynamic_k.h"

namespace fastops {
namespace simota {

constexpr float kInf = 100000.0f;     // stock INF: cost of a prior outside gt box & center
constexpr float kOksEps = 1e-8f;      // PoseOKS clip of sqrt(area) and of the weight sum
constexpr float kBceLogFloor = -100;  // torch binary_cross_entropy clamps its logs at -100

using dynamic_k::exp_f;
using dynamic_k::log1p_f;
using dynamic_k::log_f;
using dynamic_k::max_f;
using dynamic_k::min_f;
using dynamic_k::neg_log_eps;

// Scalar settings of one call.
struct Params {
  float center_radius;
  int64_t candidate_topk;
  float iou_weight, cls_weight, oks_weight, vis_weight;
  bool oks_indicator;    // dynamic_k_indicator == "oks"
  bool keypoint_center;  // use_keypoints_for_center
  bool pose;             // keypoint inputs given: mmpose cost order, else mmdet (YOLOX) order
  int64_t P, G, C, K;

  FASTOPS_HD bool need_oks() const { return pose && (oks_weight > 0 || oks_indicator); }
};

// Raw pointers of one image (batch offsets already applied). Keypoint pointers are null when
// `pose` is false. gt_center / gt_kpt_weight / gt_sqrt_area / cls_neg_sum are derived buffers.
struct ImageData {
  const float* priors;          // [P,4] x, y, stride_x, stride_y
  const float* boxes;           // [P,4] xyxy
  const float* scores;          // [P,C] probabilities
  const float* kpts;            // [P,K,2]
  const float* kpt_vis;         // [P,K] probabilities
  const float* gt_boxes;        // [G,4]
  const int64_t* gt_labels;     // [G]
  const float* gt_kpts;         // [G,K,2]
  const float* gt_vis;          // [G,K]
  const float* gt_areas;        // [G]
  const float* sigmas;          // [K]
  float* gt_center;             // [G,2]
  float* gt_kpt_weight;         // [G,K] visibility / max(sum visibility, eps)
  double* cls_neg_sum;          // [P] sum over classes of the target-0 BCE
  int64_t num_gt;
};

// torch.nn.functional.binary_cross_entropy for one element (same expression as torch's kernel).
FASTOPS_HD float bce(float x, float t) {
  return sub_rn(mul_rn(sub_rn(t, 1.f), max_f(log1p_f(-x), kBceLogFloor)), mul_rn(t, max_f(log_f(x), kBceLogFloor)));
}

// Per-gt quantities: box or keypoint center (stock: visibility-weighted keypoint mean where any
// keypoint is visible) and the normalised OKS weights.
FASTOPS_HD void prepare_gt(const ImageData& img, const Params& prm, int64_t g) {
  const float* box = img.gt_boxes + g * 4;
  float cx = div_rn(add_rn(box[0], box[2]), 2.f);
  float cy = div_rn(add_rn(box[1], box[3]), 2.f);
  if (prm.pose) {
    const float* vis = img.gt_vis + g * prm.K;
    const float* kp = img.gt_kpts + g * prm.K * 2;
    float vis_sum = 0.f, sx = 0.f, sy = 0.f;
    for (int64_t k = 0; k < prm.K; ++k) {
      vis_sum = add_rn(vis_sum, vis[k]);
      sx = add_rn(sx, mul_rn(kp[2 * k], vis[k]));
      sy = add_rn(sy, mul_rn(kp[2 * k + 1], vis[k]));
    }
    if (prm.keypoint_center && vis_sum > 0) {
      cx = div_rn(sx, vis_sum);
      cy = div_rn(sy, vis_sum);
    }
    float weight_norm = max_f(vis_sum, kOksEps);
    for (int64_t k = 0; k < prm.K; ++k) img.gt_kpt_weight[g * prm.K + k] = div_rn(vis[k], weight_norm);
  }
  img.gt_center[2 * g] = cx;
  img.gt_center[2 * g + 1] = cy;
}

// Prior centre (x, y) strictly inside the square of half-size (rx, ry) = center_radius * stride
// around the gt centre (cx, cy).
FASTOPS_HD bool centre_in_region(float x, float y, float rx, float ry, float cx, float cy) {
  return (sub_rn(x, sub_rn(cx, rx)) > 0) & (sub_rn(y, sub_rn(cy, ry)) > 0) & (sub_rn(add_rn(cx, rx), x) > 0) &
         (sub_rn(add_rn(cy, ry), y) > 0);
}

FASTOPS_HD bool in_box(const ImageData& img, int64_t p, int64_t g) {
  const float* pr = img.priors + p * 4;
  return dynamic_k::centre_in_box(pr[0], pr[1], img.gt_boxes + g * 4);
}

FASTOPS_HD bool in_center(const ImageData& img, const Params& prm, int64_t p, int64_t g) {
  const float* pr = img.priors + p * 4;
  return centre_in_region(pr[0], pr[1], mul_rn(prm.center_radius, pr[2]), mul_rn(prm.center_radius, pr[3]),
                          img.gt_center[2 * g], img.gt_center[2 * g + 1]);
}

FASTOPS_HD float pair_iou(const ImageData& img, int64_t p, int64_t g) {
  return dynamic_k::box_iou(img.boxes + p * 4, img.gt_boxes + g * 4);
}

// PoseOKS: sum_k w_k * exp(-(|d_k| / sqrt(area) / (2 sigma_k))^2 / 2), computed per pair.
FASTOPS_HD float pair_oks(const ImageData& img, const Params& prm, int64_t p, int64_t g) {
  const float* pk = img.kpts + p * prm.K * 2;
  const float* gk = img.gt_kpts + g * prm.K * 2;
  const float* w = img.gt_kpt_weight + g * prm.K;
  float sqrt_area = max_f(sqrt_rn(img.gt_areas[g]), kOksEps);
  float oks = 0.f;
  for (int64_t k = 0; k < prm.K; ++k) {
    float dx = sub_rn(pk[2 * k], gk[2 * k]), dy = sub_rn(pk[2 * k + 1], gk[2 * k + 1]);
    if (w[k] == 0.f) {  // exp(.) * 0 adds nothing, unless exp(.) is NaN (0 * NaN = NaN, as torch)
      if (dx != dx || dy != dy) oks = dx + dy;
      continue;
    }
    float dist = div_rn(div_rn(sqrt_rn(add_rn(mul_rn(dx, dx), mul_rn(dy, dy))), sqrt_area), mul_rn(img.sigmas[k], 2.f));
    oks = add_rn(oks, mul_rn(exp_f(div_rn(-mul_rn(dist, dist), 2.f)), w[k]));
  }
  return oks;
}

// Sum over classes of BCE(score, one_hot(label)) = (sum of target-0 terms) - term0(label) + term1(label).
FASTOPS_HD float pair_cls_cost(const ImageData& img, const Params& prm, int64_t p, int64_t g) {
  float s = img.scores[p * prm.C + img.gt_labels[g]];
  double total = img.cls_neg_sum[p] - static_cast<double>(bce(s, 0.f)) + static_cast<double>(bce(s, 1.f));
  return static_cast<float>(total);
}

FASTOPS_HD double class_neg_sum(const ImageData& img, const Params& prm, int64_t p) {
  double total = 0.0;
  for (int64_t c = 0; c < prm.C; ++c) total += static_cast<double>(bce(img.scores[p * prm.C + c], 0.f));
  return total;
}

FASTOPS_HD float pair_vis_cost(const ImageData& img, const Params& prm, int64_t p, int64_t g) {
  const float* pv = img.kpt_vis + p * prm.K;
  const float* gv = img.gt_vis + g * prm.K;
  float cost = 0.f;
  for (int64_t k = 0; k < prm.K; ++k) cost = add_rn(cost, bce(pv[k], gv[k]));
  return cost;
}

// Pointers of image b given the pointers of image 0 (priors and sigmas are shared by the batch).
FASTOPS_HD ImageData image_at(const ImageData& base, const Params& prm, int64_t b, int64_t num_gt) {
  ImageData img = base;
  const int64_t P = prm.P, G = prm.G, K = prm.K;
  img.boxes += b * P * 4;
  img.scores += b * P * prm.C;
  img.gt_boxes += b * G * 4;
  img.gt_labels += b * G;
  img.gt_center += b * G * 2;
  img.cls_neg_sum += b * P;
  if (prm.pose) {
    img.kpts += b * P * K * 2;
    img.kpt_vis += b * P * K;
    img.gt_kpts += b * G * K * 2;
    img.gt_vis += b * G * K;
    img.gt_areas += b * G;
    img.gt_kpt_weight += b * G * K;
  }
  img.num_gt = num_gt;
  return img;
}

// A prior is valid (kept by the stock code) when it lies in some gt box or some gt centre region.
FASTOPS_HD bool prior_is_valid(const ImageData& img, const Params& prm, int64_t p) {
  for (int64_t g = 0; g < img.num_gt; ++g) {
    if (in_box(img, p, g) || in_center(img, prm, p, g)) return true;
  }
  return false;
}

// The IoU/OKS similarities of one pair; oks is 0 when not needed.
struct PairSim {
  float iou, oks;
  bool in_box_and_center;
  FASTOPS_HD float indicator(const Params& prm) const { return prm.oks_indicator ? oks : iou; }
};

FASTOPS_HD PairSim pair_similarity(const ImageData& img, const Params& prm, int64_t p, int64_t g) {
  PairSim s;
  s.iou = pair_iou(img, p, g);
  s.oks = prm.need_oks() ? pair_oks(img, prm, p, g) : 0.f;
  s.in_box_and_center = in_box(img, p, g) && in_center(img, prm, p, g);
  return s;
}

// Cost from its terms, in the stock summation order:
//   mmpose: ((((~inbc) * INF + iou_cost * w_iou) + oks_cost * w_oks) + cls_cost * w_cls) + vis_cost * w_vis
//   mmdet:  (cls_cost * w_cls + iou_cost * w_iou) + (~inbc) * INF
// `cls_cost` / `vis_cost` may be lower bounds (monotone float ops keep the result a lower bound).
FASTOPS_HD float combine_cost(const Params& prm, bool inbc, float iou, float oks, float cls_cost, float vis_cost) {
  float outside = inbc ? 0.f : kInf;
  if (!prm.pose) return add_rn(add_rn(mul_rn(cls_cost, prm.cls_weight), mul_rn(neg_log_eps(iou), prm.iou_weight)), outside);
  float cost = outside;
  if (prm.iou_weight > 0) cost = add_rn(cost, mul_rn(neg_log_eps(iou), prm.iou_weight));
  if (prm.need_oks()) cost = add_rn(cost, mul_rn(neg_log_eps(oks), prm.oks_weight));
  if (prm.cls_weight > 0) cost = add_rn(cost, mul_rn(cls_cost, prm.cls_weight));
  if (prm.vis_weight > 0) cost = add_rn(cost, mul_rn(vis_cost, prm.vis_weight));
  return cost;
}

FASTOPS_HD float pair_cost(const ImageData& img, const Params& prm, int64_t p, int64_t g, const PairSim& s) {
  float cls_cost = prm.cls_weight > 0 || !prm.pose ? pair_cls_cost(img, prm, p, g) : 0.f;
  float vis_cost = prm.pose && prm.vis_weight > 0 ? pair_vis_cost(img, prm, p, g) : 0.f;
  return combine_cost(prm, s.in_box_and_center, s.iou, s.oks, cls_cost, vis_cost);
}

}  // namespace simota
}  // namespace fastops
