// CPU kernels of the fp16-safe clamped cross-entropy: rows in parallel, each row converted to the
// accumulation type once into an L1-resident buffer, clamped, then reduced with a vectorisable exp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include <vector>

#include "common/clamp_math.h"
#include "cpu/cephes_exp.h"
#include "cpu/isa.h"
#include "cpu/printf_check.h"
#include "ops/safe_cross_entropy.h"

namespace fastops {
namespace {

constexpr int64_t kRowGrain = 64;

FASTOPS_ROW_INLINE float vec_exp(float x) { return cephes::exp(x); }
FASTOPS_ROW_INLINE double vec_exp(double x) { return std::exp(x); }

struct RowStats {
  int64_t clamped = 0;
  int64_t nan = 0;

  void add(const RowStats& other) {
    clamped += other.clamped;
    nan += other.nan;
  }
};

// Row conversion to and from the accumulation type. fp16 goes through F16C 8 lanes at a time (the
// scalar c10::Half conversion does not vectorise); the other types are plain loops the compiler
// vectorises. All arithmetic then runs on L1-resident acc_t rows.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void load_row(const scalar_t* src, int64_t C, acc_t* dst) {
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) dst[j] = static_cast<acc_t>(src[j]);
}

template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void store_row(const acc_t* src, int64_t C, scalar_t* dst) {
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}

#ifdef __F16C__
template <>
FASTOPS_ROW_INLINE void load_row(const at::Half* src, int64_t C, float* dst) {
  int64_t j = 0;
  for (; j + 8 <= C; j += 8)
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  for (; j < C; ++j) dst[j] = static_cast<float>(src[j]);
}

template <>
FASTOPS_ROW_INLINE void store_row(const float* src, int64_t C, at::Half* dst) {
  int64_t j = 0;
  for (; j + 8 <= C; j += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
  for (; j < C; ++j) dst[j] = static_cast<at::Half>(src[j]);
}
#endif

// Clamps a row in place and returns its max (NaN ignored), adding to the counts. Most rows need no
// clamp: one read-only pass (max, min, and a sum of x * 0, NaN when any x is NaN or infinite)
// proves that, and only other rows pay for the counting and the writes.
template <typename acc_t>
FASTOPS_ROW_INLINE acc_t clamp_row(acc_t* x, int64_t C, acc_t bound, RowStats& stats) {
  acc_t row_max = -bound, row_min = bound, nonfinite = 0;
#pragma omp simd reduction(max : row_max) reduction(min : row_min) reduction(+ : nonfinite)
  for (int64_t j = 0; j < C; ++j) {
    const acc_t v = x[j];
    row_max = v > row_max ? v : row_max;
    row_min = v < row_min ? v : row_min;
    nonfinite += v * acc_t(0);
  }
  if (nonfinite == acc_t(0) && row_max <= bound && row_min >= -bound) return row_max;
  row_max = -bound;
  int64_t clamped = 0, nan = 0;
#pragma omp simd reduction(max : row_max) reduction(+ : clamped, nan)
  for (int64_t j = 0; j < C; ++j) {
    const acc_t v = x[j];
    clamped += changed_by_clamp(v, bound);
    nan += (v != v);
    const acc_t vc = clamp_keep_nan(v, bound);
    x[j] = vc;
    row_max = vc > row_max ? vc : row_max;
  }
  stats.clamped += clamped;
  stats.nan += nan;
  return row_max;
}

template <typename acc_t>
FASTOPS_ROW_INLINE acc_t sum_exp_shifted(const acc_t* x, int64_t C, acc_t shift) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < C; ++j) sum += vec_exp(x[j] - shift);
  return sum;
}

// In place on the converted row: dx_j = scale · (exp(clamp(x_j) − lse) − [j = label]), masked like
// torch.clamp's gradient unless straight-through.
template <typename acc_t>
FASTOPS_ROW_INLINE void softmax_row_grad(acc_t* x, int64_t C, int64_t label, acc_t scale, acc_t lse, acc_t bound,
                      bool straight_through) {
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) {
    const acc_t v = x[j];
    const acc_t d = scale * (vec_exp(clamp_keep_nan(v, bound) - lse) - acc_t(j == label));
    x[j] = (straight_through | inside_clamp(v, bound)) ? d : acc_t(0);
  }
}

