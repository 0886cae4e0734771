// CPU kernels of the fp16-safe clamped cross-entropy: rows in parallel, converted to the
// accumulation type once into L1-resident buffers, clamped, then reduced with a vectorisable exp
// (and log). Softmax rows with few classes go sixteen at a time through a transposed tile, the
// others one by one; the softmax backward of a batch the forward found clean (nothing clamped, no
// NaN) skips the clamp, the mask and the label compare; sigmoid rows go in flat blocks of whole rows.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/clamp_math.h"
#include "cpu/cephes_exp.h"
#include "cpu/cephes_log.h"
#include "cpu/isa.h"
#include "cpu/printf_check.h"
#include "ops/safe_cross_entropy.h"

namespace fastops {
namespace {

constexpr int64_t kRowGrain = 64;

FASTOPS_ROW_INLINE float vec_exp(float x) { return cephes::exp(x); }
FASTOPS_ROW_INLINE double vec_exp(double x) { return std::exp(x); }
FASTOPS_ROW_INLINE float vec_exp_nonpositive(float x) { return cephes::exp_nonpositive(x); }
FASTOPS_ROW_INLINE double vec_exp_nonpositive(double x) { return std::exp(x); }

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
  for (int64_t j = 0; j < C; ++j) sum += vec_exp_nonpositive(x[j] - shift);
  return sum;
}

// dx_j = scale · (exp(clamp(x_j) − lse) − [j = label]), masked like torch.clamp's gradient unless
// straight-through: x passes where clamp(x) == x, which is inside_clamp(x) in one compare.
template <typename acc_t>
FASTOPS_ROW_INLINE acc_t softmax_grad(acc_t v, acc_t is_label, acc_t scale, acc_t lse, acc_t bound,
                                      bool straight_through) {
  const acc_t vc = clamp_keep_nan(v, bound);
  const acc_t d = scale * (vec_exp(vc - lse) - is_label);
  return (straight_through | (vc == v)) ? d : acc_t(0);
}

template <typename acc_t>
FASTOPS_ROW_INLINE void softmax_row_grad(const acc_t* x, int64_t C, int64_t label, acc_t scale, acc_t lse,
                                         acc_t bound, bool straight_through, acc_t* dx) {
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) dx[j] = softmax_grad(x[j], acc_t(j == label), scale, lse, bound, straight_through);
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

// Forward of one row, converted into `row`: lse and weighted loss; adds to the clamp counts.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void softmax_forward_row(const SoftmaxRows<scalar_t, acc_t>& in, int64_t i, acc_t* row,
                                            RowStats& stats, acc_t* loss_out, acc_t* lse_out) {
  const int64_t C = in.C;
  const acc_t row_max = clamp_row(row, C, in.bound, stats);
  const acc_t row_lse = row_max + std::log(sum_exp_shifted(row, C, row_max));
  lse_out[i] = row_lse;
  const int64_t label = in.labels[i];
  loss_out[i] = label == in.ignore_index ? acc_t(0) : in.weight_of(label) * (row_lse - row[label]);
}

// Rows with few classes go kTileRows at a time through a transposed tile, one row per SIMD lane:
// max, sum and log then run across rows, with no horizontal reduction per row, and the tile's
// logits are read from memory once. Tiles with a logit to clamp or a NaN (rare) and the last
// rows take the per-row path.
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileMaxC = 256;

FASTOPS_ROW_INLINE float vec_log(float x) { return cephes::log(x); }
FASTOPS_ROW_INLINE double vec_log(double x) { return std::log(x); }

// t[j][r] = x[r][j] for the tile's kTileRows rows x of C logits. Square blocks go through a local
// copy, which GCC turns into vector loads, shuffles and stores (a seventh off the forward at C = 81
// in a standalone test, against the column-by-column loop that the remaining columns take).
template <typename acc_t>
FASTOPS_ROW_INLINE void transpose_rows(const acc_t* x, int64_t C, acc_t* t) {
  constexpr int64_t R = kTileRows;
  int64_t j0 = 0;
  for (; j0 + R <= C; j0 += R) {
    acc_t block[R][R];
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < R; ++j) block[r][j] = x[r * C + j0 + j];
    }
    for (int64_t j = 0; j < R; ++j) {
      for (int64_t r = 0; r < R; ++r) t[(j0 + j) * R + r] = block[r][j];
    }
  }
  for (int64_t j = j0; j < C; ++j) {
#pragma omp simd
    for (int64_t r = 0; r < R; ++r) t[j * R + r] = x[r * C + j];
  }
}

