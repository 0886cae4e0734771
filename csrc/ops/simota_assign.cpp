// simota_assign: schema and the argument checks shared by the CPU and CUDA kernels.
#include "ops/simota_assign.h"

#include <torch/library.h>

#include "ops/kept_tensors.h"

namespace fastops {
namespace {

void check_float_tensor(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "simota_assign: ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "simota_assign: ", name, " is on ", t.device(), " but priors are on ",
              like.device());
  TORCH_CHECK(t.sizes() == shape, "simota_assign: ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_long_tensor(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "simota_assign: ", name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "simota_assign: ", name, " is on ", t.device(), " but priors are on ",
              like.device());
  TORCH_CHECK(t.sizes() == shape, "simota_assign: ", name, " must have shape ", shape, ", got ", t.sizes());
}

const at::Tensor& required(const std::optional<at::Tensor>& t, const char* name) {
  TORCH_CHECK(t.has_value(), "simota_assign: ", name, " is required when pred_keypoints is given");
  return *t;
}

}  // namespace

simota::Params check_simota_assign_args(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const std::optional<at::Tensor>& pred_keypoints, const std::optional<at::Tensor>& pred_keypoints_visible,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_keypoints, const std::optional<at::Tensor>& gt_keypoints_visible,
    const std::optional<at::Tensor>& gt_areas, const std::optional<at::Tensor>& sigmas, double center_radius,
    int64_t candidate_topk, double iou_weight, double cls_weight, double oks_weight, double vis_weight,
    c10::string_view dynamic_k_indicator, bool use_keypoints_for_center) {
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4, "simota_assign: priors must be [P,4], got ", priors.sizes());
  TORCH_CHECK(pred_bboxes.dim() == 3, "simota_assign: pred_bboxes must be [B,P,4], got ", pred_bboxes.sizes());
  TORCH_CHECK(pred_scores.dim() == 3, "simota_assign: pred_scores must be [B,P,C], got ", pred_scores.sizes());
  TORCH_CHECK(gt_bboxes.dim() == 3, "simota_assign: gt_bboxes must be [B,G,4], got ", gt_bboxes.sizes());
  const int64_t B = pred_bboxes.size(0), P = priors.size(0), G = gt_bboxes.size(1), C = pred_scores.size(2);
  TORCH_CHECK(C >= 1, "simota_assign: pred_scores needs at least one class");
  check_float_tensor(priors, "priors", {P, 4}, priors);
  check_float_tensor(pred_bboxes, "pred_bboxes", {B, P, 4}, priors);
  check_float_tensor(pred_scores, "pred_scores", {B, P, C}, priors);
  check_float_tensor(gt_bboxes, "gt_bboxes", {B, G, 4}, priors);
  check_long_tensor(gt_labels, "gt_labels", {B, G}, priors);
  check_long_tensor(num_gts, "num_gts", {B}, priors);
  TORCH_CHECK(candidate_topk >= 1, "simota_assign: candidate_topk must be >= 1, got ", candidate_topk);
  TORCH_CHECK(center_radius >= 0, "simota_assign: center_radius must be >= 0, got ", center_radius);
  TORCH_CHECK(iou_weight >= 0 && cls_weight >= 0 && oks_weight >= 0 && vis_weight >= 0,
              "simota_assign: iou_weight, cls_weight, oks_weight and vis_weight must be >= 0");
  TORCH_CHECK(dynamic_k_indicator == "iou" || dynamic_k_indicator == "oks",
              "simota_assign: dynamic_k_indicator must be 'iou' or 'oks', got '", dynamic_k_indicator, "'");

  simota::Params prm{};
  prm.center_radius = static_cast<float>(center_radius);
  prm.candidate_topk = candidate_topk;
  prm.iou_weight = static_cast<float>(iou_weight);
  prm.cls_weight = static_cast<float>(cls_weight);
  prm.oks_weight = static_cast<float>(oks_weight);
  prm.vis_weight = static_cast<float>(vis_weight);
  prm.oks_indicator = dynamic_k_indicator == "oks";
  prm.keypoint_center = use_keypoints_for_center;
  prm.pose = pred_keypoints.has_value();
  prm.P = P;
  prm.G = G;
  prm.C = C;
  prm.K = 0;
  if (!prm.pose) {
    TORCH_CHECK(!pred_keypoints_visible && !gt_keypoints && !gt_keypoints_visible && !gt_areas && !sigmas,
                "simota_assign: keypoint inputs were given without pred_keypoints");
    TORCH_CHECK(oks_weight == 0 && vis_weight == 0 && !prm.oks_indicator && !use_keypoints_for_center,
                "simota_assign: oks_weight, vis_weight, dynamic_k_indicator='oks' and use_keypoints_for_center "
                "need pred_keypoints");
    return prm;
  }
  TORCH_CHECK(pred_keypoints->dim() == 4 && pred_keypoints->size(3) == 2,
              "simota_assign: pred_keypoints must be [B,P,K,2], got ", pred_keypoints->sizes());
  const int64_t K = pred_keypoints->size(2);
  prm.K = K;
  check_float_tensor(*pred_keypoints, "pred_keypoints", {B, P, K, 2}, priors);
  check_float_tensor(required(pred_keypoints_visible, "pred_keypoints_visible"), "pred_keypoints_visible", {B, P, K},
                     priors);
  check_float_tensor(required(gt_keypoints, "gt_keypoints"), "gt_keypoints", {B, G, K, 2}, priors);
  check_float_tensor(required(gt_keypoints_visible, "gt_keypoints_visible"), "gt_keypoints_visible", {B, G, K},
                     priors);
  check_float_tensor(required(gt_areas, "gt_areas"), "gt_areas", {B, G}, priors);
  check_float_tensor(required(sigmas, "sigmas"), "sigmas", {K}, priors);
  return prm;
}

