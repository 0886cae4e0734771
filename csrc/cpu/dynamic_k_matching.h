// The dynamic-k matching of the CPU assigner kernels (simota_assign, dynamic_soft_label_assign):
// per-gt top-k selection, dynamic_k, conflict resolution and the host checks of num_gts and labels.
// The ranking and NaN rules are those of common/dynamic_k.h, as in the CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "common/dynamic_k.h"
#include "cpu/printf_check.h"

namespace fastops {
namespace dynamic_k {

// The `cap` smallest (key, index) pairs seen, ascending; equal keys keep the lower index.
class SmallestK {
 public:
  explicit SmallestK(int64_t cap) : cap_(cap) {
    keys_.reserve(cap);
    idx_.reserve(cap);
  }

  // NaN keys are never kept.
  void push(float key, int64_t idx) {
    if (cap_ == 0 || is_nan(key)) return;
    if (size() == cap_ && !ranks_before(key, idx, keys_.back(), idx_.back())) return;
    if (size() < cap_) {
      keys_.push_back(key);
      idx_.push_back(idx);
    }
    int64_t pos = size() - 1;
    for (; pos > 0 && ranks_before(key, idx, keys_[pos - 1], idx_[pos - 1]); --pos) {
      keys_[pos] = keys_[pos - 1];
      idx_[pos] = idx_[pos - 1];
    }
    keys_[pos] = key;
    idx_[pos] = idx;
  }

  int64_t size() const { return static_cast<int64_t>(keys_.size()); }
  int64_t capacity() const { return cap_; }
  float key(int64_t i) const { return keys_[i]; }
  int64_t index(int64_t i) const { return idx_[i]; }
  std::vector<int64_t> indices() const { return idx_; }

 private:
  int64_t cap_;
  std::vector<float> keys_;
  std::vector<int64_t> idx_;
};

// dynamic_k = max(1, trunc(sum of the candidate_topk largest indicators)), summed largest first
// in float32 as torch sums the sorted torch.topk output; at most the number of valid priors.
inline int64_t dynamic_k_of(const SmallestK& largest_negated, int64_t num_valid) {
  float total = 0.f;
  for (int64_t i = 0; i < largest_negated.size(); ++i) total = add_rn(total, -largest_negated.key(i));
  return std::min(dynamic_k_of_sum(total), num_valid);
}

// The gt of lowest cost(g) over g < num_gt (first on ties, NaN never), -1 if every cost is NaN.
template <typename CostOfGt>
int64_t cheapest_gt(int64_t num_gt, CostOfGt cost) {
  int64_t best = -1;
  float best_cost = INFINITY;
  for (int64_t g = 0; g < num_gt; ++g) {
    const float c = cost(g);
    if (beats_best_cost(c, best_cost, best >= 0)) {
      best = g;
      best_cost = c;
    }
  }
  return best;
}

// One image's [P] output rows.
struct ImageRows {
  int64_t* gt_inds;
  float* overlaps;
  int64_t* labels;
};

// Writes the rows of an image with gts and valid priors from its per-gt picks (positions in
// `prior_of`, the image's valid prior indices): unmatched priors keep gt 0, label -1 and
// `unmatched_overlap`; a picked prior goes to the gt that picked it or, picked by several, to the
// gt of lowest cost(p, g) over all gts (those that picked it have a cost that is not NaN), with
// overlap(p, g).
template <typename CostOf, typename OverlapOf>
void write_image_rows(const std::vector<int64_t>& prior_of, const std::vector<int64_t>* picked, int64_t num_gt,
                      const int64_t* gt_labels, int64_t num_priors, float unmatched_overlap, CostOf cost,
                      OverlapOf overlap, ImageRows rows) {
  const int64_t num_valid = static_cast<int64_t>(prior_of.size());
  std::vector<int32_t> times_picked(num_valid, 0);
  std::vector<int64_t> picked_by(num_valid, 0);
  for (int64_t g = 0; g < num_gt; ++g) {
    for (int64_t v : picked[g]) {
      ++times_picked[v];
      picked_by[v] = g;
    }
  }
  std::fill(rows.overlaps, rows.overlaps + num_priors, unmatched_overlap);
  for (int64_t v = 0; v < num_valid; ++v) {
    if (times_picked[v] == 0) continue;
    const int64_t p = prior_of[v];
    const int64_t g =
        times_picked[v] > 1 ? cheapest_gt(num_gt, [&](int64_t h) { return cost(p, h); }) : picked_by[v];
    rows.gt_inds[p] = g + 1;
    rows.labels[p] = gt_labels[g];
    rows.overlaps[p] = overlap(p, g);
  }
}

// num_gts in [0, G] and the labels of the real gts in [0, C), read on the host (the CUDA kernels
// assert the same with the same messages).
inline void check_gt_values(const char* op, const at::Tensor& num_gts_in, const at::Tensor& gt_labels_in, int64_t C) {
  const auto num_gts = num_gts_in.contiguous(), gt_labels = gt_labels_in.contiguous();
  const int64_t B = gt_labels.size(0), G = gt_labels.size(1);
  const int64_t* n = num_gts.data_ptr<int64_t>();
  const int64_t* labels = gt_labels.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    if (n[b] < 0 || n[b] > G) {
      fail_printf(FASTOPS_NUM_GTS_MSG, op, static_cast<long long>(b), static_cast<long long>(n[b]),
                  static_cast<long long>(G));
    }
    for (int64_t g = 0; g < n[b]; ++g) {
      const int64_t y = labels[b * G + g];
      if (y < 0 || y >= C) {
        fail_printf(FASTOPS_GT_LABEL_MSG, op, static_cast<long long>(b), static_cast<long long>(g),
                    static_cast<long long>(y), static_cast<long long>(C));
      }
    }
  }
}

}  // namespace dynamic_k
}  // namespace fastops
