// Schemas of the log-space MLECC loss (RTMO's DCC loss) and the argument checks shared by devices.
#include "ops/mlecc_loss.h"

#include "common/mlecc_math.h"

#include <torch/library.h>

#include <cmath>

namespace fastops {
namespace {

void check_float_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "mlecc_loss: ", name, " must have ", dim, " dimensions, got shape ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "mlecc_loss: ", name, " must be float32 or float64, got ", t.scalar_type(),
              " (cast half/bfloat16 inputs to float32)");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "mlecc_loss: ", name, " has dtype ",
              t.scalar_type(), " but the first input has ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "mlecc_loss: ", name, " is on ", t.device(),
              " but the first input is on ", like.device());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "mlecc_loss: ", name, " must have shape ", expected,
              ", got ", t.sizes());
}

void check_floor(double floor) {
  TORCH_CHECK(std::isfinite(floor) && floor >= 0.0,
              "mlecc_loss: floor must be a finite number >= 0, got ", floor);
}

void check_weight(const std::optional<at::Tensor>& weight, const at::Tensor& like, int64_t n, int64_t k) {
  if (weight.has_value()) {
    check_float_tensor(*weight, "weight", like, 2);
    check_shape(*weight, "weight", {n, k});
  }
}

// Checks an [N,K,W] pair of 1-D distributions of one axis and returns W.
int64_t check_axis_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                        const at::Tensor& like) {
  check_float_tensor(a, a_name, like, 3);
  check_float_tensor(b, b_name, like, 3);
  check_shape(b, b_name, a.sizes());
  TORCH_CHECK(a.size(0) == like.size(0) && a.size(1) == like.size(1), "mlecc_loss: ", a_name,
              " must have the same [N, K] as the x-axis input, got ", a.sizes(), " and ", like.sizes());
  TORCH_CHECK(a.size(2) > 0, "mlecc_loss: ", a_name, " must have at least one bin");
  return a.size(2);
}

}  // namespace

void check_mlecc_from_probs_args(const at::Tensor& pred_x, const at::Tensor& pred_y,
                                 const at::Tensor& target_x, const at::Tensor& target_y,
                                 const std::optional<at::Tensor>& weight, double floor) {
  check_axis_pair(pred_x, "pred_x", target_x, "target_x", pred_x);
  check_axis_pair(pred_y, "pred_y", target_y, "target_y", pred_x);
  check_weight(weight, pred_x, pred_x.size(0), pred_x.size(1));
  check_floor(floor);
}

void check_mlecc_from_logits_args(const at::Tensor& logits_x, const at::Tensor& logits_y,
                                  const at::Tensor& keypoints, const at::Tensor& bbox_cs,
                                  const at::Tensor& sigmas, const at::Tensor& areas,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& x_bins,
                                  const at::Tensor& y_bins, double floor) {
  check_float_tensor(logits_x, "logits_x", logits_x, 3);
  check_float_tensor(logits_y, "logits_y", logits_x, 3);
  const int64_t n = logits_x.size(0), k = logits_x.size(1);
  TORCH_CHECK(logits_y.size(0) == n && logits_y.size(1) == k,
              "mlecc_loss: logits_y must have the same [N, K] as logits_x, got ", logits_y.sizes(),
              " and ", logits_x.sizes());
  TORCH_CHECK(logits_x.size(2) > 0 && logits_y.size(2) > 0, "mlecc_loss: logits_x and logits_y need at least one bin");
  check_float_tensor(keypoints, "keypoints", logits_x, 3);
  check_shape(keypoints, "keypoints", {n, k, 2});
  check_float_tensor(bbox_cs, "bbox_cs", logits_x, 2);
  check_shape(bbox_cs, "bbox_cs", {n, 4});
  check_float_tensor(sigmas, "sigmas", logits_x, 2);
  check_shape(sigmas, "sigmas", {n, k});
  check_float_tensor(areas, "areas", logits_x, 1);
  check_shape(areas, "areas", {n});
  check_float_tensor(x_bins, "x_bins", logits_x, 1);
  check_shape(x_bins, "x_bins", {logits_x.size(2)});
  check_float_tensor(y_bins, "y_bins", logits_x, 1);
  check_shape(y_bins, "y_bins", {logits_y.size(2)});
  check_weight(weight, logits_x, n, k);
  check_floor(floor);
}

void check_mlecc_row_stats_arg(const at::Tensor& row_stats, const at::Tensor& logits_x) {
  check_float_tensor(row_stats, "row_stats", logits_x, 3);
  check_shape(row_stats, "row_stats (the third output of mlecc_loss_from_logits)",
              {logits_x.size(0), logits_x.size(1), mlecc::kRowStats});
}

void check_mlecc_grad_arg(const at::Tensor& grad_loss, const at::Tensor& reference) {
  check_float_tensor(grad_loss, "grad_loss", reference, 2);
  check_shape(grad_loss, "grad_loss", {reference.size(0), reference.size(1)});
}

}  // namespace fastops

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // loss [N,K] (weighted per-keypoint negative log-likelihood), num_invalid [] int64.
  m.def("mlecc_loss_from_probs(Tensor pred_x, Tensor pred_y, Tensor target_x, Tensor target_y, "
        "Tensor? weight, float floor) -> (Tensor loss, Tensor num_invalid)");
  m.def("mlecc_loss_from_probs_backward(Tensor grad_loss, Tensor pred_x, Tensor pred_y, "
        "Tensor target_x, Tensor target_y, Tensor? weight, float floor) "
        "-> (Tensor grad_pred_x, Tensor grad_pred_y, Tensor grad_target_x, Tensor grad_target_y)");
  // row_stats [N,K,6]: per axis the largest clamped logit and the log-normalisers of the
  // softmax and of p*t relative to it (common/mlecc_math.h), saved for the backward; NaN on
  // rows with invalid inputs.
  m.def("mlecc_loss_from_logits(Tensor logits_x, Tensor logits_y, Tensor keypoints, Tensor bbox_cs, "
        "Tensor sigmas, Tensor areas, Tensor? weight, Tensor x_bins, Tensor y_bins, float floor) "
        "-> (Tensor loss, Tensor num_invalid, Tensor row_stats)");
  m.def("mlecc_loss_from_logits_backward(Tensor grad_loss, Tensor logits_x, Tensor logits_y, "
        "Tensor keypoints, Tensor bbox_cs, Tensor sigmas, Tensor areas, Tensor? weight, "
        "Tensor x_bins, Tensor y_bins, Tensor row_stats, float floor) "
        "-> (Tensor grad_logits_x, Tensor grad_logits_y, Tensor grad_sigmas, Tensor grad_bbox_cs)");
}