SimOTABatch make_simota_batch(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const std::optional<at::Tensor>& pred_keypoints, const std::optional<at::Tensor>& pred_keypoints_visible,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_keypoints, const std::optional<at::Tensor>& gt_keypoints_visible,
    const std::optional<at::Tensor>& gt_areas, const std::optional<at::Tensor>& sigmas, const simota::Params& prm) {
  SimOTABatch batch;
  auto& owners = batch.owners;
  simota::ImageData& img = batch.base;
  const int64_t B = pred_bboxes.size(0);
  img.priors = keep<float>(owners, priors);
  img.boxes = keep<float>(owners, pred_bboxes);
  img.scores = keep<float>(owners, pred_scores);
  img.kpts = keep_optional<float>(owners, pred_keypoints);
  img.kpt_vis = keep_optional<float>(owners, pred_keypoints_visible);
  img.gt_boxes = keep<float>(owners, gt_bboxes);
  img.gt_labels = keep<int64_t>(owners, gt_labels);
  img.gt_kpts = keep_optional<float>(owners, gt_keypoints);
  img.gt_vis = keep_optional<float>(owners, gt_keypoints_visible);
  img.gt_areas = keep_optional<float>(owners, gt_areas);
  img.sigmas = keep_optional<float>(owners, sigmas);
  img.gt_center = keep<float>(owners, at::empty({B, prm.G, 2}, priors.options()));
  img.gt_kpt_weight = keep<float>(owners, at::empty({B, prm.G, prm.K}, priors.options()));
  img.cls_neg_sum = keep<double>(owners, at::empty({B, prm.P}, priors.options().dtype(at::kDouble)));
  img.num_gt = 0;
  batch.num_gts = keep<int64_t>(owners, num_gts);
  return batch;
}

}  // namespace fastops

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "simota_assign(Tensor priors, Tensor pred_bboxes, Tensor pred_scores, Tensor? pred_keypoints, "
      "Tensor? pred_keypoints_visible, Tensor gt_bboxes, Tensor gt_labels, Tensor num_gts, Tensor? gt_keypoints, "
      "Tensor? gt_keypoints_visible, Tensor? gt_areas, Tensor? sigmas, float center_radius, int candidate_topk, "
      "float iou_weight, float cls_weight, float oks_weight, float vis_weight, str dynamic_k_indicator, "
      "bool use_keypoints_for_center) -> (Tensor assigned_gt_inds, Tensor max_overlaps, Tensor assigned_labels)");
}
