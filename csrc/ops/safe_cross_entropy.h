// Argument checks shared by the CPU and CUDA kernels of the safe cross-entropy ops.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fastops {

void check_softmax_args(const at::Tensor& logits, const at::Tensor& labels,
                        const std::optional<at::Tensor>& class_weight, double clamp);
void check_sigmoid_args(const at::Tensor& logits, const at::Tensor& targets,
                        const std::optional<at::Tensor>& pos_weight, double clamp);
// grad_loss (and lse, stats) of the backward ops: floating point, on the logits' device, of the
// forward output's shape ([N] softmax, [N, C] sigmoid); lse in the accumulation dtype; stats int64 [2].
void check_softmax_backward_args(const at::Tensor& grad_loss, const at::Tensor& lse, const at::Tensor& stats,
                                 const at::Tensor& logits);
void check_sigmoid_backward_args(const at::Tensor& grad_loss, const at::Tensor& logits);

// The accumulation dtype of the losses: float64 for float64 logits, float32 otherwise.
at::ScalarType loss_dtype(const at::Tensor& logits);

// The sigmoid backward's grad_loss in the accumulation dtype: its one value when it is a scalar
// broadcast to [N, C] (the gradient of a sum or a mean), which is then not materialised; else
// contiguous.
struct SigmoidGrad {
  at::Tensor values;
  bool scalar;
};
SigmoidGrad sigmoid_grad_values(const at::Tensor& grad_loss, at::ScalarType dtype);

// The message of an out-of-range label, shared by the CPU check and the CUDA kernel assert.
#define FASTOPS_LABEL_RANGE_MSG "%s: labels[%lld] = %lld is out of range [0, %lld) and is not ignore_index (%lld)"

}  // namespace fastops