// Forward of the kTileRows rows from row i: x holds them, t their transpose. Writes their lse and
// loss and returns true if no logit needs the clamp and none is NaN; else returns false, and the
// rows take the per-row path, which counts them. max and min pass NaN by: a NaN shows in its row's
// sum instead, one operation per logit less than clamp_row's first pass.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE bool clean_tile_forward(const SoftmaxRows<scalar_t, acc_t>& in, int64_t i, const acc_t* x,
                                           const acc_t* t, acc_t* loss_out, acc_t* lse_out) {
  constexpr int64_t R = kTileRows;
  const int64_t C = in.C;
  const acc_t bound = in.bound;
  acc_t row_max[R], row_min[R], sum[R];
#pragma omp simd
  for (int64_t r = 0; r < R; ++r) row_max[r] = -bound, row_min[r] = bound, sum[r] = 0;
  for (int64_t j = 0; j < C; ++j) {
#pragma omp simd
    for (int64_t r = 0; r < R; ++r) {
      const acc_t v = t[j * R + r];
      row_max[r] = v > row_max[r] ? v : row_max[r];
      row_min[r] = v < row_min[r] ? v : row_min[r];
    }
  }
  bool in_range = true;
  for (int64_t r = 0; r < R; ++r) in_range &= row_max[r] <= bound && row_min[r] >= -bound;
  if (!in_range) return false;
  for (int64_t j = 0; j < C; ++j) {
#pragma omp simd
    for (int64_t r = 0; r < R; ++r) sum[r] += vec_exp_nonpositive(t[j * R + r] - row_max[r]);
  }
  bool no_nan = true;
  for (int64_t r = 0; r < R; ++r) no_nan &= sum[r] == sum[r];
  if (!no_nan) return false;
#pragma omp simd
  for (int64_t r = 0; r < R; ++r) lse_out[i + r] = row_max[r] + vec_log(sum[r]);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t label = in.labels[i + r];
    loss_out[i + r] = label == in.ignore_index ? acc_t(0) : in.weight_of(label) * (lse_out[i + r] - x[r * C + label]);
  }
  return true;
}

// Forward of rows [begin, end): lse and weighted loss per row; returns the clamp counts.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE RowStats softmax_forward_rows(const SoftmaxRows<scalar_t, acc_t>& in, int64_t begin, int64_t end,
                                                 acc_t* loss_out, acc_t* lse_out) {
  constexpr int64_t R = kTileRows;
  const int64_t C = in.C;
  const bool tiled = C <= kTileMaxC;
  std::vector<acc_t> rows(tiled ? R * C : C), tile(tiled ? C * R : 0);
  RowStats stats;
  int64_t i = begin;
  for (; tiled && i + R <= end; i += R) {
    load_row(in.logits + i * C, R * C, rows.data());
    acc_t* t = tile.data();
    const acc_t* x = rows.data();
    transpose_rows(x, C, t);
    if (!clean_tile_forward(in, i, x, t, loss_out, lse_out)) {
      for (int64_t r = 0; r < R; ++r) softmax_forward_row(in, i + r, rows.data() + r * C, stats, loss_out, lse_out);
    }
  }
  for (; i < end; ++i) {
    load_row(in.logits + i * C, C, rows.data());
    softmax_forward_row(in, i, rows.data(), stats, loss_out, lse_out);
  }
  return stats;
}

// The gradient of a row with nothing clamped and no NaN, which needs no clamp, mask or label
// compare: scale · exp(x_j − lse) everywhere, then the label's term. The same values as
// softmax_row_grad's on such a row, at ~half its cost.
template <typename acc_t>
FASTOPS_ROW_INLINE void clean_row_grad(const acc_t* x, int64_t C, int64_t label, acc_t scale, acc_t lse,
                                       acc_t* dx) {
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) dx[j] = scale * vec_exp_nonpositive(x[j] - lse);
  if (label >= 0 && label < C) dx[label] = scale * (vec_exp_nonpositive(x[label] - lse) - acc_t(1));
}

