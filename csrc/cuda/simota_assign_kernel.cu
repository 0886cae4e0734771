// simota_assign on CUDA: one launch sequence for the whole batch, no host sync (num_gts and the
// labels are validated by device-side asserts with the CPU kernel's messages).
//   prepare_gts     (b, g): gt centres and OKS weights
//   mark_valid      (b, p): valid-prior flags, per-image valid counts, class BCE sums
//   pair_costs      (b, g, p): cost and dynamic-k indicator of every valid pair, [B, G, P]
//   select_per_gt   one block per (b, g): dynamic_k, then its dynamic_k cheapest priors
//   resolve_priors  (b, p): conflict argmin over the cost column, outputs
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "ops/simota_assign.h"

namespace fastops {
namespace {

using simota::ImageData;
using simota::Params;

constexpr int kThreads = 256;
constexpr int kSelectThreads = 256;

// Grid size of a one-thread-per-item launch; the int64 count must fit gridDim.x.
unsigned grid_of(int64_t items, int64_t items_per_block, const char* what) {
  const int64_t blocks = (items + items_per_block - 1) / items_per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "simota_assign: ", items, " ", what,
              " exceed the CUDA grid limit; split the batch");
  return static_cast<unsigned>(blocks);
}

// num_gts[b], asserted to lie in [0, G] and clamped there, so that no kernel reads past the gt
// padding before the failed assert stops the stream.
__device__ int64_t gt_count(const int64_t* num_gts, int64_t b, int64_t G) {
  const int64_t n = num_gts[b];
  CUDA_KERNEL_ASSERT_PRINTF(n >= 0 && n <= G, FASTOPS_SIMOTA_NUM_GTS_MSG, static_cast<long long>(b),
                            static_cast<long long>(n), static_cast<long long>(G));
  return n < 0 ? 0 : (n > G ? G : n);
}

__global__ void prepare_gts(ImageData base, Params prm, const int64_t* num_gts, int64_t B) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.G) return;
  const int64_t b = i / prm.G, g = i % prm.G, num_gt = gt_count(num_gts, b, prm.G);
  if (g >= num_gt) return;
  const int64_t label = base.gt_labels[i];
  CUDA_KERNEL_ASSERT_PRINTF(label >= 0 && label < prm.C, FASTOPS_SIMOTA_LABEL_MSG, static_cast<long long>(b),
                            static_cast<long long>(g), static_cast<long long>(label), static_cast<long long>(prm.C));
  simota::prepare_gt(simota::image_at(base, prm, b, num_gt), prm, g);
}

__global__ void mark_valid(ImageData base, Params prm, const int64_t* num_gts, int64_t B, uint8_t* valid,
                           int* num_valid) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.P) return;
  const int64_t b = i / prm.P, p = i % prm.P;
  const ImageData img = simota::image_at(base, prm, b, gt_count(num_gts, b, prm.G));
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
  const int64_t num_gt = gt_count(num_gts, b, prm.G);
  if (g >= num_gt || !valid[b * prm.P + p]) return;
  const ImageData img = simota::image_at(base, prm, b, num_gt);
  const simota::PairSim sim = simota::pair_similarity(img, prm, p, g);
  cost[i] = simota::pair_cost(img, prm, p, g, sim);
  indicator[i] = sim.indicator(prm);
}

// Order of the top-k scans: ascending key, then ascending index.
__device__ __forceinline__ bool before(float key, int64_t idx, float other_key, int64_t other_idx) {
  return key < other_key || (key == other_key && idx < other_idx);
}

// Block-wide minimum of (key, idx) under `before`; every thread gets the result.
__device__ void block_min(float& key, int64_t& idx) {
  __shared__ float keys[kSelectThreads / 32];
  __shared__ int64_t idxs[kSelectThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other_key = __shfl_down_sync(0xffffffff, key, offset);
    const int64_t other_idx = __shfl_down_sync(0xffffffff, idx, offset);
    if (before(other_key, other_idx, key, idx)) {
      key = other_key;
      idx = other_idx;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    keys[warp] = key;
    idxs[warp] = idx;
  }
  __syncthreads();
  key = keys[0];
  idx = idxs[0];
  for (int w = 1; w < kSelectThreads / 32; ++w) {
    if (before(keys[w], idxs[w], key, idx)) {
      key = keys[w];
      idx = idxs[w];
    }
  }
  __syncthreads();
}

// The next smallest valid (sign * value, p) strictly after (prev_key, prev_idx); idx -1 if none.
// NaN keys are never taken; ±inf are (the "none yet" state is (+inf, INT64_MAX), after every p).
__device__ void next_smallest(const float* values, float sign, const uint8_t* valid, int64_t P, float prev_key,
                              int64_t prev_idx, float& key, int64_t& idx) {
  key = INFINITY;
  idx = INT64_MAX;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    if (!valid[p]) continue;
    const float k = sign * values[p];
    if (!simota::is_nan(k) && before(prev_key, prev_idx, k, p) && before(k, p, key, idx)) {
      key = k;
      idx = p;
    }
  }
  block_min(key, idx);
  if (idx == INT64_MAX) idx = -1;
}

