// Raw-pointer views of the mlecc_loss inputs, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>
#include <vector>

#include "common/mlecc_math.h"

namespace fastops {
namespace mlecc {

template <typename T>
C10_HOST_DEVICE inline bool is_finite(T v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

template <typename T>
C10_HOST_DEVICE inline T weight_at(const T* weight, int64_t row) {
  return weight == nullptr ? T(1) : weight[row];
}

// from_probs: [N,K,Wx] / [N,K,Wy] heatmaps, optional [N,K] weight; rows are (instance, keypoint).
template <typename T>
struct ProbsArgs {
  const T* pred_x;
  const T* pred_y;
  const T* target_x;
  const T* target_y;
  const T* weight;  // null: weight 1
  int64_t wx, wy;
};

// from_logits; rows are (instance, keypoint), row = n * k + keypoint.
template <typename T>
struct LogitsArgs {
  const T* logits_x;   // [N,K,Wx]
  const T* logits_y;   // [N,K,Wy]
  const T* keypoints;  // [N,K,2]
  const T* bbox_cs;    // [N,4] (cx, cy, w, h)
  const T* sigmas;     // [N,K]
  const T* areas;      // [N]
  const T* weight;     // [N,K] or null
  const T* x_bins;     // [Wx] base bins
  const T* y_bins;     // [Wy]
  int64_t k, wx, wy;

  C10_HOST_DEVICE const T* logits(int64_t row, int dim) const {
    return dim == 0 ? logits_x + row * wx : logits_y + row * wy;
  }
  C10_HOST_DEVICE const T* bins(int dim) const { return dim == 0 ? x_bins : y_bins; }
  C10_HOST_DEVICE int64_t num_bins(int dim) const { return dim == 0 ? wx : wy; }

  C10_HOST_DEVICE LaplaceAxis<T> target(int64_t row, int dim) const {
    const int64_t n = row / k;
    return {keypoints[row * 2 + dim], bbox_cs[n * 4 + dim], bbox_cs[n * 4 + 2 + dim], area_scale(areas[n]),
            clipped_sigma(sigmas[row])};
  }

  // Validity of the row's inputs other than the logits (those are checked while reduced).
  C10_HOST_DEVICE bool scalars_valid(int64_t row) const {
    const int64_t n = row / k;
    const T* box = bbox_cs + n * 4;
    return is_finite(keypoints[row * 2]) && is_finite(keypoints[row * 2 + 1]) && is_finite(box[0]) &&
           is_finite(box[1]) && is_finite(box[2]) && is_finite(box[3]) && is_finite(sigmas[row]) &&
           is_finite(areas[n]) && areas[n] >= T(0) && is_finite(weight_at(weight, row));
  }
};

// Contiguous inputs, kept alive while a kernel reads their pointers.
struct ContiguousInputs {
  std::vector<at::Tensor> tensors;
  std::optional<at::Tensor> weight;

  ContiguousInputs(std::initializer_list<at::Tensor> inputs, const std::optional<at::Tensor>& weight_in) {
    for (const auto& t : inputs) tensors.push_back(t.contiguous());
    if (weight_in.has_value()) weight = weight_in->contiguous();
  }
  template <typename T>
  const T* weight_data() const {
    return weight.has_value() ? weight->data_ptr<T>() : nullptr;
  }
  // Inputs in the order pred_x, pred_y, target_x, target_y.
  template <typename T>
  ProbsArgs<T> probs_args() const {
    const auto& t = tensors;
    return {t[0].data_ptr<T>(), t[1].data_ptr<T>(), t[2].data_ptr<T>(), t[3].data_ptr<T>(),
            weight_data<T>(), t[0].size(2), t[1].size(2)};
  }
  // Inputs in the order logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, x_bins, y_bins.
  template <typename T>
  LogitsArgs<T> logits_args() const {
    const auto& t = tensors;
    return {t[0].data_ptr<T>(), t[1].data_ptr<T>(), t[2].data_ptr<T>(), t[3].data_ptr<T>(),
            t[4].data_ptr<T>(), t[5].data_ptr<T>(), weight_data<T>(), t[6].data_ptr<T>(),
            t[7].data_ptr<T>(), t[0].size(1), t[0].size(2), t[1].size(2)};
  }
};

}  // namespace mlecc
}  // namespace fastops