// Rows in half precision are converted in blocks of whole rows of about kSpan elements, so that a
// few classes do not leave most of each conversion loop to its scalar tail.
constexpr int64_t kSpan = 1024;

// Backward of row i from its logits x (in the accumulation type) into dx: d/dx_j [w_y (lse − x_y)]
// = w_y (softmax_j − [j = y]), zero where the row is ignored. `clean`: the forward clamped nothing
// and met no NaN.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void softmax_backward_row(const SoftmaxRows<scalar_t, acc_t>& in, const acc_t* grad_loss,
                                             const acc_t* lse, bool straight_through, bool clean, int64_t i,
                                             const acc_t* x, acc_t* dx) {
  const int64_t label = in.labels[i];
  const acc_t scale = label == in.ignore_index ? acc_t(0) : grad_loss[i] * in.weight_of(label);
  if (clean) return clean_row_grad(x, in.C, label, scale, lse[i], dx);
  softmax_row_grad(x, in.C, label, scale, lse[i], in.bound, straight_through, dx);
}

// Backward of rows [begin, end): logits already in the accumulation type are read where they are.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void softmax_backward_rows(const SoftmaxRows<scalar_t, acc_t>& in, const acc_t* grad_loss,
                                              const acc_t* lse, bool straight_through, bool clean, int64_t begin,
                                              int64_t end, scalar_t* grad_logits) {
  const int64_t C = in.C;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i = begin; i < end; ++i) {
      softmax_backward_row(in, grad_loss, lse, straight_through, clean, i, in.logits + i * C, grad_logits + i * C);
    }
  } else {
    const int64_t block_rows = std::max<int64_t>(1, kSpan / C);
    std::vector<acc_t> x(block_rows * C), dx(block_rows * C);
    for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
      const int64_t r1 = std::min(end, r0 + block_rows);
      load_row(in.logits + r0 * C, (r1 - r0) * C, x.data());
      for (int64_t i = r0; i < r1; ++i) {
        softmax_backward_row(in, grad_loss, lse, straight_through, clean, i, x.data() + (i - r0) * C,
                             dx.data() + (i - r0) * C);
      }
      store_row(dx.data(), (r1 - r0) * C, grad_logits + r0 * C);
    }
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
                                                 const acc_t* lse, bool straight_through, bool clean,
                                                 int64_t begin, int64_t end, scalar_t* grad_logits) {
  softmax_backward_rows(in, grad_loss, lse, straight_through, clean, begin, end, grad_logits);
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
                               bool straight_through, bool clean, int64_t begin, int64_t end,
                               scalar_t* grad_logits) {
#if FASTOPS_HAS_AVX512
  if (cpu_isa() == CpuIsa::kAvx512) {
    return softmax_backward_rows_avx512(in, grad_loss, lse, straight_through, clean, begin, end, grad_logits);
  }
#endif
  softmax_backward_rows(in, grad_loss, lse, straight_through, clean, begin, end, grad_logits);
}

// Rejects labels outside [0, hi) other than ignore_index, naming the first offending row.
void check_labels(const at::Tensor& labels, int64_t hi, int64_t ignore_index, const char* op) {
  const int64_t* y = labels.data_ptr<int64_t>();
  int64_t bad = 0;  // counted in one vectorised pass; only a bad batch is searched for its first row
#pragma omp simd reduction(+ : bad)
  for (int64_t i = 0; i < labels.numel(); ++i) bad += !(y[i] == ignore_index || (y[i] >= 0 && y[i] < hi));
  if (bad == 0) return;
  for (int64_t i = 0; i < labels.numel(); ++i) {
    if (y[i] == ignore_index || (y[i] >= 0 && y[i] < hi)) continue;
    fail_printf(FASTOPS_LABEL_RANGE_MSG, op, static_cast<long long>(i), static_cast<long long>(y[i]),
                static_cast<long long>(hi), static_cast<long long>(ignore_index));
  }
}