__global__ void select_per_gt(Params prm, const int64_t* num_gts, const uint8_t* valid, const int* num_valid,
                              const float* cost, const float* indicator, int* times_picked, int64_t* picked_by) {
  const int64_t b = blockIdx.x / prm.G, g = blockIdx.x % prm.G;
  if (g >= gt_count(num_gts, b, prm.G) || num_valid[b] == 0) return;
  const int64_t P = prm.P, column = blockIdx.x * P;
  const uint8_t* image_valid = valid + b * P;
  // dynamic_k: sum of the candidate_topk largest indicators, largest first (as torch.topk + sum)
  const int64_t candidates = min(prm.candidate_topk, static_cast<int64_t>(num_valid[b]));
  float total = 0.f, key = -INFINITY;  // (-inf, -1) is before every candidate
  int64_t idx = -1;
  for (int64_t r = 0; r < candidates; ++r) {
    next_smallest(indicator + column, -1.f, image_valid, P, key, idx, key, idx);
    if (idx < 0) break;
    total = add_rn(total, -key);
  }
  const int64_t k = min(simota::dynamic_k_of_sum(total), static_cast<int64_t>(num_valid[b]));
  key = -INFINITY;
  idx = -1;
  for (int64_t r = 0; r < k; ++r) {
    next_smallest(cost + column, 1.f, image_valid, P, key, idx, key, idx);
    if (idx < 0) break;
    if (threadIdx.x == 0) {
      atomicAdd(times_picked + b * P + idx, 1);
      picked_by[b * P + idx] = g;
    }
  }
}

__global__ void resolve_priors(Params prm, const int64_t* num_gts, const int64_t* gt_labels, int64_t B,
                               const int* num_valid, const int* times_picked, const int64_t* picked_by,
                               const float* cost, const float* indicator, int64_t* gt_inds, float* overlaps,
                               int64_t* labels) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * prm.P) return;
  const int64_t b = i / prm.P, p = i % prm.P, num_gt = gt_count(num_gts, b, prm.G);
  gt_inds[i] = 0;
  labels[i] = -1;
  overlaps[i] = (num_gt == 0 || num_valid[b] == 0) ? 0.f : -simota::kInf;  // stock: zeros for empty images
  if (times_picked[i] == 0) return;
  int64_t g = picked_by[i];
  if (times_picked[i] > 1) {  // argmin of the full cost row (common/simota_math.h)
    const float* column = cost + b * prm.G * prm.P + p;
    g = -1;
    for (int64_t h = 0; h < num_gt; ++h) {
      if (simota::beats_best_cost(column[h * prm.P], g < 0 ? 0.f : column[g * prm.P], g >= 0)) g = h;
    }
  }
  gt_inds[i] = g + 1;
  labels[i] = gt_labels[b * prm.G + g];
  overlaps[i] = indicator[(b * prm.G + g) * prm.P + p];
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
  auto int_options = priors.options().dtype(at::kInt);
  auto valid = at::empty({B, P}, priors.options().dtype(at::kByte));
  auto num_valid = at::zeros({B}, int_options);
  auto times_picked = at::zeros({B, P}, int_options);
  auto picked_by = at::empty({B, P}, gt_labels.options());
  auto cost = at::empty({B, G, P}, priors.options());
  auto indicator = at::empty({B, G, P}, priors.options());
  const int64_t* gts = batch.num_gts;
  auto stream = at::cuda::getCurrentCUDAStream();

  if (B * G > 0) {
    prepare_gts<<<grid_of(B * G, kThreads, "gts"), kThreads, 0, stream>>>(batch.base, prm, gts, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  mark_valid<<<grid_of(B * P, kThreads, "priors"), kThreads, 0, stream>>>(batch.base, prm, gts, B, valid.data_ptr<uint8_t>(),
                                                          num_valid.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (B * G > 0) {
    pair_costs<<<grid_of(B * G * P, kThreads, "(gt, prior) pairs"), kThreads, 0, stream>>>(batch.base, prm, gts, B, valid.data_ptr<uint8_t>(),
                                                                cost.data_ptr<float>(), indicator.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    select_per_gt<<<grid_of(B * G, 1, "gts"), kSelectThreads, 0, stream>>>(
        prm, gts, valid.data_ptr<uint8_t>(), num_valid.data_ptr<int>(), cost.data_ptr<float>(),
        indicator.data_ptr<float>(), times_picked.data_ptr<int>(), picked_by.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  resolve_priors<<<grid_of(B * P, kThreads, "priors"), kThreads, 0, stream>>>(
      prm, gts, batch.base.gt_labels, B, num_valid.data_ptr<int>(), times_picked.data_ptr<int>(),
      picked_by.data_ptr<int64_t>(), cost.data_ptr<float>(), indicator.data_ptr<float>(),
      gt_inds.data_ptr<int64_t>(), overlaps.data_ptr<float>(), labels.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gt_inds, overlaps, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) { m.impl("simota_assign", &simota_assign_cuda); }

}  // namespace fastops
