// dynamic_soft_label_assign on CUDA: one launch sequence for the whole batch, no host sync (num_gts
// and the labels are validated by device-side asserts with the CPU kernel's messages).
//   mark_valid      (b, p): valid-prior flags, per-image valid counts, class sums
//   pair_costs      (b, g, p): cost of every valid pair, [B, G, P] (the IoU is recomputed on read)
//   then the shared dynamic-k matching (cuda/dynamic_k_matching.cuh)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/dynamic_k_matching.cuh"
#include "ops/dynamic_soft_label_assign.h"

namespace fastops {
namespace {

using dynamic_k::gt_count;
using dynamic_k::grid_of;
using dynamic_k::kThreads;
using soft_label::ImageData;
using soft_label::Params;

// The [B, G, P] costs written by pair_costs and the IoU as indicator, as the matching reads them.
struct SoftLabelPairs {
  const float* costs;
  ImageData base;
  Params prm;

  FASTOPS_HD static const char* op_name() { return "dynamic_soft_label_assign"; }
  __device__ float cost(int64_t b, int64_t g, int64_t p) const { return costs[(b * prm.G + g) * prm.P + p]; }
  __device__ float indicator(int64_t b, int64_t g, int64_t p) const {
    return dynamic_k::box_iou(base.boxes + (b * prm.P + p) * 4, base.gt_boxes + (b * prm.G + g) * 4);
  }
};

__global__ void mark_valid(ImageData base, Params prm, const int64_t* num_gts, int64_t B, uint8_t* valid,
                           int* num_valid) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.P) return;
  const int64_t b = i / prm.P, p = i % prm.P;
  const ImageData img = soft_label::image_at(base, prm, b, gt_count(SoftLabelPairs::op_name(), num_gts, b, prm.G));
  const bool is_valid = soft_label::prior_is_valid(img, p);
  valid[i] = is_valid;
  if (!is_valid) return;
  img.cls_neg_sum[p] = soft_label::class_neg_sum(img, prm, p);
  atomicAdd(num_valid + b, 1);
}

__global__ void pair_costs(ImageData base, Params prm, const int64_t* num_gts, int64_t B, const uint8_t* valid,
                           float* cost) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.G * prm.P) return;
  const int64_t b = i / (prm.G * prm.P), g = (i / prm.P) % prm.G, p = i % prm.P;
  const int64_t num_gt = gt_count(SoftLabelPairs::op_name(), num_gts, b, prm.G);
  if (g >= num_gt) return;
  const ImageData img = soft_label::image_at(base, prm, b, num_gt);
  if (p == 0) dynamic_k::check_gt_label(SoftLabelPairs::op_name(), img.gt_labels[g], b, g, prm.C);
  if (!valid[b * prm.P + p]) return;
  cost[i] = soft_label::pair_cost(img, prm, p, g, soft_label::pair_iou(img, p, g), img.cls_neg_sum[p]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_soft_label_assign_cuda(
    const at::Tensor& priors, const at::Tensor& pred_bboxes, const at::Tensor& pred_scores,
    const at::Tensor& gt_bboxes, const at::Tensor& gt_labels, const at::Tensor& num_gts,
    const std::optional<at::Tensor>& gt_centers, double soft_center_radius, int64_t topk, double iou_weight) {
  const Params prm = check_dynamic_soft_label_assign_args(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels,
                                                          num_gts, gt_centers, soft_center_radius, topk, iou_weight);
  const c10::cuda::CUDAGuard guard(priors.device());
  const int64_t B = pred_bboxes.size(0), P = prm.P, G = prm.G;
  auto gt_inds = at::empty({B, P}, gt_labels.options());
  auto overlaps = at::empty({B, P}, priors.options());
  auto labels = at::empty({B, P}, gt_labels.options());
  if (B * P == 0) return {gt_inds, overlaps, labels};

  const SoftLabelBatch batch =
      make_soft_label_batch(priors, pred_bboxes, pred_scores, gt_bboxes, gt_labels, num_gts, gt_centers, prm);
  auto valid = at::empty({B, P}, priors.options().dtype(at::kByte));
  auto num_valid = at::zeros({B}, priors.options().dtype(at::kInt));
  auto cost = at::empty({B, G, P}, priors.options());
  const char* op = SoftLabelPairs::op_name();
  auto stream = at::cuda::getCurrentCUDAStream();

  mark_valid<<<grid_of(op, B * P, kThreads, "priors"), kThreads, 0, stream>>>(
      batch.base, prm, batch.num_gts, B, valid.data_ptr<uint8_t>(), num_valid.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (B * G > 0) {
    pair_costs<<<grid_of(op, B * G * P, kThreads, "(gt, prior) pairs"), kThreads, 0, stream>>>(
        batch.base, prm, batch.num_gts, B, valid.data_ptr<uint8_t>(), cost.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const SoftLabelPairs pairs{cost.data_ptr<float>(), batch.base, prm};
  const dynamic_k::MatchShape shape{B, P, G, prm.topk, soft_label::kUnmatchedOverlap};
  dynamic_k::match_on_stream(pairs, shape, batch.num_gts, batch.base.gt_labels, valid, num_valid, gt_inds, overlaps,
                             labels);
  return {gt_inds, overlaps, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) { m.impl("dynamic_soft_label_assign", &dynamic_soft_label_assign_cuda); }

}  // namespace fastops
