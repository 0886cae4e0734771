// Argument checks of the mlecc_loss operators, shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>

namespace fastops {

// pred_x/target_x [N,K,Wx], pred_y/target_y [N,K,Wy], weight [N,K] or absent.
void check_mlecc_from_probs_args(const at::Tensor& pred_x, const at::Tensor& pred_y,
                                 const at::Tensor& target_x, const at::Tensor& target_y,
                                 const std::optional<at::Tensor>& weight, double floor);

// logits_x [N,K,Wx], logits_y [N,K,Wy], keypoints [N,K,2], bbox_cs [N,4], sigmas [N,K],
// areas [N], weight [N,K] or absent, x_bins [Wx], y_bins [Wy].
void check_mlecc_from_logits_args(const at::Tensor& logits_x, const at::Tensor& logits_y,
                                  const at::Tensor& keypoints, const at::Tensor& bbox_cs,
                                  const at::Tensor& sigmas, const at::Tensor& areas,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& x_bins,
                                  const at::Tensor& y_bins, double floor);

// row_stats [N,K,kRowStats], the forward's third output, for the from_logits backward.
void check_mlecc_row_stats_arg(const at::Tensor& row_stats, const at::Tensor& logits_x);

// grad_loss [N,K] for the backward ops.
void check_mlecc_grad_arg(const at::Tensor& grad_loss, const at::Tensor& reference);

}  // namespace fastops