at::Tensor stats_tensor(const std::vector<RowStats>& per_thread) {
  RowStats total;
  for (const auto& s : per_thread) total.add(s);
  auto stats = at::empty({2}, at::kLong);  // written in place: at::tensor({..}) costs a copy and a fill
  stats.data_ptr<int64_t>()[0] = total.clamped;
  stats.data_ptr<int64_t>()[1] = total.nan;
  return stats;
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
                                           const at::Tensor& lse_in, const at::Tensor& stats,
                                           int64_t ignore_index, double clamp, bool straight_through) {
  check_softmax_args(logits_in, labels_in, class_weight_in, clamp);
  check_softmax_backward_args(grad_loss, lse_in, stats, logits_in);
  const auto counts = stats.contiguous();
  const bool clean = counts.data_ptr<int64_t>()[0] == 0 && counts.data_ptr<int64_t>()[1] == 0;
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
      softmax_backward_dispatch(in, g, row_lse, straight_through, clean, begin, end, dx);
    });
  });
  return grad_logits;
}

// Sigmoid variant: int64 targets are class indices in [0, C] (C = background: all-zero row),
// float targets are [N, C] probabilities; rows labelled ignore_index, and float targets below 0 or
// equal to ignore_index (mmdet's valid mask), give zero loss and gradient.
template <typename scalar_t, typename acc_t>
struct SigmoidRows {
  const scalar_t* logits;  // [N, C]
  const int64_t* labels;   // [N], set for class-index targets
  const acc_t* probs;      // [N, C], set for float targets
  const acc_t* pos_weight;  // [C] or null
  int64_t C, ignore_index;
  acc_t bound;

  // Whether a target marks its element ignored: never for class-index targets, whose ignored rows
  // are zeroed by row.
  FASTOPS_ROW_INLINE bool ignored_element(acc_t t) const {
    return (labels == nullptr) & ignored_target(t, ignore_index);
  }
};

// The element-wise loss runs on blocks of whole rows taken as one flat span of about kSpan
// elements, so that C = 1 (objectness) vectorises as well as C = 80. A block holds its logits in
// the accumulation type, its targets when they are class indices, and pos_weight tiled over its
// rows (ones without it).

template <typename scalar_t, typename acc_t>
struct SigmoidBlocks {
  const SigmoidRows<scalar_t, acc_t>& in;
  const int64_t rows;  // per block
  std::vector<acc_t> x, t, w;

  explicit SigmoidBlocks(const SigmoidRows<scalar_t, acc_t>& rows_in)
      : in(rows_in), rows(std::max<int64_t>(1, kSpan / rows_in.C)), x(rows * rows_in.C),
        t(rows_in.labels ? rows * rows_in.C : 0), w(rows * rows_in.C, acc_t(1)) {
    if (in.pos_weight) {
      for (int64_t r = 0; r < rows; ++r) std::copy(in.pos_weight, in.pos_weight + in.C, w.begin() + r * in.C);
    }
  }

  // Loads rows [r0, r1) into x; returns their targets.
  FASTOPS_ROW_INLINE const acc_t* load(int64_t r0, int64_t r1) {
    const int64_t C = in.C;
    load_row(in.logits + r0 * C, (r1 - r0) * C, x.data());
    if (!in.labels) return in.probs + r0 * C;
    std::fill(t.begin(), t.begin() + (r1 - r0) * C, acc_t(0));
    for (int64_t r = r0; r < r1; ++r) {
      if (in.labels[r] >= 0 && in.labels[r] < C) t[(r - r0) * C + in.labels[r]] = acc_t(1);
    }
    return t.data();
  }

  FASTOPS_ROW_INLINE void zero_ignored_rows(int64_t r0, int64_t r1, acc_t* out) const {
    if (!in.labels) return;
    for (int64_t r = r0; r < r1; ++r) {
      if (in.labels[r] == in.ignore_index) std::fill(out + (r - r0) * in.C, out + (r - r0 + 1) * in.C, acc_t(0));
    }
  }
};

FASTOPS_ROW_INLINE float vec_log1p(float x) { return cephes::log1p(x); }
FASTOPS_ROW_INLINE double vec_log1p(double x) { return std::log1p(x); }

