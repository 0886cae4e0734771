// simota_assign on CUDA: one launch sequence for the whole batch, no host sync (num_gts and the
// labels are validated by device-side asserts with the CPU kernel's messages).
//   prepare_gts     (b, g): gt centres and OKS weights
//   mark_valid      (b, p): valid-prior flags, per-image valid counts, class BCE sums
//   pair_costs      (b, g, p): cost and dynamic-k indicator of every valid pair, [B, G, P]
//   then the shared dynamic-k matching (cuda/dynamic_k_matching.cuh) on those [B, G, P] arrays
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/dynamic_k_matching.cuh"
#include "ops/simota_assign.h"

namespace fastops {
namespace {

using simota::ImageData;
using simota::Params;

using dynamic_k::gt_count;
using dynamic_k::grid_of;
using dynamic_k::kThreads;

// The [B, G, P] cost and indicator arrays written by pair_costs, as the matching reads them.
struct CostArrays {
  const float* costs;
  const float* indicators;
  int64_t P, G;

  FASTOPS_HD static const char* op_name() { return "simota_assign"; }
  __device__ float cost(int64_t b, int64_t g, int64_t p) const { return costs[(b * G + g) * P + p]; }
  __device__ float indicator(int64_t b, int64_t g, int64_t p) const { return indicators[(b * G + g) * P + p]; }
};

__global__ void prepare_gts(ImageData base, Params prm, const int64_t* num_gts, int64_t B) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.G) return;
  const int64_t b = i / prm.G, g = i % prm.G, num_gt = gt_count(CostArrays::op_name(), num_gts, b, prm.G);
  if (g >= num_gt) return;
  dynamic_k::check_gt_label(CostArrays::op_name(), base.gt_labels[i], b, g, prm.C);
  simota::prepare_gt(simota::image_at(base, prm, b, num_gt), prm, g);
}

__global__ void mark_valid(ImageData base, Params prm, const int64_t* num_gts, int64_t B, uint8_t* valid,
                           int* num_valid) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.P) return;
  const int64_t b = i / prm.P, p = i % prm.P;
  const ImageData img = simota::image_at(base, prm, b, gt_count(CostArrays::op_name(), num_gts, b, prm.G));
  const bool is_valid = simota::prior_is_valid(img, prm, p);
  valid[i] = is_valid;
  if (!is_valid) return;
  img.cls_neg_sum[p] = simota::class_neg_sum(img, prm, p);
  atomicAdd(num_valid + b, 1);
}

__global__ void pair_costs(ImageData base, Params prm, const int64_t* num_gts, int64_t B, const uint8_t* valid,
                           float* cost, float* indicator) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.G * prm.P) return;
  const int64_t b = i / (prm.G * prm.P), g = (i / prm.P) % prm.G, p = i % prm.P;
  const int64_t num_gt = gt_count(CostArrays::op_name(), num_gts, b, prm.G);
  if (g >= num_gt || !valid[b * prm.P + p]) return;
  const ImageData img = simota::image_at(base, prm, b, num_gt);
  const simota::PairSim sim = simota::pair_similarity(img, prm, p, g);
  cost[i] = simota::pair_cost(img, prm, p, g, sim);
  indicator[i] = sim.indicator(prm);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> simota_assign_cuda(
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
  const c10::cuda::CUDAGuard guard(priors.device());
  const int64_t B = pred_bboxes.size(0), P = prm.P, G = prm.G;
  auto gt_inds = at::empty({B, P}, gt_labels.options());
  auto overlaps = at::empty({B, P}, priors.options());
  auto labels = at::empty({B, P}, gt_labels.options());
  if (B * P == 0) return {gt_inds, overlaps, labels};

  const SimOTABatch batch =
      make_simota_batch(priors, pred_bboxes, pred_scores, pred_keypoints, pred_keypoints_visible, gt_bboxes,
                        gt_labels, num_gts, gt_keypoints, gt_keypoints_visible, gt_areas, sigmas, prm);
  auto valid = at::empty({B, P}, priors.options().dtype(at::kByte));
  auto num_valid = at::zeros({B}, priors.options().dtype(at::kInt));
  auto cost = at::empty({B, G, P}, priors.options());
  auto indicator = at::empty({B, G, P}, priors.options());
  const int64_t* gts = batch.num_gts;
  auto stream = at::cuda::getCurrentCUDAStream();

  if (B * G > 0) {
    prepare_gts<<<grid_of(CostArrays::op_name(), B * G, kThreads, "gts"), kThreads, 0, stream>>>(batch.base, prm, gts, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  mark_valid<<<grid_of(CostArrays::op_name(), B * P, kThreads, "priors"), kThreads, 0, stream>>>(
      batch.base, prm, gts, B, valid.data_ptr<uint8_t>(), num_valid.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (B * G > 0) {
    pair_costs<<<grid_of(CostArrays::op_name(), B * G * P, kThreads, "(gt, prior) pairs"), kThreads, 0, stream>>>(
        batch.base, prm, gts, B, valid.data_ptr<uint8_t>(), cost.data_ptr<float>(), indicator.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const CostArrays pairs{cost.data_ptr<float>(), indicator.data_ptr<float>(), P, G};
  const dynamic_k::MatchShape shape{B, P, G, prm.candidate_topk, -simota::kInf};
  dynamic_k::match_on_stream(pairs, shape, gts, batch.base.gt_labels, valid, num_valid, gt_inds, overlaps, labels);
  return {gt_inds, overlaps, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) { m.impl("simota_assign", &simota_assign_cuda); }

}  // namespace fastops
