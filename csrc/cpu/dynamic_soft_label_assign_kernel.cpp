// dynamic_soft_label_assign on CPU: parallel over priors for validity and class sums, over gts for
// the dynamic-k selection, over images for conflict resolution. No [P, G] matrix is kept: each gt
// keeps its dynamic_k picks, conflicts recompute their cost row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/dynamic_k_matching.h"
#include "ops/dynamic_soft_label_assign.h"

namespace fastops {
namespace {

using dynamic_k::SmallestK;
using soft_label::ImageData;
using soft_label::Params;

// The dynamic_k cheapest valid priors of gt g (positions in `valid`), lower index on ties.
std::vector<int64_t> select_for_gt(const ImageData& img, const Params& prm, const std::vector<int64_t>& valid,
                                   int64_t g) {
  const int64_t num_valid = static_cast<int64_t>(valid.size());
  std::vector<float> ious(num_valid);
  SmallestK largest(std::min(prm.topk, num_valid));  // negated IoUs
  for (int64_t v = 0; v < num_valid; ++v) {
    ious[v] = soft_label::pair_iou(img, valid[v], g);
    largest.push(-ious[v], v);
  }
  SmallestK cheapest(dynamic_k::dynamic_k_of(largest, num_valid));
  for (int64_t v = 0; v < num_valid; ++v) cheapest.push(soft_label::pair_cost(img, prm, valid[v], g, ious[v]), v);
  return cheapest.indices();  // fewer than dynamic_k when costs are NaN
}

struct Outputs {
  int64_t* gt_inds;
  float* overlaps;
  int64_t* labels;
};

// Turns the per-gt picks of one image into its assignment row; a prior picked by several gts goes
// to the argmin of its full cost row.
void resolve_image(const ImageData& img, const Params& prm, const std::vector<int64_t>& valid,
                   const std::vector<int64_t>* picked, Outputs out) {
  auto cheapest = [&](int64_t v) {
    const int64_t p = valid[v];
    return dynamic_k::cheapest_gt(img.num_gt, [&](int64_t g) {
      return soft_label::pair_cost(img, prm, p, g, soft_label::pair_iou(img, p, g));
    });
  };
  std::fill(out.overlaps, out.overlaps + prm.P, soft_label::kUnmatchedOverlap);
  dynamic_k::resolve_picks(static_cast<int64_t>(valid.size()), picked, img.num_gt, cheapest,
                           [&](int64_t v, int64_t g) {
                             const int64_t p = valid[v];
                             out.gt_inds[p] = g + 1;
                             out.labels[p] = img.gt_labels[g];
                             out.overlaps[p] = soft_label::pair_iou(img, p, g);
                           });
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
    for (int64_t i = begin; i < end; ++i) {
      const ImageData img = image(i / P);
      is_valid[i] = soft_label::prior_is_valid(img, i % P);
      if (is_valid[i]) img.cls_neg_sum[i % P] = soft_label::class_neg_sum(img, prm, i % P);
    }
  });

  std::vector<std::vector<int64_t>> valid(B);  // valid prior indices of each image
  for (int64_t i = 0; i < B * P; ++i) {
    if (is_valid[i]) valid[i / P].push_back(i % P);
  }

  std::vector<std::vector<int64_t>> picked(B * G);
  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / G, g = i % G;
      if (g < batch.num_gts[b] && !valid[b].empty()) picked[i] = select_for_gt(image(b), prm, valid[b], g);
    }
  });

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (batch.num_gts[b] == 0 || valid[b].empty()) continue;
      Outputs out{gt_inds.data_ptr<int64_t>() + b * P, overlaps.data_ptr<float>() + b * P,
                  labels.data_ptr<int64_t>() + b * P};
      resolve_image(image(b), prm, valid[b], picked.data() + b * G, out);
    }
  });
  return {gt_inds, overlaps, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) { m.impl("dynamic_soft_label_assign", &dynamic_soft_label_assign_cpu); }

}  // namespace fastops