// Forward of rows [begin, end): loss per element and the clamp counts.
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE RowStats sigmoid_forward_rows(const SigmoidRows<scalar_t, acc_t>& in, int64_t begin, int64_t end,
                                                 acc_t* loss_out) {
  SigmoidBlocks<scalar_t, acc_t> blocks(in);
  const acc_t bound = in.bound;
  RowStats stats;
  for (int64_t r0 = begin; r0 < end; r0 += blocks.rows) {
    const int64_t r1 = std::min(end, r0 + blocks.rows), n = (r1 - r0) * in.C;
    const acc_t* t = blocks.load(r0, r1);
    const acc_t* x = blocks.x.data();
    const acc_t* w = blocks.w.data();
    acc_t* out = loss_out + r0 * in.C;
    int32_t clamped = 0, nan = 0;  // 32-bit lanes: a block holds at most max(kSpan, C) elements
#pragma omp simd reduction(+ : clamped, nan)
    for (int64_t k = 0; k < n; ++k) {
      const acc_t v = x[k];
      clamped += changed_by_clamp(v, bound);
      nan += (v != v);
      const acc_t vc = clamp_keep_nan(v, bound);
      const acc_t loss = bce_with_logits_of(vc, t[k], w[k], vec_log1p(vec_exp(-std::fabs(vc))));
      out[k] = in.ignored_element(t[k]) ? acc_t(0) : loss;
    }
    stats.clamped += clamped;
    stats.nan += nan;
    blocks.zero_ignored_rows(r0, r1, out);
  }
  return stats;
}

// Backward of rows [begin, end), in x's buffer: sigmoid(x) = 1 / (1 + e) for x >= 0 and
// e / (1 + e) below, e = exp(-|x|) (no overflow, and 0 rather than a subnormal far out).
// grad_loss is [N, C], or its one value where grad_is_scalar (read from a block of copies).
template <typename scalar_t, typename acc_t>
FASTOPS_ROW_INLINE void sigmoid_backward_rows(const SigmoidRows<scalar_t, acc_t>& in, const acc_t* grad_loss,
                                              bool grad_is_scalar, bool straight_through, int64_t begin,
                                              int64_t end, scalar_t* grad_logits) {
  SigmoidBlocks<scalar_t, acc_t> blocks(in);
  const acc_t bound = in.bound;
  const std::vector<acc_t> scalar_block(grad_is_scalar ? blocks.x.size() : 0, grad_is_scalar ? *grad_loss : 0);
  for (int64_t r0 = begin; r0 < end; r0 += blocks.rows) {
    const int64_t r1 = std::min(end, r0 + blocks.rows), n = (r1 - r0) * in.C;
    const acc_t* t = blocks.load(r0, r1);
    acc_t* x = blocks.x.data();
    const acc_t* w = blocks.w.data();
    const acc_t* g = grad_is_scalar ? scalar_block.data() : grad_loss + r0 * in.C;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const acc_t v = x[k];
      const acc_t vc = clamp_keep_nan(v, bound);
      const acc_t e = vec_exp(-std::fabs(vc));
      const acc_t sigmoid = (vc >= acc_t(0) ? acc_t(1) : e) / (acc_t(1) + e);
      const acc_t d = g[k] * bce_with_logits_grad_of(sigmoid, t[k], w[k]);
      const bool passes = (straight_through | (vc == v)) & !in.ignored_element(t[k]);  // vc == v: inside_clamp
      x[k] = passes ? d : acc_t(0);
    }
    blocks.zero_ignored_rows(r0, r1, x);
    store_row(x, n, grad_logits + r0 * in.C);
  }
}

#if FASTOPS_HAS_AVX512
template <typename scalar_t, typename acc_t>
FASTOPS_AVX512 RowStats sigmoid_forward_rows_avx512(const SigmoidRows<scalar_t, acc_t>& in, int64_t begin,
                                                    int64_t end, acc_t* loss_out) {
  return sigmoid_forward_rows(in, begin, end, loss_out);
}

template <typename scalar_t, typename acc_t>
FASTOPS_AVX512 void sigmoid_backward_rows_avx512(const SigmoidRows<scalar_t, acc_t>& in, const acc_t* grad_loss,
                                                 bool grad_is_scalar, bool straight_through, int64_t begin,
                                                 int64_t end, scalar_t* grad_logits) {
  sigmoid_backward_rows(in, grad_loss, grad_is_scalar, straight_through, begin, end, grad_logits);
}
#endif