// The inputs of the softmax variant's row loops.
template <typename scalar_t, typename acc_t>
struct SoftmaxRows {
  const scalar_t* logits;  // [N, C]
  const int64_t* labels;   // [N]
  const acc_t* weight;     // [C] or null
  int64_t C, ignore_index;
  acc_t bound;

  acc_t weight_of(int64_t label) const { return weight ? weight[label] : acc_t(1); }
};

// Forward of rows [begin, end): lse and weighted loss per row; returns the clamp counts.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE RowStats softmax_forward_rows(const SoftmaxRows<scalar_t, acc_t>& in, int64_t begin, int64_t end,
                                                 acc_t* loss_out, acc_t* lse_out) {
  const int64_t C = in.C;
  std::vector<acc_t> row(C);
  RowStats stats;
  for (int64_t i = begin; i < end; ++i) {
    load_row(in.logits + i * C, C, row.data());
    const acc_t row_max = clamp_row(row.data(), C, in.bound, stats);
    const acc_t row_lse = row_max + std::log(sum_exp_shifted(row.data(), C, row_max));
    lse_out[i] = row_lse;
    const int64_t label = in.labels[i];
    loss_out[i] = label == in.ignore_index ? acc_t(0) : in.weight_of(label) * (row_lse - row[label]);
  }
  return stats;
}

// Backward of rows [begin, end): d/dx_j [w_y (lse − x_y)] = w_y (softmax_j − [j = y]), zero where
// the row is ignored.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void softmax_backward_rows(const SoftmaxRows<scalar_t, acc_t>& in, const acc_t* grad_loss,
                                              const acc_t* lse, bool straight_through, int64_t begin, int64_t end,
                                              scalar_t* grad_logits) {
  const int64_t C = in.C;
  std::vector<acc_t> row(C);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t label = in.labels[i];
    const acc_t scale = label == in.ignore_index ? acc_t(0) : grad_loss[i] * in.weight_of(label);
    load_row(in.logits + i * C, C, row.data());
    softmax_row_grad(row.data(), C, label, scale, lse[i], in.bound, straight_through);
    store_row(row.data(), C, grad_logits + i * C);
  }
}

// The row loops compiled a second time for AVX-512, taken where cpu_isa() allows.
#if FASTOPS_HAS_AVX512
template <typename scalar_t, typename acc_t>
FASTOPS_AVX512 RowStats softmax_forward_rows_avx512(const SoftmaxRows<scalar_t, acc_t>& in, int64_t begin,
                                                    int64_t end, acc_t* loss_out, acc_t* lse_out) {
  return softmax_forward_rows(in, begin, end, loss_out, lse_out);
}

template <typename scalar_t, typename acc_t>
FASTOPS_AVX512 void softmax_backward_rows_avx512(const SoftmaxRows<scalar_t, acc_t>& in, const acc_t* grad_loss,
                                                 const acc_t* lse, bool straight_through, int64_t begin,
                                                 int64_t end, scalar_t* grad_logits) {
  softmax_backward_rows(in, grad_loss, lse, straight_through, begin, end, grad_logits);
}
#endif

template <typename scalar_t, typename acc_t>
RowStats softmax_forward_dispatch(const SoftmaxRows<scalar_t, acc_t>& in, int64_t begin, int64_t end,
                                  acc_t* loss_out, acc_t* lse_out) {
#if FASTOPS_HAS_AVX512
  if (cpu_isa() == CpuIsa::kAvx512) return softmax_forward_rows_avx512(in, begin, end, loss_out, lse_out);
#endif
  return softmax_forward_rows(in, begin, end, loss_out, lse_out);
}

template <typename scalar_t, typename acc_t>
void softmax_backward_dispatch(const SoftmaxRows<scalar_t, acc_t>& in, const acc_t* grad_loss, const acc_t* lse,
                               bool straight_through, int64_t begin, int64_t end, scalar_t* grad_logits) {
#if FASTOPS_HAS_AVX512
  if (cpu_isa() == CpuIsa::kAvx512) {
    return softmax_backward_rows_avx512(in, grad_loss, lse, straight_through, begin, end, grad_logits);
  }
#endif
  softmax_backward_rows(in, grad_loss, lse, straight_through, begin, end, grad_logits);
}

// Rejects labels outside [0, hi) other than ignore_index, naming the first offending row.
void check_labels(const at::Tensor& labels, int64_t hi, int64_t ignore_index, const char* op) {
  const int64_t* y = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    if (y[i] == ignore_index || (y[i] >= 0 && y[i] < hi)) continue;
    fail_printf(FASTOPS_LABEL_RANGE_MSG, op, static_cast<long long>(i), static_cast<long long>(y[i]),
                static_cast<long long>(hi), static_cast<long long>(ignore_index));
  }
}

