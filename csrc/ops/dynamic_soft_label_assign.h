// Shared declarations of the dynamic_soft_label_assign operator (schema in
// dynamic_soft_label_assign.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/soft_label_math.h"

namespace fastops {

// Checks shapes, dtypes and devices of all inputs (both kernels) and returns the scalar settings.
soft_label::Params check_dynamic_soft_label_assign_args(const at::Tensor& priors, const at::Tensor& pred_bboxes,
                                                        const at::Tensor& pred_scores, const at::Tensor& gt_bboxes,
                                                        const at::Tensor& gt_labels, const at::Tensor& num_gts,
                                                        const std::optional<at::Tensor>& gt_centers,
                                                        double soft_center_radius, int64_t topk, double iou_weight);

// Contiguous inputs, the gt centres (box centres when none are given), the per-prior class-sum
// buffer, and the raw pointers of image 0.
struct SoftLabelBatch {
  std::vector<at::Tensor> owners;  // keeps every pointed-to tensor alive
  soft_label::ImageData base;
  const int64_t* num_gts;
};

SoftLabelBatch make_soft_label_batch(const at::Tensor& priors, const at::Tensor& pred_bboxes,
                                     const at::Tensor& pred_scores, const at::Tensor& gt_bboxes,
                                     const at::Tensor& gt_labels, const at::Tensor& num_gts,
                                     const std::optional<at::Tensor>& gt_centers, const soft_label::Params& prm);

}  // namespace fastops
