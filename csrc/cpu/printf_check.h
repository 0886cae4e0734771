// Value errors of the CPU kernels, formatted with the printf formats the CUDA kernels' asserts use
// (the FASTOPS_*_MSG macros), so that both devices report a bad value in the same words.
#pragma once

#include <c10/util/Exception.h>

#include <cstdio>

namespace fastops {

template <typename... Args>
[[noreturn]] void fail_printf(const char* format, Args... args) {
  char message[256];
  std::snprintf(message, sizeof(message), format, args...);
  TORCH_CHECK(false, message);
  __builtin_unreachable();
}

}  // namespace fastops
