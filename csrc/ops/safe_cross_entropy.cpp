// Schemas and device-independent argument checks of the fp16-safe clamped cross-entropy ops.
#include "ops/safe_cross_entropy.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

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

// Clamp bounds the accumulation type cannot hold (inf, or above float32's max for float32
// accumulation) would make -clamp the identity of the max-reduction and exp(-inf - -inf) NaN.
void check_clamp(double clamp, const at::Tensor& logits, const char* op) {
  const double limit = loss_dtype(logits) == at::kDouble ? std::numeric_limits<double>::max()
                                                        : std::numeric_limits<float>::max();
  TORCH_CHECK(clamp > 0 && clamp <= limit, op, ": clamp must be a finite positive number representable in ",
              loss_dtype(logits), " (at most ", limit, "), got ", clamp);
}

void check_grad_loss(const at::Tensor& grad_loss, const at::Tensor& logits, at::IntArrayRef expected,
                     const char* op) {
  TORCH_CHECK(grad_loss.device() == logits.device(), op, ": grad_loss is on ", grad_loss.device(),
              " but logits are on ", logits.device());
  TORCH_CHECK(grad_loss.is_floating_point(), op, ": grad_loss must be floating point, got ",
              grad_loss.scalar_type());
  TORCH_CHECK(grad_loss.sizes() == expected, op, ": grad_loss has shape ", grad_loss.sizes(), ", expected ",
              expected);
}

}  // namespace

at::ScalarType loss_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

SigmoidGrad sigmoid_grad_values(const at::Tensor& grad_loss, at::ScalarType dtype) {
  const auto strides = grad_loss.strides();
  const bool scalar =
      grad_loss.numel() > 0 && std::all_of(strides.begin(), strides.end(), [](int64_t s) { return s == 0; });
  if (scalar) return {grad_loss.as_strided({1}, {1}).to(dtype), true};
  return {grad_loss.to(dtype).contiguous(), false};
}

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
  check_clamp(clamp, logits, "safe_cross_entropy");
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
  check_clamp(clamp, logits, "safe_sigmoid_cross_entropy");
}

void check_softmax_backward_args(const at::Tensor& grad_loss, const at::Tensor& lse, const at::Tensor& stats,
                                 const at::Tensor& logits) {
  const char* op = "safe_cross_entropy_backward";
  check_grad_loss(grad_loss, logits, {logits.size(0)}, op);
  TORCH_CHECK(lse.device() == logits.device(), op, ": lse is on ", lse.device(), " but logits are on ",
              logits.device());
  TORCH_CHECK(lse.scalar_type() == loss_dtype(logits), op, ": lse must be ", loss_dtype(logits),
              " (the forward's second output), got ", lse.scalar_type());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef{logits.size(0)}, op, ": lse has shape ", lse.sizes(), ", expected [",
              logits.size(0), "]");
  TORCH_CHECK(stats.device() == logits.device(), op, ": stats is on ", stats.device(), " but logits are on ",
              logits.device());
  TORCH_CHECK(stats.scalar_type() == at::kLong && stats.sizes() == at::IntArrayRef{2}, op,
              ": stats must be int64 of shape [2] (the forward's third output), got ", stats.scalar_type(),
              " of shape ", stats.sizes());
}

