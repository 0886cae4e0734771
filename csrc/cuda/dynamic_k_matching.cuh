// The dynamic-k matching of the CUDA assigner kernels (simota_assign, dynamic_soft_label_assign),
// after their pair kernels: one block per (image, gt) selects its dynamic_k cheapest priors, then
// one thread per prior resolves conflicts and writes the outputs. The ranking and NaN rules are
// those of common/dynamic_k.h, as in the CPU kernels.
//
// `Pairs` is the op's view of its pairs: static op_name(), cost(b, g, p) and indicator(b, g, p)
// (the dynamic-k indicator, also the overlap written for a match), valid for real gts and valid
// priors.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <limits>

#include "common/dynamic_k.h"

namespace fastops {
namespace dynamic_k {

constexpr int kThreads = 256;
constexpr int kSelectThreads = 256;

// Grid size of a one-thread-per-item launch; the int64 count must fit gridDim.x.
inline unsigned grid_of(const char* op, int64_t items, int64_t items_per_block, const char* what) {
  const int64_t blocks = (items + items_per_block - 1) / items_per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op, ": ", items, " ", what,
              " exceed the CUDA grid limit; split the batch");
  return static_cast<unsigned>(blocks);
}

// num_gts[b], asserted to lie in [0, G] and clamped there, so that no kernel reads past the gt
// padding before the failed assert stops the stream.
__device__ __forceinline__ int64_t gt_count(const char* op, const int64_t* num_gts, int64_t b, int64_t G) {
  const int64_t n = num_gts[b];
  CUDA_KERNEL_ASSERT_PRINTF(n >= 0 && n <= G, FASTOPS_NUM_GTS_MSG, op, static_cast<long long>(b),
                            static_cast<long long>(n), static_cast<long long>(G));
  return n < 0 ? 0 : (n > G ? G : n);
}

__device__ __forceinline__ void check_gt_label(const char* op, int64_t label, int64_t b, int64_t g, int64_t C) {
  CUDA_KERNEL_ASSERT_PRINTF(label >= 0 && label < C, FASTOPS_GT_LABEL_MSG, op, static_cast<long long>(b),
                            static_cast<long long>(g), static_cast<long long>(label), static_cast<long long>(C));
}

struct MatchShape {
  int64_t B, P, G, candidate_topk;
  float unmatched_overlap;  // max_overlaps of a prior left unmatched in an image with matches
};

// Block-wide minimum of (key, idx) under ranks_before; every thread gets the result.
inline __device__ void block_min(float& key, int64_t& idx) {
  __shared__ float keys[kSelectThreads / 32];
  __shared__ int64_t idxs[kSelectThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other_key = __shfl_down_sync(0xffffffff, key, offset);
    const int64_t other_idx = __shfl_down_sync(0xffffffff, idx, offset);
    if (ranks_before(other_key, other_idx, key, idx)) {
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
    if (ranks_before(keys[w], idxs[w], key, idx)) {
      key = keys[w];
      idx = idxs[w];
    }
  }
  __syncthreads();
}

// The next smallest valid (key_of(p), p) strictly after (prev_key, prev_idx); idx -1 if none.
// NaN keys are never taken; ±inf are (the "none yet" state is (+inf, INT64_MAX), after every p).
template <typename KeyOf>
__device__ void next_smallest(KeyOf key_of, const uint8_t* valid, int64_t P, float prev_key, int64_t prev_idx,
                              float& key, int64_t& idx) {
  key = INFINITY;
  idx = INT64_MAX;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    if (!valid[p]) continue;
    const float k = key_of(p);
    if (!is_nan(k) && ranks_before(prev_key, prev_idx, k, p) && ranks_before(k, p, key, idx)) {
      key = k;
      idx = p;
    }
  }
  block_min(key, idx);
  if (idx == INT64_MAX) idx = -1;
}

template <typename Pairs>
__global__ void select_per_gt(Pairs pairs, MatchShape s, const int64_t* num_gts, const uint8_t* valid,
                              const int* num_valid, int* times_picked, int64_t* picked_by) {
  const int64_t b = blockIdx.x / s.G, g = blockIdx.x % s.G;
  if (g >= gt_count(Pairs::op_name(), num_gts, b, s.G) || num_valid[b] == 0) return;
  const uint8_t* image_valid = valid + b * s.P;
  // dynamic_k: sum of the candidate_topk largest indicators, largest first (as torch.topk + sum)
  const int64_t candidates = min(s.candidate_topk, static_cast<int64_t>(num_valid[b]));
  auto negated_indicator = [&](int64_t p) { return -pairs.indicator(b, g, p); };
  float total = 0.f, key = -INFINITY;  // (-inf, -1) is before every candidate
  int64_t idx = -1;
  for (int64_t r = 0; r < candidates; ++r) {
    next_smallest(negated_indicator, image_valid, s.P, key, idx, key, idx);
    if (idx < 0) break;
    total = add_rn(total, -key);
  }
  const int64_t k = min(dynamic_k_of_sum(total), static_cast<int64_t>(num_valid[b]));
  auto cost = [&](int64_t p) { return pairs.cost(b, g, p); };
  key = -INFINITY;
  idx = -1;
  for (int64_t r = 0; r < k; ++r) {
    next_smallest(cost, image_valid, s.P, key, idx, key, idx);
    if (idx < 0) break;
    if (threadIdx.x == 0) {
      atomicAdd(times_picked + b * s.P + idx, 1);
      picked_by[b * s.P + idx] = g;
    }
  }
}

template <typename Pairs>
__global__ void resolve_priors(Pairs pairs, MatchShape s, const int64_t* num_gts, const int64_t* gt_labels,
                               const int* num_valid, const int* times_picked, const int64_t* picked_by,
                               int64_t* gt_inds, float* overlaps, int64_t* labels) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= s.B * s.P) return;
  const int64_t b = i / s.P, p = i % s.P, num_gt = gt_count(Pairs::op_name(), num_gts, b, s.G);
  gt_inds[i] = 0;
  labels[i] = -1;
  overlaps[i] = (num_gt == 0 || num_valid[b] == 0) ? 0.f : s.unmatched_overlap;  // stock: zeros if empty
  if (times_picked[i] == 0) return;
  int64_t g = picked_by[i];
  if (times_picked[i] > 1) {  // argmin of the full cost row
    g = -1;
    float best_cost = 0.f;
    for (int64_t h = 0; h < num_gt; ++h) {
      const float c = pairs.cost(b, h, p);
      if (beats_best_cost(c, best_cost, g >= 0)) {
        g = h;
        best_cost = c;
      }
    }
  }
  gt_inds[i] = g + 1;
  labels[i] = gt_labels[b * s.G + g];
  overlaps[i] = pairs.indicator(b, g, p);
}