template <typename scalar_t, typename acc_t>
RowStats sigmoid_forward_dispatch(const SigmoidRows<scalar_t, acc_t>& in, int64_t begin, int64_t end,
                                  acc_t* loss_out) {
#if FASTOPS_HAS_AVX512
  if (cpu_isa() == CpuIsa::kAvx512) return sigmoid_forward_rows_avx512(in, begin, end, loss_out);
#endif
  return sigmoid_forward_rows(in, begin, end, loss_out);
}

template <typename scalar_t, typename acc_t>
void sigmoid_backward_dispatch(const SigmoidRows<scalar_t, acc_t>& in, const acc_t* grad_loss, bool grad_is_scalar,
                               bool straight_through, int64_t begin, int64_t end, scalar_t* grad_logits) {
#if FASTOPS_HAS_AVX512
  if (cpu_isa() == CpuIsa::kAvx512) {
    return sigmoid_backward_rows_avx512(in, grad_loss, grad_is_scalar, straight_through, begin, end, grad_logits);
  }
#endif
  sigmoid_backward_rows(in, grad_loss, grad_is_scalar, straight_through, begin, end, grad_logits);
}

at::Tensor prepare_sigmoid_targets(const at::Tensor& targets, const at::Tensor& logits,
                                   int64_t ignore_index) {
  if (targets.scalar_type() != at::kLong) return targets.to(loss_dtype(logits)).contiguous();
  auto labels = targets.contiguous();
  check_labels(labels, logits.size(1) + 1, ignore_index, "safe_sigmoid_cross_entropy");
  return labels;
}

template <typename scalar_t, typename acc_t>
SigmoidRows<scalar_t, acc_t> sigmoid_rows(const at::Tensor& logits, const at::Tensor& targets,
                                          const std::optional<at::Tensor>& pos_weight, int64_t ignore_index,
                                          double clamp) {
  const bool labels = targets.scalar_type() == at::kLong;
  return {logits.data_ptr<scalar_t>(),
          labels ? targets.data_ptr<int64_t>() : nullptr,
          labels ? nullptr : targets.data_ptr<acc_t>(),
          pos_weight ? pos_weight->data_ptr<acc_t>() : nullptr,
          logits.size(1),
          ignore_index,
          static_cast<acc_t>(clamp)};
}

std::tuple<at::Tensor, at::Tensor> safe_sigmoid_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& targets_in,
    const std::optional<at::Tensor>& pos_weight_in, int64_t ignore_index, double clamp, bool /*straight_through*/) {
  check_sigmoid_args(logits_in, targets_in, pos_weight_in, clamp);
  const auto logits = logits_in.contiguous();
  const auto targets = prepare_sigmoid_targets(targets_in, logits, ignore_index);
  const int64_t N = logits.size(0);
  auto loss = at::empty(logits.sizes(), logits.options().dtype(loss_dtype(logits)));
  std::vector<RowStats> per_thread(at::get_num_threads());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_bce_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto pos_weight = pos_weight_in.has_value()
                                ? std::optional<at::Tensor>(pos_weight_in->to(loss.scalar_type()).contiguous())
                                : std::nullopt;
    const auto in = sigmoid_rows<scalar_t, acc_t>(logits, targets, pos_weight, ignore_index, clamp);
    acc_t* out = loss.data_ptr<acc_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      per_thread[at::get_thread_num()].add(sigmoid_forward_dispatch(in, begin, end, out));
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
  const int64_t N = logits.size(0);
  auto grad_logits = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_bce_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = loss_dtype(logits);
    const auto grad = sigmoid_grad_values(grad_loss, acc_dtype);
    const auto pos_weight = pos_weight_in.has_value()
                                ? std::optional<at::Tensor>(pos_weight_in->to(acc_dtype).contiguous())
                                : std::nullopt;
    const auto in = sigmoid_rows<scalar_t, acc_t>(logits, targets, pos_weight, ignore_index, clamp);
    const acc_t* g = grad.values.data_ptr<acc_t>();
    scalar_t* dx = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
      sigmoid_backward_dispatch(in, g, grad.scalar, straight_through, begin, end, dx);
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
