// Raw pointers into contiguous versions of an op's tensors, kept alive by the op's batch struct
// (make_simota_batch, make_soft_label_batch).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace fastops {

template <typename T>
T* keep(std::vector<at::Tensor>& owners, const at::Tensor& t) {
  owners.push_back(t.contiguous());
  return owners.back().data_ptr<T>();
}

template <typename T>
T* keep_optional(std::vector<at::Tensor>& owners, const std::optional<at::Tensor>& t) {
  return t.has_value() ? keep<T>(owners, *t) : nullptr;
}

}  // namespace fastops