// Runs the matching on the current stream: `valid` [B, P] flags and `num_valid` [B] come from the
// op's own kernels; the outputs are [B, P].
template <typename Pairs>
void match_on_stream(const Pairs& pairs, const MatchShape& s, const int64_t* num_gts, const int64_t* gt_labels,
                     const at::Tensor& valid, const at::Tensor& num_valid, const at::Tensor& gt_inds,
                     const at::Tensor& overlaps, const at::Tensor& labels) {
  auto stream = at::cuda::getCurrentCUDAStream();
  auto times_picked = at::zeros({s.B, s.P}, num_valid.options());
  auto picked_by = at::empty({s.B, s.P}, gt_inds.options());
  if (s.G > 0) {
    select_per_gt<<<grid_of(Pairs::op_name(), s.B * s.G, 1, "gts"), kSelectThreads, 0, stream>>>(
        pairs, s, num_gts, valid.data_ptr<uint8_t>(), num_valid.data_ptr<int>(), times_picked.data_ptr<int>(),
        picked_by.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  resolve_priors<<<grid_of(Pairs::op_name(), s.B * s.P, kThreads, "priors"), kThreads, 0, stream>>>(
      pairs, s, num_gts, gt_labels, num_valid.data_ptr<int>(), times_picked.data_ptr<int>(),
      picked_by.data_ptr<int64_t>(), gt_inds.data_ptr<int64_t>(), overlaps.data_ptr<float>(),
      labels.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dynamic_k
}  // namespace fastops
