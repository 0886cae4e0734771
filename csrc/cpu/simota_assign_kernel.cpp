// simota_assign on CPU: parallel over gts for the per-gt work, over images for conflict resolution.
// No [P,G] matrix is kept: each gt keeps its dynamic-k selection, conflicts recompute their cost row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/dynamic_k_matching.h"
#include "ops/simota_assign.h"

namespace fastops {
namespace {

using simota::ImageData;
using simota::PairSim;
using simota::Params;

using dynamic_k::SmallestK;

struct Box {
  float x1, y1, x2, y2;
};

// What bounds the OKS of gt g from above: the box of its visible keypoints, 1 / (sqrt(area) * 2 max
// sigma) over them, and the sum of its OKS weights.
struct GtKeypointExtent {
  Box visible;
  double inv_scale;
  double weight_sum;
};

GtKeypointExtent gt_keypoint_extent(const ImageData& img, const Params& prm, int64_t g) {
  GtKeypointExtent ext{{INFINITY, INFINITY, -INFINITY, -INFINITY}, 0.0, 0.0};
  double max_sigma = 0.0;
  for (int64_t k = 0; k < prm.K; ++k) {
    const double w = img.gt_kpt_weight[g * prm.K + k];
    if (w == 0.0) continue;
    const float x = img.gt_kpts[(g * prm.K + k) * 2], y = img.gt_kpts[(g * prm.K + k) * 2 + 1];
    ext.visible = {std::min(ext.visible.x1, x), std::min(ext.visible.y1, y), std::max(ext.visible.x2, x),
                   std::max(ext.visible.y2, y)};
    ext.weight_sum += w;
    max_sigma = std::max(max_sigma, static_cast<double>(img.sigmas[k]));
  }
  const double sqrt_area = std::max(std::sqrt(static_cast<double>(img.gt_areas[g])), 1e-8);
  ext.inv_scale = 1.0 / (sqrt_area * 2.0 * max_sigma);
  return ext;
}

Box keypoint_box(const ImageData& img, const Params& prm, int64_t p) {
  Box box{INFINITY, INFINITY, -INFINITY, -INFINITY};
  for (int64_t k = 0; k < prm.K; ++k) {
    const float x = img.kpts[(p * prm.K + k) * 2], y = img.kpts[(p * prm.K + k) * 2 + 1];
    box = {std::min(box.x1, x), std::min(box.y1, y), std::max(box.x2, x), std::max(box.y2, y)};
  }
  return box;
}

// The valid priors of one image as structure-of-arrays, so that the per-gt scans over them vectorise.
struct ValidPriors {
  std::vector<int64_t> index;                         // prior index p
  std::vector<float> x, y, radius_x, radius_y;        // centre, and center_radius * stride
  std::vector<float> kpt_x1, kpt_y1, kpt_x2, kpt_y2;  // box of the predicted keypoints (pose only)

  int64_t size() const { return static_cast<int64_t>(index.size()); }

  void add(const ImageData& img, const Params& prm, int64_t p) {
    const float* prior = img.priors + p * 4;
    index.push_back(p);
    x.push_back(prior[0]);
    y.push_back(prior[1]);
    radius_x.push_back(mul_rn(prm.center_radius, prior[2]));
    radius_y.push_back(mul_rn(prm.center_radius, prior[3]));
    if (!prm.pose) return;
    const Box box = keypoint_box(img, prm, p);
    kpt_x1.push_back(box.x1);
    kpt_y1.push_back(box.y1);
    kpt_x2.push_back(box.x2);
    kpt_y2.push_back(box.y2);
  }

  // in_box && in_center of gt g, per valid prior.
  void mark_inside(const ImageData& img, int64_t g, uint8_t* inside) const {
    const float* gt_box = img.gt_boxes + g * 4;
    const float box[4] = {gt_box[0], gt_box[1], gt_box[2], gt_box[3]};
    const float cx = img.gt_center[2 * g], cy = img.gt_center[2 * g + 1];
    const float *px = x.data(), *py = y.data(), *rx = radius_x.data(), *ry = radius_y.data();
    const int64_t n = size();  // locals: stores through the uint8_t pointer may alias the vectors
    for (int64_t v = 0; v < n; ++v) {
      inside[v] = dynamic_k::centre_in_box(px[v], py[v], box) &
                  simota::centre_in_region(px[v], py[v], rx[v], ry[v], cx, cy);
    }
  }

