// What every CPU kernel shares for its vector code: the accumulation type, the inline and target
// attribute macros, the one AVX2 run-time check, and the 32-byte vector types.
//
// The extension is compiled without -march flags (a portable wheel), so ATen's
// at::vec::Vectorized falls back to its generic array code and GCC left its operators as
// out-of-line calls (0.4 GB/s measured in gap_stats). Instead, kernels use GCC/Clang vector
// extension types, whose builtin operators always inline, and compile each hot loop nest twice:
//
//   template <typename scalar_t>
//   GCNPRUNE_ALWAYS_INLINE void rows_impl(...) { ... }            // the loop nest
//   template <typename scalar_t>
//   void rows_default(...) { rows_impl<scalar_t>(...); }          // baseline ISA
//   #if GCNPRUNE_HAVE_AVX2_CLONE
//   template <typename scalar_t>
//   GCNPRUNE_TARGET_AVX2 void rows_avx2(...) { rows_impl<scalar_t>(...); }
//   #endif
//   ... if (cpu::cpu_has_avx2()) rows_avx2(...); else rows_default(...);
//
// Everything the clone calls must be force-inlined (GCNPRUNE_ALWAYS_INLINE), or it stays
// compiled for the baseline ISA; lambdas do not inherit the target attribute, so keep them out of
// the hot path. The clone and the check must agree: GCNPRUNE_TARGET_AVX2 enables exactly the
// features that cpu_has_avx2() tests.
#pragma once

#include "common/acc_type.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__GNUC__) || defined(__clang__)
#define GCNPRUNE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define GCNPRUNE_ALWAYS_INLINE inline
#endif

// AVX2 clones: GCC/Clang on x86-64. The clone also uses FMA (a * b + c is contracted to one
// vfmadd) and F16C (vcvtph2ps for float16 loads), so it runs only where all three exist.
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#define GCNPRUNE_HAVE_AVX2_CLONE 1
#define GCNPRUNE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define GCNPRUNE_HAVE_AVX2_CLONE 0
#define GCNPRUNE_TARGET_AVX2
#endif

// 32-byte vector values never cross a non-inlined call: the ABI note does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace gcnprune {
namespace cpu {

// True when this CPU can run GCNPRUNE_TARGET_AVX2 code: AVX2, FMA and F16C. Cached.
inline bool cpu_has_avx2() {
#if GCNPRUNE_HAVE_AVX2_CLONE
  static const bool has = [] {
    __builtin_cpu_init();  // harmless when libgcc already ran it; needed before constructors
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return has;
#else
  return false;
#endif
}

// 32-byte vectors of acc_t (float or double): one AVX2 register in the AVX2 clones, two SSE
// registers otherwise.
//   V  naturally (32-byte) aligned value type: registers, aligned scratch arrays, and loads
//      through std::memcpy;
//   U  the same vector as an unaligned, may-alias type: loads and stores by dereferencing a
//      U* made from a scalar pointer;
//   I  integer lanes of the same width (comparison results: -1 for true, 0 for false).
// (Use these members directly: GCC drops the attributes of vector types passed as template
// arguments, e.g. std::vector<V> would not be 32-byte aligned.)
template <typename acc_t>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef float U __attribute__((vector_size(32), aligned(4), may_alias));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int64_t kSize = 8;
  static constexpr int32_t kAbsMask = 0x7fffffff;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef double U __attribute__((vector_size(32), aligned(8), may_alias));
  typedef int64_t I __attribute__((vector_size(32)));
  static constexpr int64_t kSize = 4;
  static constexpr int64_t kAbsMask = 0x7fffffffffffffffLL;
};

// Lane helpers. Internal linkage (unnamed namespace), like the kernels that inline them: each
// translation unit compiles its own copies into its baseline and AVX2 code, and nothing is shared
// through the linker. (With external linkage GCC 12 also laid out the gap_stats loops differently.)
namespace {

template <typename acc_t>
GCNPRUNE_ALWAYS_INLINE typename Simd<acc_t>::V splat(acc_t a) {
  return typename Simd<acc_t>::V{} + a;
}

template <typename acc_t>
GCNPRUNE_ALWAYS_INLINE typename Simd<acc_t>::V vabs(typename Simd<acc_t>::V v) {
  using I = typename Simd<acc_t>::I;
  return (typename Simd<acc_t>::V)((I)v & Simd<acc_t>::kAbsMask);
}

// max without NaN propagation (like maxps: a NaN in v is dropped).
template <typename acc_t>
GCNPRUNE_ALWAYS_INLINE typename Simd<acc_t>::V vmax(typename Simd<acc_t>::V v,
                                                    typename Simd<acc_t>::V m) {
  return v > m ? v : m;
}

// Horizontal sum of a 32-byte vector in double: halve twice with vector ops, then 2 scalar lanes.
template <typename V>
GCNPRUNE_ALWAYS_INLINE double hsum(V v) {
  constexpr int K = sizeof(V) / sizeof(v[0]);
  typedef std::remove_cv_t<std::remove_reference_t<decltype(v[0])>> T;
  typedef T H __attribute__((vector_size(16)));
  H h;
  if constexpr (K == 8) {
    h = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return static_cast<double>(h[0] + h[2]) + static_cast<double>(h[1] + h[3]);
  } else {
    h = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
    return static_cast<double>(h[0]) + static_cast<double>(h[1]);
  }
}

// Horizontal max in double (std::max order: a NaN lane after lane 0 is dropped).
template <typename V>
GCNPRUNE_ALWAYS_INLINE double hmax(V v) {
  double m = static_cast<double>(v[0]);
  for (size_t i = 1; i < sizeof(V) / sizeof(v[0]); ++i) m = std::max(m, static_cast<double>(v[i]));
  return m;
}

}  // namespace

}  // namespace cpu
}  // namespace gcnprune
