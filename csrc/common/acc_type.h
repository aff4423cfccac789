// Accumulation type of a kernel's input dtype, shared by the CPU and CUDA kernels:
// float32 for float16 / bfloat16 / float32, float64 for float64.
// (Not at::acc_type: its CPU flavour accumulates float32 in float64.)
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace gcnprune {

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};

template <typename T>
using acc_type_t = typename AccType<T>::type;

}  // namespace gcnprune
