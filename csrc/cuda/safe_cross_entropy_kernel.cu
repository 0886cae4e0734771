// CUDA kernels of the fp16-safe clamped cross-entropy. Softmax rows go one warp per row with an
// online log-sum-exp, so the logits are read once forward and the gradient written once backward;
// the counters are reduced per block and added to global memory only when non-zero. Labels are
// validated in the kernels (a device-side assert with the CPU kernel's message): no host sync.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/clamp_math.h"
#include "ops/safe_cross_entropy.h"

namespace fastops {
namespace {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kWarpsPerBlock = kBlock / kWarp;

struct Counts {
  unsigned long long clamped = 0, nan = 0;
};

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

// Sums the per-thread counts over the block and adds them to stats[0..1] (one atomic per non-zero).
__device__ void flush_counts(Counts c, unsigned long long* stats) {
  __shared__ unsigned long long partial[2][kWarpsPerBlock];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  c.clamped = warp_sum(c.clamped);
  c.nan = warp_sum(c.nan);
  if (lane == 0) {
    partial[0][warp] = c.clamped;
    partial[1][warp] = c.nan;
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    unsigned long long total = 0;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += partial[threadIdx.x][w];
    if (total) atomicAdd(stats + threadIdx.x, total);
  }
}

// Merges two (max, Σ exp(x − max)) pairs of an online log-sum-exp. Every m is finite (>= -bound,
// and the op rejects a bound the accumulator cannot hold), so an empty partial rescales to 0.
template <typename acc_t>
__device__ __forceinline__ void lse_merge(acc_t& m, acc_t& s, acc_t m2, acc_t s2) {
  const acc_t hi = m > m2 ? m : m2;
  s = s * exp(m - hi) + s2 * exp(m2 - hi);
  m = hi;
}

// Same check and message as the CPU kernels' check_labels; `hi` is C (softmax) or C + 1 (sigmoid).
__device__ __forceinline__ bool label_in_range(const char* op, int64_t row, int64_t y, int64_t hi,
                                               int64_t ignore_index) {
  const bool ok = y == ignore_index || (y >= 0 && y < hi);
  CUDA_KERNEL_ASSERT_PRINTF(ok, FASTOPS_LABEL_RANGE_MSG, op, static_cast<long long>(row),
                            static_cast<long long>(y), static_cast<long long>(hi),
                            static_cast<long long>(ignore_index));
  return ok;
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_ce_forward_kernel(const scalar_t* __restrict__ logits,
                                          const int64_t* __restrict__ labels,
                                          const acc_t* __restrict__ class_weight, int64_t N,
                                          int64_t C, int64_t ignore_index, acc_t bound,
                                          acc_t* __restrict__ loss, acc_t* __restrict__ lse,
                                          unsigned long long* stats) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = int64_t(gridDim.x) * kWarpsPerBlock;
  Counts counts;
  for (int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; row < N;
       row += warps_total) {
    const scalar_t* x = logits + row * C;
    acc_t m = -bound, s = 0;  // every clamped value is >= -bound (finite: checked by the op)
    for (int64_t j = lane; j < C; j += kWarp) {
      const acc_t v = static_cast<acc_t>(x[j]);
      counts.clamped += changed_by_clamp(v, bound);
      counts.nan += (v != v);
      const acc_t vc = clamp_keep_nan(v, bound);
      if (vc > m) {
        s = s * exp(m - vc) + acc_t(1);
        m = vc;
      } else {
        s += exp(vc - m);  // NaN propagates into s
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      lse_merge(m, s, __shfl_xor_sync(0xffffffff, m, offset), __shfl_xor_sync(0xffffffff, s, offset));
    if (lane == 0) {
      const acc_t row_lse = m + log(s);
      const int64_t y = labels[row];
      lse[row] = row_lse;
      if (!label_in_range("safe_cross_entropy", row, y, C, ignore_index)) {
        loss[row] = NAN;
      } else if (y == ignore_index) {
        loss[row] = 0;
      } else {
        const acc_t w = class_weight ? class_weight[y] : acc_t(1);
        loss[row] = w * (row_lse - clamp_keep_nan(static_cast<acc_t>(x[y]), bound));
      }
    }
  }
  flush_counts(counts, stats);
}

template <typename scalar_t, typename acc_t>
__global__ void softmax_ce_backward_kernel(const acc_t* __restrict__ grad_loss,
                                           const scalar_t* __restrict__ logits,
                                           const int64_t* __restrict__ labels,
                                           const acc_t* __restrict__ class_weight,
                                           const acc_t* __restrict__ lse, int64_t N, int64_t C,
                                           int64_t ignore_index, acc_t bound, bool straight_through,
                                           scalar_t* __restrict__ grad_logits) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; row < N;
       row += warps_total) {
    const int64_t y = labels[row];
    const bool valid = label_in_range("safe_cross_entropy_backward", row, y, C, ignore_index) && y != ignore_index;
    // d/dx_j [w_y (lse − x_y)] = w_y (softmax_j − [j = y]).
    const acc_t scale = valid ? grad_loss[row] * (class_weight ? class_weight[y] : acc_t(1)) : acc_t(0);
    const acc_t shift = lse[row];
    const scalar_t* x = logits + row * C;
    scalar_t* dx = grad_logits + row * C;
    for (int64_t j = lane; j < C; j += kWarp) {
      const acc_t v = static_cast<acc_t>(x[j]);
      const acc_t d = scale * (exp(clamp_keep_nan(v, bound) - shift) - acc_t(j == y));
      dx[j] = static_cast<scalar_t>(straight_through || inside_clamp(v, bound) ? d : acc_t(0));
    }
  }
}

// Class-index targets (labels in [0, C], C = background) or [N, C] float targets.
template <typename acc_t>
struct SigmoidTargets {
  const int64_t* labels;
  const acc_t* probs;
  int64_t ignore_index;
  int64_t C;