void check_sigmoid_backward_args(const at::Tensor& grad_loss, const at::Tensor& logits) {
  check_grad_loss(grad_loss, logits, logits.sizes(), "safe_sigmoid_cross_entropy_backward");
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // straight_through is read by autograd only (it selects the backward).
  // loss [N] fp32 (class_weight[label] * (logsumexp(x) - x[label]), 0 where ignored), lse [N] fp32
  // saved for backward, stats [2] int64 = (num_clamped, num_nan). Labels outside [0, C) other than
  // ignore_index raise (CPU) or fail a device-side assert (CUDA), with the same message. The
  // backward takes lse and stats as the forward returned them: on CPU, stats of (0, 0) select the
  // unmasked path (the gradient is the same; lse and stats are not checked against the logits).
  m.def(
      "safe_cross_entropy(Tensor logits, Tensor labels, Tensor? class_weight, int ignore_index, "
      "float clamp, bool straight_through) -> (Tensor loss, Tensor lse, Tensor stats)");
  m.def(
      "safe_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor labels, "
      "Tensor? class_weight, Tensor lse, Tensor stats, int ignore_index, float clamp, "
      "bool straight_through) -> Tensor");
  // loss [N, C] fp32 elementwise BCE-with-logits (pos_weight as torch's), stats as above.
  m.def(
      "safe_sigmoid_cross_entropy(Tensor logits, Tensor targets, Tensor? pos_weight, "
      "int ignore_index, float clamp, bool straight_through) -> (Tensor loss, Tensor stats)");
  m.def(
      "safe_sigmoid_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor targets, "
      "Tensor? pos_weight, int ignore_index, float clamp, bool straight_through) -> Tensor");
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autograd of both ops lives here, in C++, rather than in Python (torch.library's
// register_autograd): the losses run on small [N, C] per iteration (an RoI head: N ~ 512), where
// a Python autograd function costs as much as the kernels.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor saved_or_undefined(const std::optional<at::Tensor>& tensor) { return tensor.value_or(at::Tensor()); }

std::optional<at::Tensor> optional_saved(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

void save_settings(AutogradContext* ctx, int64_t ignore_index, double clamp, bool straight_through) {
  ctx->saved_data["ignore_index"] = ignore_index;
  ctx->saved_data["clamp"] = clamp;
  ctx->saved_data["straight_through"] = straight_through;
}

class SafeCrossEntropy : public torch::autograd::Function<SafeCrossEntropy> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                               const std::optional<at::Tensor>& class_weight, int64_t ignore_index, double clamp,
                               bool straight_through) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double, bool)>(
        "fastops::safe_cross_entropy");
    auto [loss, lse, stats] = op.call(logits, labels, class_weight, ignore_index, clamp, straight_through);
    ctx->save_for_backward({logits, labels, saved_or_undefined(class_weight), lse, stats});
    save_settings(ctx, ignore_index, clamp, straight_through);
    ctx->mark_non_differentiable({lse, stats});
    return {loss, lse, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&, const at::Tensor&,
                                                const at::Tensor&, int64_t, double, bool)>(
        "fastops::safe_cross_entropy_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_logits =
        op.call(grads[0], saved[0], saved[1], optional_saved(saved[2]), saved[3], saved[4],
                ctx->saved_data["ignore_index"].toInt(), ctx->saved_data["clamp"].toDouble(),
                ctx->saved_data["straight_through"].toBool());
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class SafeSigmoidCrossEntropy : public torch::autograd::Function<SafeSigmoidCrossEntropy> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets,
                               const std::optional<at::Tensor>& pos_weight, int64_t ignore_index, double clamp,
                               bool straight_through) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double, bool)>(
        "fastops::safe_sigmoid_cross_entropy");
    auto [loss, stats] = op.call(logits, targets, pos_weight, ignore_index, clamp, straight_through);
    ctx->save_for_backward({logits, targets, saved_or_undefined(pos_weight)});
    save_settings(ctx, ignore_index, clamp, straight_through);
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&, int64_t, double, bool)>(
        "fastops::safe_sigmoid_cross_entropy_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor grad_logits =
        op.call(grads[0], saved[0], saved[1], optional_saved(saved[2]), ctx->saved_data["ignore_index"].toInt(),
                ctx->saved_data["clamp"].toDouble(), ctx->saved_data["straight_through"].toBool());
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> safe_cross_entropy_autograd(
    const at::Tensor& logits, const at::Tensor& labels, const std::optional<at::Tensor>& class_weight,
    int64_t ignore_index, double clamp, bool straight_through) {
  auto out = SafeCrossEntropy::apply(logits, labels, class_weight, ignore_index, clamp, straight_through);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> safe_sigmoid_cross_entropy_autograd(
    const at::Tensor& logits, const at::Tensor& targets, const std::optional<at::Tensor>& pos_weight,
    int64_t ignore_index, double clamp, bool straight_through) {
  auto out = SafeSigmoidCrossEntropy::apply(logits, targets, pos_weight, ignore_index, clamp, straight_through);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("safe_cross_entropy", &safe_cross_entropy_autograd);
  m.impl("safe_sigmoid_cross_entropy", &safe_sigmoid_cross_entropy_autograd);
}

}  // namespace fastops
