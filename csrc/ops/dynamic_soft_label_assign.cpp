// dynamic_soft_label_assign: schema and the argument checks shared by the CPU and CUDA kernels.
#include "ops/dynamic_soft_label_assign.h"

#include <torch/library.h>

#include "ops/kept_tensors.h"

namespace fastops {
namespace {

constexpr const char* kOp = "dynamic_soft_label_assign";

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape,
                  const at::Tensor& priors) {
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == priors.device(), kOp, ": ", name, " is on ", t.device(), " but priors are on ",
              priors.device());
  TORCH_CHECK(t.sizes() == shape, kOp, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

}  // namespace

soft_label::Params check_dynamic_soft_label_assign_args(const at::Tensor& priors, const at::Tensor& pred_bboxes,
                                                        const at::Tensor& pred_scores, const at::Tensor& gt_bboxes,
                                                        const at::Tensor& gt_labels, const at::Tensor& num_gts,
                                                        const std::optional<at::Tensor>& gt_centers,
                                                        double soft_center_radius, int64_t topk, double iou_weight) {
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4, kOp, ": priors must be [P,4], got ", priors.sizes());
  TORCH_CHECK(pred_bboxes.dim() == 3, kOp, ": pred_bboxes must be [B,P,4], got ", pred_bboxes.sizes());
  TORCH_CHECK(pred_scores.dim() == 3, kOp, ": pred_scores must be [B,P,C], got ", pred_scores.sizes());
  TORCH_CHECK(gt_bboxes.dim() == 3, kOp, ": gt_bboxes must be [B,G,4], got ", gt_bboxes.sizes());
  const int64_t B = pred_bboxes.size(0), P = priors.size(0), G = gt_bboxes.size(1), C = pred_scores.size(2);
  TORCH_CHECK(C >= 1, kOp, ": pred_scores needs at least one class");
  check_tensor(priors, "priors", at::kFloat, {P, 4}, priors);
  check_tensor(pred_bboxes, "pred_bboxes", at::kFloat, {B, P, 4}, priors);
  check_tensor(pred_scores, "pred_scores", at::kFloat, {B, P, C}, priors);
  check_tensor(gt_bboxes, "gt_bboxes", at::kFloat, {B, G, 4}, priors);
  check_tensor(gt_labels, "gt_labels", at::kLong, {B, G}, priors);
  check_tensor(num_gts, "num_gts", at::kLong, {B}, priors);
  if (gt_centers.has_value()) check_tensor(*gt_centers, "gt_centers", at::kFloat, {B, G, 2}, priors);
  TORCH_CHECK(topk >= 1, kOp, ": topk must be >= 1, got ", topk);
  TORCH_CHECK(std::isfinite(soft_center_radius), kOp, ": soft_center_radius must be finite, got ",
              soft_center_radius);
  TORCH_CHECK(iou_weight >= 0, kOp, ": iou_weight must be >= 0, got ", iou_weight);
  return soft_label::Params{static_cast<float>(soft_center_radius), topk, static_cast<float>(iou_weight), P, G, C};
}

SoftLabelBatch make_soft_label_batch(const at::Tensor& priors, const at::Tensor& pred_bboxes,
                                     const at::Tensor& pred_scores, const at::Tensor& gt_bboxes,
                                     const at::Tensor& gt_labels, const at::Tensor& num_gts,
                                     const std::optional<at::Tensor>& gt_centers, const soft_label::Params& prm) {
  SoftLabelBatch batch;
  auto& owners = batch.owners;
  soft_label::ImageData& img = batch.base;
  img.priors = keep<float>(owners, priors);
  img.boxes = keep<float>(owners, pred_bboxes);
  img.scores = keep<float>(owners, pred_scores);
  img.gt_boxes = keep<float>(owners, gt_bboxes);
  img.gt_labels = keep<int64_t>(owners, gt_labels);
  // stock: (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2.0, the same two float ops
  const at::Tensor centers = gt_centers.has_value()
                                 ? *gt_centers
                                 : (gt_bboxes.slice(2, 0, 2) + gt_bboxes.slice(2, 2, 4)) / 2.0;
  img.gt_centers = keep<float>(owners, centers);
  const int64_t B = pred_bboxes.size(0);
  img.cls_neg_sum = keep<double>(owners, at::empty({B, prm.P}, priors.options().dtype(at::kDouble)));
  img.num_gt = 0;
  batch.num_gts = keep<int64_t>(owners, num_gts);
  return batch;
}

}  // namespace fastops

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "dynamic_soft_label_assign(Tensor priors, Tensor pred_bboxes, Tensor pred_scores, Tensor gt_bboxes, "
      "Tensor gt_labels, Tensor num_gts, Tensor? gt_centers, float soft_center_radius, int topk, float iou_weight) "
      "-> (Tensor assigned_gt_inds, Tensor max_overlaps, Tensor assigned_labels)");
}
