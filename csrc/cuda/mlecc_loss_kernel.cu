// CUDA kernels of the log-space MLECC loss: one warp per (instance, keypoint) row, lanes stride
// over the bins, warp-shuffle reductions; no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "common/mlecc_args.h"
#include "common/mlecc_math.h"
#include "ops/mlecc_loss.h"

namespace fastops {
namespace {

using namespace mlecc;

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename T>
__device__ T warp_max(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ inline int64_t warp_row() {
  return static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
}

__device__ inline int lane_id() { return threadIdx.x % kWarpSize; }

template <typename T>
__device__ bool warp_all(const T* values, int64_t count, bool (*ok)(T)) {
  bool good = true;
  for (int64_t i = lane_id(); i < count; i += kWarpSize) good &= ok(values[i]);
  return __all_sync(kFullMask, good);
}

template <typename T>
__device__ bool is_nonnegative_finite(T v) {
  return v >= T(0) && v <= std::numeric_limits<T>::max();
}

// One warp per row: the grid is rows / kRowsPerBlock blocks, which must fit gridDim.x.
unsigned num_blocks(int64_t rows) {
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "mlecc_loss: ", rows,
              " (instance, keypoint) rows exceed the CUDA grid limit of ",
              int64_t(std::numeric_limits<int32_t>::max()) * kRowsPerBlock);
  return static_cast<unsigned>(blocks);
}

// ---------------------------------------------------------------- from probabilities

template <typename T>
__device__ bool probs_row_valid(const ProbsArgs<T>& in, int64_t row) {
  return warp_all(in.pred_x + row * in.wx, in.wx, is_nonnegative_finite<T>) &&
         warp_all(in.target_x + row * in.wx, in.wx, is_nonnegative_finite<T>) &&
         warp_all(in.pred_y + row * in.wy, in.wy, is_nonnegative_finite<T>) &&
         warp_all(in.target_y + row * in.wy, in.wy, is_nonnegative_finite<T>) && is_finite(weight_at(in.weight, row));
}

// log sum_i p_i t_i with the dot product in double (cannot underflow for float inputs).
template <typename T>
__device__ double log_dot(const T* p, const T* t, int64_t count) {
  double sum = 0.0;
  for (int64_t i = lane_id(); i < count; i += kWarpSize) sum += static_cast<double>(p[i]) * static_cast<double>(t[i]);
  return ::log(warp_sum(sum));
}

template <typename T>
__device__ double log_sum_x(const ProbsArgs<T>& in, int64_t row) {
  return log_dot(in.pred_x + row * in.wx, in.target_x + row * in.wx, in.wx);
}

template <typename T>
__device__ double log_sum_y(const ProbsArgs<T>& in, int64_t row) {
  return log_dot(in.pred_y + row * in.wy, in.target_y + row * in.wy, in.wy);
}

template <typename T>
__global__ void probs_forward_kernel(ProbsArgs<T> in, int64_t rows, double log_floor, T* loss,
                                     unsigned long long* num_invalid) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  if (!probs_row_valid(in, row)) {
    if (lane_id() == 0) {
      loss[row] = T(0);
      atomicAdd(num_invalid, 1ull);
    }
    return;
  }
  const double s = log_sum_x(in, row) + log_sum_y(in, row);
  if (lane_id() == 0) loss[row] = static_cast<T>(weight_at(in.weight, row) * nll_with_floor(s, log_floor));
}

template <typename T>
__device__ void write_probs_axis(const T* p, const T* t, T* gp, T* gt, int64_t count, double scale) {
  for (int64_t i = lane_id(); i < count; i += kWarpSize) {
    gp[i] = static_cast<T>(scale * static_cast<double>(t[i]));
    gt[i] = static_cast<T>(scale * static_cast<double>(p[i]));
  }
}

template <typename T>
__device__ void write_zeros(T* a, T* b, int64_t count) {
  for (int64_t i = lane_id(); i < count; i += kWarpSize) a[i] = b[i] = T(0);
}

template <typename T>
__global__ void probs_backward_kernel(ProbsArgs<T> in, int64_t rows, double log_floor, const T* grad_loss, T* gpx,
                                      T* gpy, T* gtx, T* gty) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  const int64_t ox = row * in.wx, oy = row * in.wy;
  if (!probs_row_valid(in, row)) {  // 0 loss, so 0 gradient (scale 0 times an inf input would be NaN)
    write_zeros(gpx + ox, gtx + ox, in.wx);
    write_zeros(gpy + oy, gty + oy, in.wy);
    return;
  }
  // d/dS_x of -log(S_x S_y + floor) = -exp(log S_y - logaddexp(log S_x + log S_y, log floor)).
  const double log_x = log_sum_x(in, row), log_y = log_sum_y(in, row);
  const double lae = log_add_exp(log_x + log_y, log_floor);
  const double upstream = -static_cast<double>(grad_loss[row]) * weight_at(in.weight, row);
  const double scale_x = upstream * ::exp(log_y - lae);
  const double scale_y = upstream * ::exp(log_x - lae);
  write_probs_axis(in.pred_x + ox, in.target_x + ox, gpx + ox, gtx + ox, in.wx, scale_x);
  write_probs_axis(in.pred_y + oy, in.target_y + oy, gpy + oy, gty + oy, in.wy, scale_y);
}