at::Tensor stats_tensor(const std::vector<RowStats>& per_thread) {
  RowStats total;
  for (const auto& s : per_thread) total.add(s);
  return at::tensor({total.clamped, total.nan}, at::kLong);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> safe_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& labels_in,
    const std::optional<at::Tensor>& class_weight_in, int64_t ignore_index, double clamp, bool /*straight_through*/) {
  check_softmax_args(logits_in, labels_in, class_weight_in, clamp);
  const auto logits = logits_in.contiguous();
  const auto labels = labels_in.contiguous();
  const int64_t N = logits.size(0), C = logits.size(1);
  check_labels(labels, C, ignore_index, "safe_cross_entropy");
  auto loss = at::empty({N}, logits.options().dtype(loss_dtype(logits)));
  auto lse = at::empty({N}, loss.options());
  std::vector<RowStats> per_thread(at::get_num_threads());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_ce_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto weight = class_weight_in.has_value()
                            ? std::optional<at::Tensor>(class_weight_in->to(loss.scalar_type()).contiguous())
                            : std::nullopt;
    const SoftmaxRows<scalar_t, acc_t> in{logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
                                          weight ? weight->data_ptr<acc_t>() : nullptr, C, ignore_index,
                                          static_cast<acc_t>(clamp)};
    acc_t* loss_out = loss.data_ptr<acc_t>();
    acc_t* lse_out = lse.data_ptr<acc_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      per_thread[at::get_thread_num()].add(softmax_forward_dispatch(in, begin, end, loss_out, lse_out));
    });
  });
  return {loss, lse, stats_tensor(per_thread)};
}

at::Tensor safe_cross_entropy_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                                           const at::Tensor& labels_in,
                                           const std::optional<at::Tensor>& class_weight_in,
                                           const at::Tensor& lse_in, int64_t ignore_index,
                                           double clamp, bool straight_through) {
  check_softmax_args(logits_in, labels_in, class_weight_in, clamp);
  check_softmax_backward_args(grad_loss, lse_in, logits_in);
  const auto logits = logits_in.contiguous();
  const auto labels = labels_in.contiguous();
  const int64_t N = logits.size(0), C = logits.size(1);
  check_labels(labels, C, ignore_index, "safe_cross_entropy_backward");
  auto grad_logits = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_ce_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = loss_dtype(logits);
    const auto grad = grad_loss.to(acc_dtype).contiguous();
    const auto lse = lse_in.to(acc_dtype).contiguous();
    const auto weight = class_weight_in.has_value()
                            ? std::optional<at::Tensor>(class_weight_in->to(acc_dtype).contiguous())
                            : std::nullopt;
    const SoftmaxRows<scalar_t, acc_t> in{logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
                                          weight ? weight->data_ptr<acc_t>() : nullptr, C, ignore_index,
                                          static_cast<acc_t>(clamp)};
    const acc_t* g = grad.data_ptr<acc_t>();
    const acc_t* row_lse = lse.data_ptr<acc_t>();
    scalar_t* dx = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      softmax_backward_dispatch(in, g, row_lse, straight_through, begin, end, dx);
    });
  });
  return grad_logits;
}

// Sigmoid variant: int64 targets are class indices in [0, C] (C = background: all-zero row),
// float targets are [N, C] probabilities; rows labelled ignore_index give zero loss.
template <typename acc_t>
struct SigmoidTargets {
  const int64_t* labels;  // set for class-index targets
  const acc_t* probs;     // set for float targets
  int64_t ignore_index;

  acc_t at(int64_t i, int64_t j, int64_t C) const {
    return labels ? acc_t(labels[i] == j) : probs[i * C + j];
  }
  bool ignored(int64_t i) const { return labels && labels[i] == ignore_index; }
};

template <typename acc_t>
SigmoidTargets<acc_t> sigmoid_targets(const at::Tensor& targets, int64_t ignore_index) {
  if (targets.scalar_type() == at::kLong) return {targets.data_ptr<int64_t>(), nullptr, ignore_index};
  return {nullptr, targets.data_ptr<acc_t>(), ignore_index};
}

