// Shared by the CPU and CUDA kernels of cosine_similarity / kl_similarity / knn_graph
// (csrc/cpu/knn_graph_cpu.cpp, csrc/cuda/knn_graph_cuda.cu): argument checks, row normalization
// and helpers. Header-only; host code (ATen ops only, valid for any device).
//
// Semantics (mirrors gcnprune_fast/ops/reference/graph.py):
//   - compute dtype: float64 for float64 input, float32 otherwise;
//   - cosine: rows optionally centered (constant rows become exactly 0), scaled by their max
//     |value| (no overflow in the squares), then divided by their L2 norm; zero rows stay zero;
//   - kl: each row is standardized (z-score, population std; an exactly constant row gives z = 0),
//     p = softmax(z) over the B samples, and
//       d(i, j) = (KL(p_i||p_j) + KL(p_j||p_i)) / 2 = ((a_i + a_j) - (M_ij + M_ji)) / 2,
//       a_i = sum_b p_ib z_ib, M = P Z^T  (the log-partition terms cancel since sum(p_i - p_j) = 0);
//     similarity = exp(-max(d, 0)), exactly 1 on the diagonal;
//   - kNN order: (s, j) ranks before (s', j') when s > s', or s == s' and j < j'.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace gcnprune {
namespace knn_detail {

inline at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_features(const at::Tensor& f) {
  TORCH_CHECK_VALUE(f.dim() == 2, "f: expected a 2-D tensor [C, B], got shape ", f.sizes());
  auto t = f.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "f: expected float16, bfloat16, float32 or float64, got ", t);
}

// knn_graph's k (f is checked by check_features).
inline void check_k(int64_t k) { TORCH_CHECK_VALUE(k >= 0, "k: must be >= 0, got ", k); }

// Unit-norm rows [C, B] in the compute dtype, contiguous. Raises ValueError for NaN/inf in f.
inline at::Tensor normalized_rows(const at::Tensor& f, bool center) {
  at::Tensor x = f.to(compute_type(f.scalar_type())).contiguous();
  if (x.size(1) == 0) return x;  // B = 0: every row has zero norm
  if (center) {
    x = x - x.mean({1}, /*keepdim=*/true);
    auto constant = x.amax({1}) == x.amin({1});
    x = x.masked_fill(constant.unsqueeze(1), 0.0);
  }
  at::Tensor scale = x.abs().amax({1}, /*keepdim=*/true);
  TORCH_CHECK_VALUE(at::isfinite(scale).all().item<bool>(), "f: holds NaN or infinite values");
  x = x / at::where(scale > 0, scale, at::ones_like(scale));
  at::Tensor norm = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/true);
  return (x / at::where(norm > 0, norm, at::ones_like(norm))).contiguous();
}

// knn_graph's similarity measure.
enum class Similarity { kCosine, kKl };

inline Similarity parse_similarity(std::string_view s) {
  if (s == "cosine") return Similarity::kCosine;
  if (s == "kl") return Similarity::kKl;
  TORCH_CHECK_VALUE(false, "similarity: expected 'cosine' or 'kl', got '", std::string(s), "'");
  return Similarity::kCosine;  // unreachable
}

// The KL prologue (see the top of the file): z [C, B] standardized rows, p [C, B] = softmax(z)
// per row, a [C] = sum_b p * z; all contiguous in the compute dtype. |z| <= sqrt(B - 1), so p and
// the products never overflow, and p > 0 unless it underflows (B of several thousand), which is
// harmless here (no log p is taken). B = 0: z, p [C, 0] and a = 0 (every pair has d = 0). Raises
// ValueError for NaN/inf in f.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_rows(const at::Tensor& f) {
  at::Tensor x = f.to(compute_type(f.scalar_type())).contiguous();
  const int64_t c = x.size(0);
  if (x.size(1) == 0) return {x, x, at::zeros({c}, x.options())};
  at::Tensor scale = x.abs().amax({1}, /*keepdim=*/true);
  TORCH_CHECK_VALUE(at::isfinite(scale).all().item<bool>(), "f: holds NaN or infinite values");
  at::Tensor constant = (x.amax({1}) == x.amin({1})).unsqueeze(1);
  x = x / at::where(scale > 0, scale, at::ones_like(scale));  // max |x| = 1: no overflow below
  x = x - x.mean({1}, /*keepdim=*/true);
  at::Tensor rms = x.square().mean({1}, /*keepdim=*/true).sqrt();
  at::Tensor z = (x / at::where(rms > 0, rms, at::ones_like(rms))).masked_fill(constant, 0.0);
  at::Tensor p = at::softmax(z, 1);
  at::Tensor a = (p * z).sum({1});
  return {z.contiguous(), p.contiguous(), a.contiguous()};
}

// Validated segment offsets on the host: [0, C] when segments is None.
inline std::vector<int64_t> segment_offsets(const std::optional<at::Tensor>& segments, int64_t c,
                                            const at::Tensor& f) {
  if (!segments.has_value()) return {0, c};
  const at::Tensor& s = *segments;
  TORCH_CHECK_TYPE(s.scalar_type() == at::kLong, "segments: expected dtype int64, got ",
                   s.scalar_type());
  TORCH_CHECK_VALUE(s.dim() == 1 && s.numel() >= 1,
                    "segments: expected a non-empty 1-D tensor of offsets [G+1], got shape ",
                    s.sizes());
  TORCH_CHECK_VALUE(s.device() == f.device(), "segments: on ", s.device(), " but f is on ",
                    f.device());
  at::Tensor h = s.to(at::kCPU).contiguous();
  const int64_t* p = h.data_ptr<int64_t>();
  std::vector<int64_t> offs(p, p + h.numel());
  TORCH_CHECK_VALUE(offs.front() == 0, "segments: must start at 0, got ", offs.front());
  for (size_t g = 1; g < offs.size(); ++g) {
    TORCH_CHECK_VALUE(offs[g] >= offs[g - 1], "segments: offsets must be non-decreasing (",
                      offs[g - 1], " then ", offs[g], ")");
  }
  TORCH_CHECK_VALUE(offs.back() == c, "segments: must end at C = ", c, " (rows of f), got ",
                    offs.back());
  return offs;
}

// Rows of the longest segment.
inline int64_t max_segment_length(const std::vector<int64_t>& offs) {
  int64_t max_len = 0;
  for (size_t g = 0; g + 1 < offs.size(); ++g) max_len = std::max(max_len, offs[g + 1] - offs[g]);
  return max_len;
}

// Neighbours kept per row: k, at most (rows of the longest segment - 1).
inline int64_t effective_k(int64_t k, int64_t max_len) {
  return std::min<int64_t>(k, std::max<int64_t>(max_len - 1, 0));
}

// Tile edge: GCNPRUNE_KNN_TILE when set (> 0), else the device default.
inline int64_t tile_size(int64_t fallback) {
  const char* env = std::getenv("GCNPRUNE_KNN_TILE");
  if (env != nullptr && *env != '\0') {
    long long v = std::atoll(env);
    if (v > 0) return static_cast<int64_t>(v);
  }
  return fallback;
}

}  // namespace knn_detail
}  // namespace gcnprune