  __device__ acc_t at(int64_t i, int64_t j) const { return labels ? acc_t(labels[i] == j) : probs[i * C + j]; }
  // A row labelled ignore_index, or an ignored float target.
  __device__ bool ignored(int64_t i, int64_t j) const {
    return labels ? labels[i] == ignore_index : ignored_target(probs[i * C + j], ignore_index);
  }
  __device__ bool invalid(int64_t i) const {
    return labels && !label_in_range("safe_sigmoid_cross_entropy", i, labels[i], C + 1, ignore_index);
  }
};

template <typename scalar_t, typename acc_t>
__global__ void sigmoid_ce_forward_kernel(const scalar_t* __restrict__ logits, SigmoidTargets<acc_t> t,
                                          const acc_t* __restrict__ pos_weight, int64_t numel,
                                          acc_t bound, acc_t* __restrict__ loss,
                                          unsigned long long* stats) {
  Counts counts;
  const int64_t C = t.C;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < numel;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / C, j = k % C;
    const acc_t v = static_cast<acc_t>(logits[k]);
    counts.clamped += changed_by_clamp(v, bound);
    counts.nan += (v != v);
    if (t.invalid(i)) {
      loss[k] = NAN;
    } else {
      loss[k] = t.ignored(i, j) ? acc_t(0)
                             : bce_with_logits(clamp_keep_nan(v, bound), t.at(i, j),
                                               pos_weight ? pos_weight[j] : acc_t(1));
    }
  }
  flush_counts(counts, stats);
}

template <typename scalar_t, typename acc_t>
__global__ void sigmoid_ce_backward_kernel(const acc_t* __restrict__ grad_loss, bool grad_is_scalar,
                                           const scalar_t* __restrict__ logits,
                                           SigmoidTargets<acc_t> t,
                                           const acc_t* __restrict__ pos_weight, int64_t numel,
                                           acc_t bound, bool straight_through,
                                           scalar_t* __restrict__ grad_logits) {
  const int64_t C = t.C;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < numel;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / C, j = k % C;
    const acc_t v = static_cast<acc_t>(logits[k]);
    const bool passes = !t.ignored(i, j) && !t.invalid(i) && (straight_through || inside_clamp(v, bound));
    grad_logits[k] = static_cast<scalar_t>(
        passes ? grad_loss[grad_is_scalar ? 0 : k] * bce_with_logits_grad(clamp_keep_nan(v, bound), t.at(i, j),
                                                     pos_weight ? pos_weight[j] : acc_t(1))
               : acc_t(0));
  }
}

// Grid-stride kernels: the grid is capped at the resident blocks, so no int64 count can overflow it.
int grid_for(int64_t work_items, int items_per_block) {
  const int64_t needed = (work_items + items_per_block - 1) / items_per_block;
  const int64_t resident = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

std::optional<at::Tensor> as_acc(const std::optional<at::Tensor>& t, at::ScalarType dtype) {
  if (!t.has_value()) return std::nullopt;
  return t->to(dtype).contiguous();
}

template <typename acc_t>
const acc_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> safe_cross_entropy_cuda(
    const at::Tensor& logits_in, const at::Tensor& labels_in,
    const std::optional<at::Tensor>& class_weight_in, int64_t ignore_index, double clamp, bool /*straight_through*/) {
  check_softmax_args(logits_in, labels_in, class_weight_in, clamp);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto labels = labels_in.contiguous();
  const int64_t N = logits.size(0), C = logits.size(1);
  auto loss = at::empty({N}, logits.options().dtype(loss_dtype(logits)));
  auto lse = at::empty({N}, loss.options());
  auto stats = at::zeros({2}, logits.options().dtype(at::kLong));
  if (N == 0) return {loss, lse, stats};
  const auto weight = as_acc(class_weight_in, loss_dtype(logits));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_ce_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    softmax_ce_forward_kernel<scalar_t, acc_t>
        <<<grid_for(N, kWarpsPerBlock), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), ptr_or_null<acc_t>(weight), N, C,
            ignore_index, static_cast<acc_t>(clamp), loss.data_ptr<acc_t>(), lse.data_ptr<acc_t>(),
            reinterpret_cast<unsigned long long*>(stats.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse, stats};
}

