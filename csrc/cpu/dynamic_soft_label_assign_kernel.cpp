// dynamic_soft_label_assign on CPU: parallel over priors for validity and class sums, over gts for
// the dynamic-k selection, over images for conflict resolution. No [P, G] matrix is kept: each gt
// keeps its dynamic_k picks, conflicts recompute their cost row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <memory>
#include <vector>

#include "cpu/dynamic_k_matching.h"
#include "ops/dynamic_soft_label_assign.h"

namespace fastops {
namespace {

using dynamic_k::SmallestK;
using soft_label::ImageData;
using soft_label::Params;

// class_neg_sum of each prior of the batch, computed on first use (most priors of a gt are pruned
// before their class cost is needed). The first thread to claim a prior writes its sum; a thread that
// finds it being written computes the same value for itself.
class ClassSums {
 public:
  ClassSums(const Params& prm, int64_t B) : prm_(prm), state_(new std::atomic<uint8_t>[B * prm.P]) {
    for (int64_t i = 0; i < B * prm.P; ++i) state_[i].store(kEmpty, std::memory_order_relaxed);
  }

  double get(const ImageData& img, int64_t b, int64_t p) const {
    std::atomic<uint8_t>& state = state_[b * prm_.P + p];
    if (state.load(std::memory_order_acquire) == kReady) return img.cls_neg_sum[p];
    uint8_t expected = kEmpty;
    const double sum = soft_label::class_neg_sum(img, prm_, p);
    if (state.compare_exchange_strong(expected, kWriting, std::memory_order_acq_rel)) {
      img.cls_neg_sum[p] = sum;
      state.store(kReady, std::memory_order_release);
    }
    return sum;
  }

 private:
  static constexpr uint8_t kEmpty = 0, kWriting = 1, kReady = 2;
  Params prm_;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
};

// Squared distance from each valid prior's centre to gt g's centre, in strides (double).
std::vector<double> distances_sq(const ImageData& img, const std::vector<int64_t>& valid, int64_t g) {
  const double cx = img.gt_centers[2 * g], cy = img.gt_centers[2 * g + 1];
  std::vector<double> dist_sq(valid.size());
  for (size_t v = 0; v < valid.size(); ++v) {
    const float* prior = img.priors + valid[v] * 4;
    const double dx = prior[0] - cx, dy = prior[1] - cy, stride = prior[2];
    dist_sq[v] = (dx * dx + dy * dy) / (stride * stride);
  }
  return dist_sq;
}

// Pruning of a gt's far priors. The class cost is a sum of non-negative terms and -log(IoU + 1e-7)
// >= -1.2e-7 for IoU <= 1, so that a prior cannot enter the dynamic_k cheapest once either of
//   10 ** (d - radius) (its centre cost)  or  iou_weight * -log(IoU + 1e-7) (its IoU cost)
// exceeds the k-th cheapest cost so far plus a slack of 1 + 1e-6 * iou_weight, which covers the
// other terms' rounding below 0 (1e-3 on the exponent covers pow's, 1e-5 on the IoU log's).
struct PruneBound {
  double max_dist_sq = INFINITY;  // squared distance in strides; infinity: no pruning
  double min_iou = -INFINITY;     // the IoU cost exceeds the limit below this IoU

  PruneBound() = default;
  PruneBound(const Params& prm, float kth_cost) {
    const double limit = static_cast<double>(kth_cost) + 1.0 + 1e-6 * prm.iou_weight;
    if (!(limit > 0) || std::isinf(limit)) return;
    const double exponent = prm.soft_center_radius + std::log10(limit) + 1e-3;
    if (exponent > 0) max_dist_sq = exponent * exponent;
    if (prm.iou_weight > 0) min_iou = std::exp(-limit / prm.iou_weight) * (1 - 1e-5) - dynamic_k::kLogEps;
  }

