// Argument checks shared by the CPU and CUDA kernels of the safe cross-entropy ops.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fastops {

void check_softmax_args(const at::Tensor& logits, const at::Tensor& labels,
                        const std::optional<at::Tensor>& class_weight, double clamp);
void check_sigmoid_args(const at::Tensor& logits, const at::Tensor& targets,
                        const std::optional<at::Tensor>& pos_weight, double clamp);
void check_grad(const at::Tensor& grad, at::IntArrayRef expected, const char* op);

}  // namespace fastops