at::Tensor safe_cross_entropy_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                                            const at::Tensor& labels_in,
                                            const std::optional<at::Tensor>& class_weight_in,
                                            const at::Tensor& lse_in, const at::Tensor& stats,
                                            int64_t ignore_index, double clamp, bool straight_through) {
  check_softmax_args(logits_in, labels_in, class_weight_in, clamp);
  check_softmax_backward_args(grad_loss, lse_in, stats, logits_in);  // stats unread: the mask is free here
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto labels = labels_in.contiguous();
  const int64_t N = logits.size(0), C = logits.size(1);
  auto grad_logits = at::empty_like(logits);
  if (N == 0) return grad_logits;
  const auto dtype = loss_dtype(logits);
  const auto grad = grad_loss.to(dtype).contiguous();
  const auto lse = lse_in.to(dtype).contiguous();
  const auto weight = as_acc(class_weight_in, dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_ce_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    softmax_ce_backward_kernel<scalar_t, acc_t>
        <<<grid_for(N, kWarpsPerBlock), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad.data_ptr<acc_t>(), logits.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
            ptr_or_null<acc_t>(weight), lse.data_ptr<acc_t>(), N, C, ignore_index,
            static_cast<acc_t>(clamp), straight_through, grad_logits.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_logits;
}

template <typename acc_t>
SigmoidTargets<acc_t> sigmoid_targets(const at::Tensor& targets, int64_t ignore_index, int64_t C) {
  if (targets.scalar_type() == at::kLong) return {targets.data_ptr<int64_t>(), nullptr, ignore_index, C};
  return {nullptr, targets.data_ptr<acc_t>(), ignore_index, C};
}

at::Tensor prepare_sigmoid_targets(const at::Tensor& targets, const at::Tensor& logits) {
  return targets.scalar_type() == at::kLong ? targets.contiguous()
                                            : targets.to(loss_dtype(logits)).contiguous();
}

std::tuple<at::Tensor, at::Tensor> safe_sigmoid_cross_entropy_cuda(
    const at::Tensor& logits_in, const at::Tensor& targets_in,
    const std::optional<at::Tensor>& pos_weight_in, int64_t ignore_index, double clamp, bool /*straight_through*/) {
  check_sigmoid_args(logits_in, targets_in, pos_weight_in, clamp);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto targets = prepare_sigmoid_targets(targets_in, logits);
  auto loss = at::empty(logits.sizes(), logits.options().dtype(loss_dtype(logits)));
  auto stats = at::zeros({2}, logits.options().dtype(at::kLong));
  const int64_t numel = logits.numel();
  if (numel == 0) return {loss, stats};
  const auto pos_weight = as_acc(pos_weight_in, loss_dtype(logits));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_bce_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sigmoid_ce_forward_kernel<scalar_t, acc_t>
        <<<grid_for(numel, kBlock), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            logits.data_ptr<scalar_t>(), sigmoid_targets<acc_t>(targets, ignore_index, logits.size(1)),
            ptr_or_null<acc_t>(pos_weight), numel, static_cast<acc_t>(clamp), loss.data_ptr<acc_t>(),
            reinterpret_cast<unsigned long long*>(stats.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, stats};
}

at::Tensor safe_sigmoid_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& targets_in,
    const std::optional<at::Tensor>& pos_weight_in, int64_t ignore_index, double clamp,
    bool straight_through) {
  check_sigmoid_args(logits_in, targets_in, pos_weight_in, clamp);
  check_sigmoid_backward_args(grad_loss, logits_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto targets = prepare_sigmoid_targets(targets_in, logits);
  auto grad_logits = at::empty_like(logits);
  const int64_t numel = logits.numel();
  if (numel == 0) return grad_logits;
  const auto dtype = loss_dtype(logits);
  const auto grad = sigmoid_grad_values(grad_loss, dtype);
  const auto pos_weight = as_acc(pos_weight_in, dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "safe_bce_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sigmoid_ce_backward_kernel<scalar_t, acc_t>
        <<<grid_for(numel, kBlock), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad.values.data_ptr<acc_t>(), grad.scalar, logits.data_ptr<scalar_t>(),
            sigmoid_targets<acc_t>(targets, ignore_index, logits.size(1)), ptr_or_null<acc_t>(pos_weight),
            numel, static_cast<acc_t>(clamp), straight_through, grad_logits.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("safe_cross_entropy", &safe_cross_entropy_cuda);
  m.impl("safe_cross_entropy_backward", &safe_cross_entropy_backward_cuda);
  m.impl("safe_sigmoid_cross_entropy", &safe_sigmoid_cross_entropy_cuda);
  m.impl("safe_sigmoid_cross_entropy_backward", &safe_sigmoid_cross_entropy_backward_cuda);
}

}  // namespace fastops