std::tuple<at::Tensor, at::Tensor> mlecc_from_probs_cuda(const at::Tensor& pred_x_in, const at::Tensor& pred_y_in,
                                                         const at::Tensor& target_x_in,
                                                         const at::Tensor& target_y_in,
                                                         const std::optional<at::Tensor>& weight_in, double floor) {
  check_mlecc_from_probs_args(pred_x_in, pred_y_in, target_x_in, target_y_in, weight_in, floor);
  const c10::cuda::CUDAGuard guard(pred_x_in.device());
  const ContiguousInputs inputs({pred_x_in, pred_y_in, target_x_in, target_y_in}, weight_in);
  const int64_t rows = pred_x_in.size(0) * pred_x_in.size(1);
  auto loss = at::empty({pred_x_in.size(0), pred_x_in.size(1)}, pred_x_in.options());
  auto num_invalid = at::zeros({}, pred_x_in.options().dtype(at::kLong));
  if (rows == 0) return {loss, num_invalid};
  AT_DISPATCH_FLOATING_TYPES(pred_x_in.scalar_type(), "mlecc_loss_from_probs_cuda", [&] {
    probs_forward_kernel<scalar_t><<<num_blocks(rows), kRowsPerBlock * kWarpSize, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(
        inputs.probs_args<scalar_t>(), rows, log_floor_of<double>(floor),
        loss.data_ptr<scalar_t>(), reinterpret_cast<unsigned long long*>(num_invalid.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, num_invalid};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlecc_from_probs_backward_cuda(
    const at::Tensor& grad_loss_in, const at::Tensor& pred_x_in, const at::Tensor& pred_y_in,
    const at::Tensor& target_x_in, const at::Tensor& target_y_in, const std::optional<at::Tensor>& weight_in,
    double floor) {
  check_mlecc_from_probs_args(pred_x_in, pred_y_in, target_x_in, target_y_in, weight_in, floor);
  check_mlecc_grad_arg(grad_loss_in, pred_x_in);
  const c10::cuda::CUDAGuard guard(pred_x_in.device());
  const auto grad_loss = grad_loss_in.contiguous();
  const ContiguousInputs inputs({pred_x_in, pred_y_in, target_x_in, target_y_in}, weight_in);
  const auto& t = inputs.tensors;
  auto grad_px = at::empty_like(t[0]), grad_py = at::empty_like(t[1]);
  auto grad_tx = at::empty_like(t[2]), grad_ty = at::empty_like(t[3]);
  const int64_t rows = pred_x_in.size(0) * pred_x_in.size(1);
  if (rows == 0) return {grad_px, grad_py, grad_tx, grad_ty};
  AT_DISPATCH_FLOATING_TYPES(pred_x_in.scalar_type(), "mlecc_loss_from_probs_backward_cuda", [&] {
    probs_backward_kernel<scalar_t><<<num_blocks(rows), kRowsPerBlock * kWarpSize, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(
        inputs.probs_args<scalar_t>(), rows, log_floor_of<double>(floor),
        grad_loss.data_ptr<scalar_t>(), grad_px.data_ptr<scalar_t>(), grad_py.data_ptr<scalar_t>(),
        grad_tx.data_ptr<scalar_t>(), grad_ty.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_px, grad_py, grad_tx, grad_ty};
}

// ---------------------------------------------------------------- from logits

template <typename T>
__device__ bool logits_row_valid(const LogitsArgs<T>& in, int64_t row) {
  return warp_all(in.logits(row, 0), in.wx, is_finite<T>) && warp_all(in.logits(row, 1), in.wy, is_finite<T>) &&
         in.scalars_valid(row);
}

// Two warp passes, as the CPU kernel: z_max and a shift close to max_i d_i + e_i, then the sums.
template <typename T>
__device__ LogNormalisers<T> axis_forward(const T* logits, const T* lin, int64_t bins, const LaplaceAxis<T>& tgt) {
  T z_max = -std::numeric_limits<T>::infinity(), joint_max = z_max;
  for (int64_t i = lane_id(); i < bins; i += kWarpSize) {
    const T z = clamp_logit(logits[i]);
    z_max = max(z_max, z);
    joint_max = max(joint_max, z + tgt.exponent(lin[i]));
  }
  z_max = warp_max(z_max);
  const T shift = warp_max(joint_max) - z_max;
  T sum_softmax = 0, sum_joint = 0;
  for (int64_t i = lane_id(); i < bins; i += kWarpSize) {
    const T d = clamp_logit(logits[i]) - z_max;
    sum_softmax += ::exp(d);
    sum_joint += ::exp(d + tgt.exponent(lin[i]) - shift);
  }
  return {z_max, ::log(warp_sum(sum_softmax) + static_cast<T>(kSoftmaxEps)), shift + ::log(warp_sum(sum_joint))};
}

template <typename T>
struct AxisGrads {
  T sigma, center, scale;
};

// Same derivation as the CPU kernel: d loss / d z_i = grad_s (r_i - p_i) with r the posterior
// over bins, d s / d s' = sum r q / (2 s') - 1 / s', d s / d b_i = r_i sign(g - b_i) / (2 a' s').
template <typename T>
__device__ AxisGrads<T> axis_backward(const T* logits, const T* lin, int64_t bins, const LaplaceAxis<T>& tgt,
                                      const LogNormalisers<T>& lse, T grad_s, T* grad_logits) {
  T sum_rq = 0, sum_rs = 0, sum_rls = 0;
  for (int64_t i = lane_id(); i < bins; i += kWarpSize) {
    const T raw = logits[i];
    const T d = clamp_logit(raw) - lse.z_max;
    const T diff = tgt.coord - tgt.bin(lin[i]);
    const T q = tgt.distance(lin[i]);
    const T r = ::exp(d - q * T(0.5) - lse.joint);
    const T p = ::exp(d - lse.softmax);
    grad_logits[i] = logit_grad(raw, grad_s, r, p);
    const T signed_r = diff > 0 ? r : (diff < 0 ? -r : T(0));
    sum_rq += r * q;
    sum_rs += signed_r;
    sum_rls += signed_r * lin[i];
  }
  const T half_inv_sigma = T(0.5) / tgt.sigma;
  const T bin_scale = half_inv_sigma / tgt.area;
  return {warp_sum(sum_rq) * half_inv_sigma - T(1) / tgt.sigma, warp_sum(sum_rs) * bin_scale,
          warp_sum(sum_rls) * bin_scale};
}

template <typename T>
__device__ T row_log_likelihood(const LogNormalisers<T>& lx, const LogNormalisers<T>& ly, T sigma) {
  return lx.log_likelihood(sigma) + ly.log_likelihood(sigma);
}

template <typename T>
__global__ void logits_forward_kernel(LogitsArgs<T> in, int64_t rows, T log_floor, T* loss, T* stats,
                                      unsigned long long* num_invalid) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  if (!logits_row_valid(in, row)) {
    if (lane_id() == 0) {
      loss[row] = T(0);
      for (int j = 0; j < kRowStats; ++j) stats[row * kRowStats + j] = std::numeric_limits<T>::quiet_NaN();
      atomicAdd(num_invalid, 1ull);
    }
    return;
  }
  const auto tx = in.target(row, 0), ty = in.target(row, 1);
  const auto lx = axis_forward(in.logits_x + row * in.wx, in.x_bins, in.wx, tx);
  const auto ly = axis_forward(in.logits_y + row * in.wy, in.y_bins, in.wy, ty);
  if (lane_id() == 0) {
    loss[row] = weight_at(in.weight, row) * nll_with_floor(row_log_likelihood(lx, ly, tx.sigma), log_floor);
    lx.store(stats + row * kRowStats);
    ly.store(stats + row * kRowStats + LogNormalisers<T>::kCount);
  }
}

// Writes the logits' gradients, d loss / d sigma per row and the per-row bbox_cs partials
// (summed over keypoints afterwards).
template <typename T>
__global__ void logits_backward_kernel(LogitsArgs<T> in, int64_t rows, T log_floor, const T* grad_loss,
                                       const T* stats, T* grad_lx, T* grad_ly, T* grad_sigmas, T* bbox_partials) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  const T* rs = stats + row * kRowStats;
  T* glx = grad_lx + row * in.wx;
  T* gly = grad_ly + row * in.wy;
  if (isnan(rs[0])) {  // invalid inputs: counted in the forward, no gradient
    for (int64_t i = lane_id(); i < in.wx; i += kWarpSize) glx[i] = T(0);
    for (int64_t i = lane_id(); i < in.wy; i += kWarpSize) gly[i] = T(0);
    if (lane_id() == 0) {
      grad_sigmas[row] = T(0);
      for (int j = 0; j < 4; ++j) bbox_partials[row * 4 + j] = T(0);
    }
    return;
  }
  const auto tx = in.target(row, 0), ty = in.target(row, 1);
  const auto lx = LogNormalisers<T>::load(rs), ly = LogNormalisers<T>::load(rs + LogNormalisers<T>::kCount);
  const T grad_s = grad_loss[row] * weight_at(in.weight, row) *
                   nll_with_floor_grad(row_log_likelihood(lx, ly, tx.sigma), log_floor);
  const auto gx = axis_backward(in.logits_x + row * in.wx, in.x_bins, in.wx, tx, lx, grad_s, glx);
  const auto gy = axis_backward(in.logits_y + row * in.wy, in.y_bins, in.wy, ty, ly, grad_s, gly);
  if (lane_id() == 0) {
    const bool sigma_unclipped = in.sigmas[row] >= static_cast<T>(kSigmaMin);
    grad_sigmas[row] = sigma_unclipped ? grad_s * (gx.sigma + gy.sigma) : T(0);
    bbox_partials[row * 4] = grad_s * gx.center;
    bbox_partials[row * 4 + 1] = grad_s * gy.center;
    bbox_partials[row * 4 + 2] = grad_s * gx.scale;
    bbox_partials[row * 4 + 3] = grad_s * gy.scale;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlecc_from_logits_cuda(
    const at::Tensor& logits_x, const at::Tensor& logits_y, const at::Tensor& keypoints, const at::Tensor& bbox_cs,
    const at::Tensor& sigmas, const at::Tensor& areas, const std::optional<at::Tensor>& weight_in,
    const at::Tensor& x_bins, const at::Tensor& y_bins, double floor) {
  check_mlecc_from_logits_args(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight_in, x_bins, y_bins,
                               floor);
  const c10::cuda::CUDAGuard guard(logits_x.device());
  const ContiguousInputs inputs({logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, x_bins, y_bins}, weight_in);
  const int64_t n_inst = logits_x.size(0), k = logits_x.size(1), rows = n_inst * k;
  auto loss = at::empty({n_inst, k}, logits_x.options());
  auto stats = at::empty({n_inst, k, kRowStats}, logits_x.options());
  auto num_invalid = at::zeros({}, logits_x.options().dtype(at::kLong));
  if (rows == 0) return {loss, num_invalid, stats};
  AT_DISPATCH_FLOATING_TYPES(logits_x.scalar_type(), "mlecc_loss_from_logits_cuda", [&] {
    logits_forward_kernel<scalar_t><<<num_blocks(rows), kRowsPerBlock * kWarpSize, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(
        inputs.logits_args<scalar_t>(), rows, log_floor_of<scalar_t>(floor), loss.data_ptr<scalar_t>(),
        stats.data_ptr<scalar_t>(), reinterpret_cast<unsigned long long*>(num_invalid.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, num_invalid, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlecc_from_logits_backward_cuda(
    const at::Tensor& grad_loss_in, const at::Tensor& logits_x, const at::Tensor& logits_y,
    const at::Tensor& keypoints, const at::Tensor& bbox_cs, const at::Tensor& sigmas, const at::Tensor& areas,
    const std::optional<at::Tensor>& weight_in, const at::Tensor& x_bins, const at::Tensor& y_bins,
    const at::Tensor& row_stats_in, double floor) {
  check_mlecc_from_logits_args(logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, weight_in, x_bins, y_bins,
                               floor);
  check_mlecc_grad_arg(grad_loss_in, logits_x);
  check_mlecc_row_stats_arg(row_stats_in, logits_x);
  const c10::cuda::CUDAGuard guard(logits_x.device());
  const ContiguousInputs inputs({logits_x, logits_y, keypoints, bbox_cs, sigmas, areas, x_bins, y_bins}, weight_in);
  const auto& t = inputs.tensors;
  const auto grad_loss = grad_loss_in.contiguous(), row_stats = row_stats_in.contiguous();
  const int64_t n_inst = logits_x.size(0), k = logits_x.size(1), rows = n_inst * k;
  auto grad_lx = at::empty_like(t[0]), grad_ly = at::empty_like(t[1]), grad_sigmas = at::empty_like(t[4]);
  auto bbox_partials = at::empty({n_inst, k, 4}, logits_x.options());
  if (rows == 0) return {grad_lx, grad_ly, grad_sigmas, at::zeros_like(t[3])};
  AT_DISPATCH_FLOATING_TYPES(logits_x.scalar_type(), "mlecc_loss_from_logits_backward_cuda", [&] {
    logits_backward_kernel<scalar_t><<<num_blocks(rows), kRowsPerBlock * kWarpSize, 0,
                                       at::cuda::getCurrentCUDAStream()>>>(
        inputs.logits_args<scalar_t>(), rows, log_floor_of<scalar_t>(floor), grad_loss.data_ptr<scalar_t>(),
        row_stats.data_ptr<scalar_t>(), grad_lx.data_ptr<scalar_t>(), grad_ly.data_ptr<scalar_t>(),
        grad_sigmas.data_ptr<scalar_t>(), bbox_partials.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_lx, grad_ly, grad_sigmas, at::sum(bbox_partials, 1)};
}

}  // namespace
}  // namespace fastops

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("mlecc_loss_from_probs", &fastops::mlecc_from_probs_cuda);
  m.impl("mlecc_loss_from_probs_backward", &fastops::mlecc_from_probs_backward_cuda);
  m.impl("mlecc_loss_from_logits", &fastops::mlecc_from_logits_cuda);
  m.impl("mlecc_loss_from_logits_backward", &fastops::mlecc_from_logits_backward_cuda);
}