at::Tensor prepare_sigmoid_targets(const at::Tensor& targets, const at::Tensor& logits,
                                   int64_t ignore_index) {
  if (targets.scalar_type() != at::kLong) return targets.to(loss_dtype(logits)).contiguous();
  auto labels = targets.contiguous();
  check_labels(labels, logits.size(1) + 1, ignore_index, "safe_sigmoid_cross_entropy");
  return labels;
}

std::tuple<at::Tensor, at::Tensor> safe_sigmoid_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& targets_in,
    const std::optional<at::Tensor>& pos_weight_in, int64_t ignore_index, double clamp, bool /*straight_through*/) {
  check_sigmoid_args(logits_in, targets_in, pos_weight_in, clamp);
  const auto logits = logits_in.contiguous();
  const auto targets = prepare_sigmoid_targets(targets_in, logits, ignore_index);
  const int64_t N = logits.size(0), C = logits.size(1);
  auto loss = at::empty({N, C}, logits.options().dtype(loss_dtype(logits)));
  std::vector<RowStats> per_thread(at::get_num_threads());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_bce_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto pos_weight = pos_weight_in.has_value()
                                ? std::optional<at::Tensor>(pos_weight_in->to(loss.scalar_type()).contiguous())
                                : std::nullopt;
    const acc_t* pw = pos_weight ? pos_weight->data_ptr<acc_t>() : nullptr;
    const auto t = sigmoid_targets<acc_t>(targets, ignore_index);
    const scalar_t* x = logits.data_ptr<scalar_t>();
    acc_t* out = loss.data_ptr<acc_t>();
    const acc_t bound = static_cast<acc_t>(clamp);
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      RowStats stats;
      for (int64_t i = begin; i < end; ++i) {
        const bool ignored = t.ignored(i);
        for (int64_t j = 0; j < C; ++j) {
          const acc_t xj = static_cast<acc_t>(x[i * C + j]);
          stats.clamped += changed_by_clamp(xj, bound);
          stats.nan += (xj != xj);
          out[i * C + j] = ignored ? acc_t(0)
                                   : bce_with_logits(clamp_keep_nan(xj, bound), t.at(i, j, C),
                                                     pw ? pw[j] : acc_t(1));
        }
      }
      per_thread[at::get_thread_num()].add(stats);
    });
  });
  return {loss, stats_tensor(per_thread)};
}

at::Tensor safe_sigmoid_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& targets_in,
    const std::optional<at::Tensor>& pos_weight_in, int64_t ignore_index, double clamp,
    bool straight_through) {
  check_sigmoid_args(logits_in, targets_in, pos_weight_in, clamp);
  check_sigmoid_backward_args(grad_loss, logits_in);
  const auto logits = logits_in.contiguous();
  const auto targets = prepare_sigmoid_targets(targets_in, logits, ignore_index);
  const int64_t N = logits.size(0), C = logits.size(1);
  auto grad_logits = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_bce_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = loss_dtype(logits);
    const auto grad = grad_loss.to(acc_dtype).contiguous();
    const auto pos_weight = pos_weight_in.has_value()
                                ? std::optional<at::Tensor>(pos_weight_in->to(acc_dtype).contiguous())
                                : std::nullopt;
    const acc_t* pw = pos_weight ? pos_weight->data_ptr<acc_t>() : nullptr;
    const auto t = sigmoid_targets<acc_t>(targets, ignore_index);
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const acc_t* g = grad.data_ptr<acc_t>();
    scalar_t* dx = grad_logits.data_ptr<scalar_t>();
    const acc_t bound = static_cast<acc_t>(clamp);
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const bool ignored = t.ignored(i);
        for (int64_t j = 0; j < C; ++j) {
          const acc_t xj = static_cast<acc_t>(x[i * C + j]);
          const bool passes = !ignored && (straight_through || inside_clamp(xj, bound));
          dx[i * C + j] = static_cast<scalar_t>(
              passes ? g[i * C + j] * bce_with_logits_grad(clamp_keep_nan(xj, bound), t.at(i, j, C),
                                                           pw ? pw[j] : acc_t(1))
                     : acc_t(0));
        }
      }
    });
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("safe_cross_entropy", &safe_cross_entropy_cpu);
  m.impl("safe_cross_entropy_backward", &safe_cross_entropy_backward_cpu);
  m.impl("safe_sigmoid_cross_entropy", &safe_sigmoid_cross_entropy_cpu);
  m.impl("safe_sigmoid_cross_entropy_backward", &safe_sigmoid_cross_entropy_backward_cpu);
}

}  // namespace fastops