  // Squared gap between each predicted keypoint box and the visible gt keypoint box, scaled by
  // 1 / (sqrt(area) * 2 max sigma): every keypoint term of OKS(p, g) is at most w_k * exp(-gap_sq / 2).
  void scaled_gap_sq(const GtKeypointExtent& gt, double* gap_sq) const {
    const double gx1 = gt.visible.x1, gy1 = gt.visible.y1, gx2 = gt.visible.x2, gy2 = gt.visible.y2;
    const double scale_sq = gt.inv_scale * gt.inv_scale;
    for (int64_t v = 0; v < size(); ++v) {
      const double gap_x = std::max(std::max(0.0, gx1 - kpt_x2[v]), kpt_x1[v] - gx2);
      const double gap_y = std::max(std::max(0.0, gy1 - kpt_y2[v]), kpt_y1[v] - gy2);
      gap_sq[v] = (gap_x * gap_x + gap_y * gap_y) * scale_sq;
    }
  }
};

// OKS <= weight_sum * exp(-gap_sq / 2) < threshold when gap_sq exceeds this; the 1.001 margin covers
// the float32 rounding of the exact OKS. No pruning (infinity) while the threshold is not positive.
double prune_gap_sq(float threshold, const GtKeypointExtent& gt) {
  if (!(threshold > 0.f)) return INFINITY;
  return 2.0 * std::log(gt.weight_sum * 1.001 / static_cast<double>(threshold));
}

// Per-prior similarities of one gt. Priors outside its box-and-center region get exact values only
// where dynamic_k needs them; elsewhere `iou` / `oks` are upper bounds (`exact` false), which is all
// outside_cost_bound needs, and select_for_gt recomputes them if it has to rank those priors.
struct GtScan {
  std::vector<PairSim> sims;
  std::vector<uint8_t> exact;
  int64_t k;
};

constexpr float kIouUpperBound = 1.0001f;  // union >= overlap, so IoU <= 1 up to rounding
constexpr float kOksUpperBound = 1.0001f;  // OKS weights sum to 1 and each exp(.) <= 1

GtScan scan_gt(const ImageData& img, const Params& prm, const ValidPriors& valid, int64_t g,
               const GtKeypointExtent& extent) {
  const int64_t num_valid = valid.size();
  const bool outside_exact = !prm.oks_indicator && !prm.need_oks();
  GtScan scan{std::vector<PairSim>(num_valid), std::vector<uint8_t>(num_valid), 0};
  std::vector<uint8_t> inside(num_valid);
  valid.mark_inside(img, g, inside.data());
  SmallestK largest(std::min(prm.candidate_topk, num_valid));  // negated indicators
  for (int64_t v = 0; v < num_valid; ++v) {
    const int64_t p = valid.index[v];
    PairSim& s = scan.sims[v];
    s.in_box_and_center = inside[v];
    scan.exact[v] = s.in_box_and_center || outside_exact;
    s.iou = s.in_box_and_center || !prm.oks_indicator ? simota::pair_iou(img, p, g) : kIouUpperBound;
    s.oks = !prm.need_oks() ? 0.f : s.in_box_and_center ? simota::pair_oks(img, prm, p, g) : kOksUpperBound;
    if (!prm.oks_indicator) largest.push(-s.iou, v);
    if (prm.oks_indicator && s.in_box_and_center) largest.push(-s.oks, v);
  }
  if (!prm.oks_indicator) {
    scan.k = dynamic_k::dynamic_k_of(largest, num_valid);
    return scan;
  }
  // OKS of the other priors: only those that may still enter the candidate_topk largest
  std::vector<double> gap_sq(num_valid);
  valid.scaled_gap_sq(extent, gap_sq.data());
  const int64_t topk = largest.capacity();
  double max_gap_sq = largest.size() < topk ? INFINITY : prune_gap_sq(-largest.key(topk - 1), extent);
  for (int64_t v = 0; v < num_valid; ++v) {
    PairSim& s = scan.sims[v];
    if (s.in_box_and_center || gap_sq[v] > max_gap_sq) continue;
    s.oks = simota::pair_oks(img, prm, valid.index[v], g);
    largest.push(-s.oks, v);
    if (largest.size() == topk) max_gap_sq = prune_gap_sq(-largest.key(topk - 1), extent);
  }
  scan.k = dynamic_k::dynamic_k_of(largest, num_valid);
  return scan;
}

// A float lower bound of the cost of every valid prior outside the gt's box-and-center region
// (+inf when there is none). Float addition and multiplication by a weight >= 0 are monotone, so
// the stock expression evaluated at the best IoU/OKS (or their upper bounds) with zero
// class/visibility terms bounds it.
float outside_cost_bound(const std::vector<PairSim>& sims, const Params& prm) {
  bool any_outside = false;
  float best_iou = -INFINITY, best_oks = -INFINITY;
  for (const PairSim& s : sims) {
    if (s.in_box_and_center) continue;
    any_outside = true;
    best_iou = std::max(best_iou, s.iou);
    best_oks = std::max(best_oks, s.oks);
  }
  if (!any_outside) return INFINITY;
  const float nonpositive_slack = -1e-3f;  // class cost is a double sum rounded to float, >= -tiny
  return simota::combine_cost(prm, false, best_iou, best_oks, nonpositive_slack, 0.f);
}

// The dynamic_k lowest-cost valid priors of gt g (positions in `valid`), lowest index on ties.
std::vector<int64_t> select_for_gt(const ImageData& img, const Params& prm, const ValidPriors& valid, int64_t g,
                                   const GtKeypointExtent& extent) {
  const int64_t num_valid = valid.size();
  GtScan scan = scan_gt(img, prm, valid, g, extent);
  const int64_t k = scan.k;

  // Fast path: the k cheapest priors inside the box-and-center region cost less than any other.
  SmallestK inside(k);
  for (int64_t v = 0; v < num_valid; ++v) {
    if (scan.sims[v].in_box_and_center) inside.push(simota::pair_cost(img, prm, valid.index[v], g, scan.sims[v]), v);
  }
  const bool inside_suffices = inside.size() == k && inside.key(k - 1) < outside_cost_bound(scan.sims, prm);
  SmallestK all(inside_suffices ? 0 : k);
  for (int64_t v = 0; !inside_suffices && v < num_valid; ++v) {
    if (!scan.exact[v]) scan.sims[v] = simota::pair_similarity(img, prm, valid.index[v], g);
    all.push(simota::pair_cost(img, prm, valid.index[v], g, scan.sims[v]), v);
  }
  const SmallestK& chosen = inside_suffices ? inside : all;  // fewer than k when costs are NaN
  return chosen.indices();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> simota_assign_cpu(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const std::optional<at::Tensor>& pred_keypoints, const std::optional<at::Tensor>& pred_keypoints_visible,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_keypoints, const std::optional<at::Tensor>& gt_keypoints_visible,
    const std::optional<at::Tensor>& gt_areas, const std::optional<at::Tensor>& sigmas, double center_radius,
    int64_t candidate_topk, double iou_weight, double cls_weight, double oks_weight, double vis_weight,
    c10::string_view dynamic_k_indicator, bool use_keypoints_for_center) {
  const Params prm = check_simota_assign_args(
      priors, pred_bboxes, pred_scores, pred_keypoints, pred_keypoints_visible, gt_bboxes, gt_labels, num_gts,
      gt_keypoints, gt_keypoints_visible, gt_areas, sigmas, center_radius, candidate_topk, iou_weight, cls_weight,
      oks_weight, vis_weight, dynamic_k_indicator, use_keypoints_for_center);
  dynamic_k::check_gt_values("simota_assign", num_gts, gt_labels, prm.C);
  const int64_t B = pred_bboxes.size(0), P = prm.P, G = prm.G;
  auto gt_inds = at::zeros({B, P}, gt_labels.options());
  auto overlaps = at::zeros({B, P}, priors.options());  // stock: zeros when nothing can be assigned
  auto labels = at::full({B, P}, -1, gt_labels.options());
  if (B == 0 || P == 0) return {gt_inds, overlaps, labels};

  const SimOTABatch batch =
      make_simota_batch(priors, pred_bboxes, pred_scores, pred_keypoints, pred_keypoints_visible, gt_bboxes,
                        gt_labels, num_gts, gt_keypoints, gt_keypoints_visible, gt_areas, sigmas, prm);
  auto image = [&](int64_t b) { return simota::image_at(batch.base, prm, b, batch.num_gts[b]); };

  at::parallel_for(0, B * G, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i % G < batch.num_gts[i / G]) simota::prepare_gt(image(i / G), prm, i % G);
    }
  });

