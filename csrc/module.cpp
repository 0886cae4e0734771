// fastops._C: build information only. The operators register through TORCH_LIBRARY in csrc/ops.
#include <torch/extension.h>

#include "cpu/isa.h"

#ifndef FASTOPS_CUDA_ARCHES
#define FASTOPS_CUDA_ARCHES ""
#endif

PYBIND11_MODULE(_C, m) {
#ifdef FASTOPS_WITH_CUDA
  m.def("cuda_built", [] { return true; });
#else
  m.def("cuda_built", [] { return false; });
#endif
  m.def("cuda_arches", [] { return std::string(FASTOPS_CUDA_ARCHES); });
  m.def("torch_version_built", [] { return std::string(TORCH_VERSION_BUILT); });
  m.def("cpu_isa", [] {
    const char* names[] = {"baseline", "avx2", "avx512"};
    return std::string(names[static_cast<int>(fastops::cpu_isa())]);
  });
}
