// IEEE round-to-nearest arithmetic with one rounding per operation, on host and device.
//
// The stock PyTorch graphs round after every elementwise op; a fused multiply-add would move
// results (bin positions, IoUs, costs) by an ulp and can flip a SimOTA ranking or a σ=1e-3 target.
// nvcc contracts a*b+c into an FMA by default, so device code goes through the _rn intrinsics; host
// code is compiled with -ffp-contract=off (setup.py), so the plain operators round each step.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace fastops {

#ifdef __CUDA_ARCH__
C10_HOST_DEVICE inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
C10_HOST_DEVICE inline double add_rn(double a, double b) { return __dadd_rn(a, b); }
C10_HOST_DEVICE inline float sub_rn(float a, float b) { return __fsub_rn(a, b); }
C10_HOST_DEVICE inline double sub_rn(double a, double b) { return __dsub_rn(a, b); }
C10_HOST_DEVICE inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
C10_HOST_DEVICE inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
C10_HOST_DEVICE inline float div_rn(float a, float b) { return __fdiv_rn(a, b); }
C10_HOST_DEVICE inline double div_rn(double a, double b) { return __ddiv_rn(a, b); }
C10_HOST_DEVICE inline float sqrt_rn(float a) { return __fsqrt_rn(a); }
#else
template <typename T>
inline T add_rn(T a, T b) { return a + b; }
template <typename T>
inline T sub_rn(T a, T b) { return a - b; }
template <typename T>
inline T mul_rn(T a, T b) { return a * b; }
template <typename T>
inline T div_rn(T a, T b) { return a / b; }
inline float sqrt_rn(float a) { return std::sqrt(a); }
#endif

}  // namespace fastops