  std::vector<GtKeypointExtent> extents(prm.pose ? B * G : 0);
  at::parallel_for(0, prm.pose ? B * G : 0, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i % G < batch.num_gts[i / G]) extents[i] = gt_keypoint_extent(image(i / G), prm, i % G);
    }
  });

  std::vector<uint8_t> is_valid(B * P);
  at::parallel_for(0, B * P, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const ImageData img = image(i / P);
      is_valid[i] = simota::prior_is_valid(img, prm, i % P);
      if (is_valid[i]) img.cls_neg_sum[i % P] = simota::class_neg_sum(img, prm, i % P);
    }
  });

  std::vector<ValidPriors> valid(B);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t p = 0; p < P; ++p) {
        if (is_valid[b * P + p]) valid[b].add(image(b), prm, p);
      }
    }
  });

  std::vector<std::vector<int64_t>> picked(B * G);
  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / G, g = i % G;
      if (g < batch.num_gts[b] && valid[b].size() > 0) {
        picked[i] = select_for_gt(image(b), prm, valid[b], g, prm.pose ? extents[i] : GtKeypointExtent{});
      }
    }
  });

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (batch.num_gts[b] == 0 || valid[b].size() == 0) continue;
      const ImageData img = image(b);
      auto similarity = [&](int64_t p, int64_t g) { return simota::pair_similarity(img, prm, p, g); };
      dynamic_k::write_image_rows(
          valid[b].index, picked.data() + b * G, img.num_gt, img.gt_labels, P, -simota::kInf,
          [&](int64_t p, int64_t g) { return simota::pair_cost(img, prm, p, g, similarity(p, g)); },
          [&](int64_t p, int64_t g) { return similarity(p, g).indicator(prm); },
          {gt_inds.data_ptr<int64_t>() + b * P, overlaps.data_ptr<float>() + b * P,
           labels.data_ptr<int64_t>() + b * P});
    }
  });
  return {gt_inds, overlaps, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("simota_assign", &simota_assign_cpu); }

}  // namespace fastops
