// Shared declarations of the simota_assign operator (schema in simota_assign.cpp).
#pragma once

#include <ATen/ATen.h>

#include "common/simota_math.h"

namespace fastops {

// Checks shapes, dtypes and devices of all inputs (both kernels) and returns the scalar settings.
simota::Params check_simota_assign_args(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const std::optional<at::Tensor>& pred_keypoints, const std::optional<at::Tensor>& pred_keypoints_visible,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_keypoints, const std::optional<at::Tensor>& gt_keypoints_visible,
    const std::optional<at::Tensor>& gt_areas, const std::optional<at::Tensor>& sigmas, double center_radius,
    int64_t candidate_topk, double iou_weight, double cls_weight, double oks_weight, double vis_weight,
    c10::string_view dynamic_k_indicator, bool use_keypoints_for_center);

}  // namespace fastops

namespace fastops {

// Contiguous inputs, the derived per-gt / per-prior buffers, and the raw pointers of image 0.
struct SimOTABatch {
  std::vector<at::Tensor> owners;  // keeps every pointed-to tensor alive
  simota::ImageData base;
  const int64_t* num_gts;
};

SimOTABatch make_simota_batch(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const std::optional<at::Tensor>& pred_keypoints, const std::optional<at::Tensor>& pred_keypoints_visible,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_keypoints, const std::optional<at::Tensor>& gt_keypoints_visible,
    const std::optional<at::Tensor>& gt_areas, const std::optional<at::Tensor>& sigmas, const simota::Params& prm);

}  // namespace fastops
