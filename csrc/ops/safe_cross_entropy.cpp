// Schemas and device-independent argument checks of the fp16-safe clamped cross-entropy ops.
#include "ops/safe_cross_entropy.h"

#include <torch/library.h>

namespace fastops {

namespace {

void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "safe_cross_entropy: logits must be 2-D [N, C], got shape ",
              logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kHalf ||
                  logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kDouble,
              "safe_cross_entropy: logits must be float32, float16, bfloat16 or float64, got ",
              logits.scalar_type());
}

void check_same_device(const at::Tensor& logits, const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.device() == logits.device(), "safe_cross_entropy: ", name, " is on ",
              other.device(), " but logits are on ", logits.device());
}

void check_class_weight(const at::Tensor& logits, const std::optional<at::Tensor>& class_weight,
                        const char* name) {
  if (!class_weight.has_value()) return;
  const at::Tensor& w = *class_weight;
  check_same_device(logits, w, name);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == logits.size(1), "safe_cross_entropy: ", name,
              " must have shape [C] = [", logits.size(1), "], got ", w.sizes());
  TORCH_CHECK(w.is_floating_point(), "safe_cross_entropy: ", name, " must be floating point, got ",
              w.scalar_type());
}

}  // namespace

void check_softmax_args(const at::Tensor& logits, const at::Tensor& labels,
                        const std::optional<at::Tensor>& class_weight, double clamp) {
  check_logits(logits);
  check_same_device(logits, labels, "labels");
  TORCH_CHECK(labels.dim() == 1, "safe_cross_entropy: labels must be 1-D [N], got shape ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "safe_cross_entropy: labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.size(0) == logits.size(0), "safe_cross_entropy: labels has N=", labels.size(0),
              " but logits has N=", logits.size(0));
  TORCH_CHECK(logits.size(1) > 0 || logits.size(0) == 0,
              "safe_cross_entropy: logits must have at least one class");
  check_class_weight(logits, class_weight, "class_weight");
  TORCH_CHECK(clamp > 0, "safe_cross_entropy: clamp must be positive, got ", clamp);
}

void check_sigmoid_args(const at::Tensor& logits, const at::Tensor& targets,
                        const std::optional<at::Tensor>& pos_weight, double clamp) {
  check_logits(logits);
  check_same_device(logits, targets, "targets");
  if (targets.scalar_type() == at::kLong) {
    TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0),
                "safe_sigmoid_cross_entropy: int64 targets must be class indices of shape [N] = [",
                logits.size(0), "], got ", targets.sizes());
  } else {
    TORCH_CHECK(targets.is_floating_point(),
                "safe_sigmoid_cross_entropy: targets must be int64 class indices [N] or floating "
                "point [N, C], got ", targets.scalar_type());
    TORCH_CHECK(targets.sizes() == logits.sizes(),
                "safe_sigmoid_cross_entropy: float targets must have the logits' shape ",
                logits.sizes(), ", got ", targets.sizes());
  }
  check_class_weight(logits, pos_weight, "pos_weight");
  TORCH_CHECK(clamp > 0, "safe_sigmoid_cross_entropy: clamp must be positive, got ", clamp);
}

void check_grad(const at::Tensor& grad, at::IntArrayRef expected, const char* op) {
  TORCH_CHECK(grad.sizes() == expected, op, ": grad has shape ", grad.sizes(), ", expected ",
              expected);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // straight_through is read by autograd only (it selects the backward).
  // loss [N] fp32 (class_weight[label] * (logsumexp(x) - x[label]), 0 where ignored), lse [N] fp32
  // saved for backward, stats [3] int64 = (num_clamped, num_nan, num_invalid_labels).
  m.def(
      "safe_cross_entropy(Tensor logits, Tensor labels, Tensor? class_weight, int ignore_index, "
      "float clamp, bool straight_through) -> (Tensor loss, Tensor lse, Tensor stats)");
  m.def(
      "safe_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor labels, "
      "Tensor? class_weight, Tensor lse, int ignore_index, float clamp, bool straight_through) "
      "-> Tensor");
  // loss [N, C] fp32 elementwise BCE-with-logits (pos_weight as torch's), stats as above.
  m.def(
      "safe_sigmoid_cross_entropy(Tensor logits, Tensor targets, Tensor? pos_weight, "
      "int ignore_index, float clamp, bool straight_through) -> (Tensor loss, Tensor stats)");
  m.def(
      "safe_sigmoid_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor targets, "
      "Tensor? pos_weight, int ignore_index, float clamp, bool straight_through) -> Tensor");
}

}  // namespace fastops