  bool excludes(double dist_sq, float iou) const { return dist_sq > max_dist_sq || iou < min_iou; }
};

// The dynamic_k cheapest valid priors of gt g (positions in `valid`), lower index on ties. Priors
// within soft_center_radius strides of the gt centre are costed first; the others only while the
// PruneBound of the k-th cheapest so far does not exclude them.
std::vector<int64_t> select_for_gt(const ImageData& img, const Params& prm, const std::vector<int64_t>& valid,
                                   int64_t b, int64_t g, const ClassSums& class_sums) {
  const int64_t num_valid = static_cast<int64_t>(valid.size());
  std::vector<float> ious(num_valid);
  SmallestK largest(std::min(prm.topk, num_valid));  // negated IoUs
  for (int64_t v = 0; v < num_valid; ++v) {
    ious[v] = soft_label::pair_iou(img, valid[v], g);
    largest.push(-ious[v], v);
  }
  const int64_t k = dynamic_k::dynamic_k_of(largest, num_valid);
  SmallestK cheapest(k);
  auto cost_of = [&](int64_t v) {
    const int64_t p = valid[v];
    cheapest.push(soft_label::pair_cost(img, prm, p, g, ious[v], class_sums.get(img, b, p)), v);
  };
  const std::vector<double> dist_sq = distances_sq(img, valid, g);
  const double near_sq = static_cast<double>(prm.soft_center_radius) * prm.soft_center_radius;
  std::vector<int64_t> far;
  for (int64_t v = 0; v < num_valid; ++v) {
    if (dist_sq[v] <= near_sq) {
      cost_of(v);
    } else {
      far.push_back(v);
    }
  }
  float bound_of = NAN;  // the k-th cost `bound` was computed for
  PruneBound bound;
  for (int64_t v : far) {
    if (cheapest.size() == k && !(cheapest.key(k - 1) == bound_of)) {
      bound_of = cheapest.key(k - 1);
      bound = PruneBound(prm, bound_of);
    }
    if (!bound.excludes(dist_sq[v], ious[v])) cost_of(v);  // NaN distances and IoUs are costed
  }
  return cheapest.indices();  // fewer than dynamic_k when costs are NaN
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_soft_label_assign_cpu(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_centers, double soft_center_radius, int64_t topk, double iou_weight) {
  const Params prm = check_dynamic_soft_label_assign_args(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels,
                                                          num_gts, gt_centers, soft_center_radius, topk, iou_weight);
  dynamic_k::check_gt_values("dynamic_soft_label_assign", num_gts, gt_labels, prm.C);
  const int64_t B = pred_bboxes.size(0), P = prm.P, G = prm.G;
  auto gt_inds = at::zeros({B, P}, gt_labels.options());
  auto overlaps = at::zeros({B, P}, priors.options());  // stock: zeros when nothing can be assigned
  auto labels = at::full({B, P}, -1, gt_labels.options());
  if (B == 0 || P == 0) return {gt_inds, overlaps, labels};

  const SoftLabelBatch batch =
      make_soft_label_batch(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels, num_gts, gt_centers, prm);
  auto image = [&](int64_t b) { return soft_label::image_at(batch.base, prm, b, batch.num_gts[b]); };

  std::vector<uint8_t> is_valid(B * P);
  at::parallel_for(0, B * P, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) is_valid[i] = soft_label::prior_is_valid(image(i / P), i % P);
  });
  const ClassSums class_sums(prm, B);

  std::vector<std::vector<int64_t>> valid(B);  // valid prior indices of each image
  for (int64_t i = 0; i < B * P; ++i) {
    if (is_valid[i]) valid[i / P].push_back(i % P);
  }

  std::vector<std::vector<int64_t>> picked(B * G);
  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / G, g = i % G;
      if (g < batch.num_gts[b] && !valid[b].empty()) picked[i] = select_for_gt(image(b), prm, valid[b], b, g, class_sums);
    }
  });

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (batch.num_gts[b] == 0 || valid[b].empty()) continue;
      const ImageData img = image(b);
      dynamic_k::write_image_rows(
          valid[b], picked.data() + b * G, img.num_gt, img.gt_labels, P, soft_label::kUnmatchedOverlap,
          [&](int64_t p, int64_t g) {
            return soft_label::pair_cost(img, prm, p, g, soft_label::pair_iou(img, p, g), class_sums.get(img, b, p));
          },
          [&](int64_t p, int64_t g) { return soft_label::pair_iou(img, p, g); },
          {gt_inds.data_ptr<int64_t>() + b * P, overlaps.data_ptr<float>() + b * P,
           labels.data_ptr<int64_t>() + b * P});
    }
  });
  return {gt_inds, overlaps, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("dynamic_soft_label_assign", &dynamic_soft_label_assign_cpu); }

}  // namespace fastops
