// CPU kernels of the sparse GCN propagation family: gcn_norm, spmm and spmm's backward helpers
// spmm_transpose (A^T G) and sddmm (per-edge dot products). Schemas: csrc/ops.cpp.
//
// Layout: CSR graph = indptr int64 [R+1], indices int64 [nnz], values [nnz]; dense operands are
// row-major [rows, d] (made contiguous here). Accumulation is float32 for float16/bfloat16 and the
// input dtype for float32/float64.
//
// Parallelism: rows are split into one chunk per thread with about equal (entries + rows), so
// skewed degree distributions stay balanced. spmm_transpose builds the transposed structure with a
// parallel counting sort (O(nnz), no atomics; cached per graph, see TransposeCache) and reuses the
// row kernel, reading the values through the entry permutation.
//
// Vectorization: the inner loops run over fixed-size blocks of d (accumulators held in
// registers, 32-byte vectors of cpu/simd.h). The extension is compiled without -march flags, so
// the hot loops are compiled twice (default and an AVX2 clone, cpu/simd.h) and picked at run time;
// ATen's at::vec::Vectorized would be its non-AVX generic fallback in this build.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/spmm.h"
#include "cpu/simd.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

namespace gcnprune {
namespace {

using cpu::cpu_has_avx2;
using cpu::Simd;

// ---------------------------------------------------------------------------------------------
// Data checks done while reading the CSR arrays (argument checks: common/spmm.h).

// indptr[0] == 0 and indptr[R] == nnz; per-row monotonicity and column ranges are verified by the
// kernels as they go (rows that fail are skipped and reported after the parallel loop).
void check_indptr_ends(const char* op, const int64_t* indptr, int64_t num_rows, int64_t nnz) {
  TORCH_CHECK_VALUE(indptr[0] == 0, op, ": indptr[0] must be 0, got ", indptr[0]);
  TORCH_CHECK_VALUE(indptr[num_rows] == nnz, op, ": indptr[-1] must equal nnz = ", nnz, ", got ",
                    indptr[num_rows]);
}

struct RowErrors {
  std::atomic<bool> bad_indptr{false};
  std::atomic<bool> bad_index{false};

  void raise(const char* op, int64_t num_cols) const {
    TORCH_CHECK_VALUE(!bad_indptr.load(), op, ": indptr must be non-decreasing and within [0, nnz]");
    TORCH_CHECK_VALUE(!bad_index.load(), op, ": indices must lie in [0, ", num_cols, ")");
  }
};

// Validates row r's extent and column ids; false (and a recorded error) when the row is invalid.
inline bool row_ok(const int64_t* indptr, const int64_t* indices, int64_t r, int64_t nnz,
                   int64_t num_cols, RowErrors& err) {
  const int64_t e0 = indptr[r], e1 = indptr[r + 1];
  if (e0 < 0 || e1 < e0 || e1 > nnz) {
    err.bad_indptr.store(true, std::memory_order_relaxed);
    return false;
  }
  for (int64_t e = e0; e < e1; ++e) {
    if (static_cast<uint64_t>(indices[e]) >= static_cast<uint64_t>(num_cols)) {
      err.bad_index.store(true, std::memory_order_relaxed);
      return false;
    }
  }
  return true;
}

// Runs fn(row_begin, row_end) over contiguous row chunks, one per thread, each with about the same
// number of (entries + rows) * cost_per_entry; small problems run inline.
template <typename F>
void parallel_rows(const int64_t* indptr, int64_t num_rows, int64_t nnz, int64_t cost_per_entry,
                   const F& fn) {
  if (num_rows <= 0) return;
  const int64_t work = (nnz + num_rows) * std::max<int64_t>(cost_per_entry, 1);
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>({threads, num_rows, std::max<int64_t>(work / 32768, 1)});
  if (chunks <= 1) {
    fn(int64_t{0}, num_rows);
    return;
  }
  // Chunk boundaries: first row r with indptr[r] + r >= c * total / chunks (monotone in r for a
  // valid indptr; forced monotone otherwise so chunks never overlap).
  std::vector<int64_t> bound(chunks + 1);
  bound[0] = 0;
  bound[chunks] = num_rows;
  const int64_t total = nnz + num_rows;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    int64_t lo = 0, hi = num_rows;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (indptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bound[c] = std::min(std::max(lo, bound[c - 1]), num_rows);
  }
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      if (bound[c] < bound[c + 1]) fn(bound[c], bound[c + 1]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Unaligned loads and stores of Simd<acc_t>::kSize elements as one vector of the accumulation
// type (element-wise conversion for float16/bfloat16).

template <typename acc_t>
using Vec = typename Simd<acc_t>::U;

template <typename acc_t>
constexpr int kLanes = static_cast<int>(Simd<acc_t>::kSize);

template <typename acc_t, typename scalar_t>
GCNPRUNE_ALWAYS_INLINE Vec<acc_t> load_vec(const scalar_t* p) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return *reinterpret_cast<const Vec<acc_t>*>(p);
  } else {
    Vec<acc_t> v;
    for (int i = 0; i < kLanes<acc_t>; ++i) v[i] = static_cast<acc_t>(p[i]);
    return v;
  }
}

template <typename acc_t, typename scalar_t>
GCNPRUNE_ALWAYS_INLINE void store_vec(scalar_t* p, Vec<acc_t> v) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    *reinterpret_cast<Vec<acc_t>*>(p) = v;
  } else {
    for (int i = 0; i < kLanes<acc_t>; ++i) p[i] = static_cast<scalar_t>(v[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Row kernels: y[r] = sum_e vals[e] * x[cols[e]], over blocks of NV vectors of d whose
// accumulators stay in registers for the whole row.

constexpr int64_t kPrefetchDistance = 8;

template <int NV, typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE void spmm_block(const int64_t* cols, const scalar_t* vals,
                                   const int64_t* perm, int64_t e0,
                                   int64_t e1, int64_t e_limit, const scalar_t* x, int64_t d,
                                   int64_t j0, scalar_t* y) {
  using V = Vec<acc_t>;
  constexpr int L = kLanes<acc_t>;
  V acc[NV];
#pragma GCC unroll 16
  for (int k = 0; k < NV; ++k) acc[k] = V{};
  constexpr int kLineElems = 64 / sizeof(scalar_t);
  constexpr int kBlockElems = NV * L;
  for (int64_t e = e0; e < e1; ++e) {
    // The gathered rows of x are random and usually miss the cache: prefetch a few entries
    // ahead (possibly into the next row, whose same block follows when j0 == 0).
    if (e + kPrefetchDistance < e_limit) {
      const scalar_t* pf = x + cols[e + kPrefetchDistance] * d + j0;
#pragma GCC unroll 16
      for (int k = 0; k < kBlockElems; k += kLineElems) __builtin_prefetch(pf + k);
    }
    const acc_t v = static_cast<acc_t>(vals[perm != nullptr ? perm[e] : e]);
    const scalar_t* xr = x + cols[e] * d + j0;
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) acc[k] += v * load_vec<acc_t>(xr + k * L);
  }
#pragma GCC unroll 16
  for (int k = 0; k < NV; ++k) store_vec<acc_t>(y + j0 + k * L, acc[k]);
}

// One column j of d (the < L leftover columns).
template <typename scalar_t, typename acc_t>
GCNPRUNE_ALWAYS_INLINE void spmm_column(const int64_t* cols, const scalar_t* vals,
                                    const int64_t* perm, int64_t e0,
                                    int64_t e1, const scalar_t* x, int64_t d, int64_t j,
                                    scalar_t* y) {
  acc_t acc = 0;
  for (int64_t e = e0; e < e1; ++e) {
    acc += static_cast<acc_t>(vals[perm != nullptr ? perm[e] : e]) *
           static_cast<acc_t>(x[cols[e] * d + j]);
  }
  y[j] = static_cast<scalar_t>(acc);
}

template <typename scalar_t>
GCNPRUNE_ALWAYS_INLINE void spmm_rows_impl(const int64_t* indptr, const int64_t* cols,
                                       const scalar_t* vals, const int64_t* perm,
                                       const scalar_t* x, scalar_t* out,
                                       int64_t r0, int64_t r1, int64_t d, int64_t nnz,
                                       int64_t num_cols, RowErrors* err) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int L = kLanes<acc_t>;
  for (int64_t r = r0; r < r1; ++r) {
    scalar_t* y = out + r * d;
    if (err != nullptr && !row_ok(indptr, cols, r, nnz, num_cols, *err)) {
      std::fill(y, y + d, scalar_t(0));
      continue;
    }
    const int64_t e0 = indptr[r], e1 = indptr[r + 1];
    int64_t j = 0;
    // 8 vectors (64 floats / 32 doubles) per pass, then 4, 2, 1, then single columns.
    for (; j + 8 * L <= d; j += 8 * L) {
      spmm_block<8, scalar_t, acc_t>(cols, vals, perm, e0, e1, nnz, x, d, j, y);
    }
    if (j + 4 * L <= d) {
      spmm_block<4, scalar_t, acc_t>(cols, vals, perm, e0, e1, nnz, x, d, j, y);
      j += 4 * L;
    }
    if (j + 2 * L <= d) {
      spmm_block<2, scalar_t, acc_t>(cols, vals, perm, e0, e1, nnz, x, d, j, y);
      j += 2 * L;
    }
    if (j + L <= d) {
      spmm_block<1, scalar_t, acc_t>(cols, vals, perm, e0, e1, nnz, x, d, j, y);
      j += L;
    }
    for (; j < d; ++j) spmm_column<scalar_t, acc_t>(cols, vals, perm, e0, e1, x, d, j, y);
  }
}

template <typename scalar_t>
void spmm_rows_default(const int64_t* indptr, const int64_t* cols, const scalar_t* vals,
                       const int64_t* perm,
                       const scalar_t* x, scalar_t* out, int64_t r0, int64_t r1, int64_t d,
                       int64_t nnz, int64_t num_cols, RowErrors* err) {
  spmm_rows_impl(indptr, cols, vals, perm, x, out, r0, r1, d, nnz, num_cols, err);
}

template <typename scalar_t>
GCNPRUNE_TARGET_AVX2 void spmm_rows_avx2(const int64_t* indptr, const int64_t* cols,
                                     const scalar_t* vals, const int64_t* perm,
                                     const scalar_t* x, scalar_t* out,
                                     int64_t r0, int64_t r1, int64_t d, int64_t nnz,
                                     int64_t num_cols, RowErrors* err) {
  spmm_rows_impl(indptr, cols, vals, perm, x, out, r0, r1, d, nnz, num_cols, err);
}

// out [R, d] = CSR(indptr, cols, vals) [R, num_cols] @ x [num_cols, d]; all contiguous.
// err == nullptr skips per-row validation (used for internally built, known-valid CSR).
template <typename scalar_t>
void spmm_kernel(const int64_t* indptr, const int64_t* cols, const scalar_t* vals,
                 const int64_t* perm,
                 const scalar_t* x, scalar_t* out, int64_t num_rows, int64_t d, int64_t nnz,
                 int64_t num_cols, RowErrors* err) {
  const bool avx2 = cpu_has_avx2();
  parallel_rows(indptr, num_rows, nnz, d, [&](int64_t r0, int64_t r1) {
    if (avx2) {
      spmm_rows_avx2(indptr, cols, vals, perm, x, out, r0, r1, d, nnz, num_cols, err);
    } else {
      spmm_rows_default(indptr, cols, vals, perm, x, out, r0, r1, d, nnz, num_cols, err);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// sddmm row kernel: out[e] = <a[r], b[cols[e]]> for the entries e of rows [r0, r1).

template <typename scalar_t>
GCNPRUNE_ALWAYS_INLINE void sddmm_rows_impl(const int64_t* indptr, const int64_t* cols,
                                        const scalar_t* a, const scalar_t* b, scalar_t* out,
                                        int64_t r0, int64_t r1, int64_t d, int64_t nnz,
                                        int64_t num_cols, RowErrors* err) {
  using acc_t = typename AccType<scalar_t>::type;
  using V = Vec<acc_t>;
  constexpr int L = kLanes<acc_t>;
  for (int64_t r = r0; r < r1; ++r) {
    if (!row_ok(indptr, cols, r, nnz, num_cols, *err)) continue;
    const scalar_t* ar = a + r * d;
    for (int64_t e = indptr[r]; e < indptr[r + 1]; ++e) {
      if (e + kPrefetchDistance < nnz) {
        const scalar_t* pf = b + cols[e + kPrefetchDistance] * d;
        for (int64_t k = 0; k < d; k += 64 / static_cast<int64_t>(sizeof(scalar_t))) {
          __builtin_prefetch(pf + k);
        }
      }
      const scalar_t* br = b + cols[e] * d;
      V part0 = V{}, part1 = V{};
      int64_t j = 0;
      for (; j + 2 * L <= d; j += 2 * L) {
        part0 += load_vec<acc_t>(ar + j) * load_vec<acc_t>(br + j);
        part1 += load_vec<acc_t>(ar + j + L) * load_vec<acc_t>(br + j + L);
      }
      if (j + L <= d) {
        part0 += load_vec<acc_t>(ar + j) * load_vec<acc_t>(br + j);
        j += L;
      }
      part0 += part1;
      acc_t sum = 0;
      for (int k = 0; k < L; ++k) sum += part0[k];
      for (; j < d; ++j) sum += static_cast<acc_t>(ar[j]) * static_cast<acc_t>(br[j]);
      out[e] = static_cast<scalar_t>(sum);
    }
  }
}

template <typename scalar_t>
void sddmm_rows_default(const int64_t* indptr, const int64_t* cols, const scalar_t* a,
                        const scalar_t* b, scalar_t* out, int64_t r0, int64_t r1, int64_t d,
                        int64_t nnz, int64_t num_cols, RowErrors* err) {
  sddmm_rows_impl(indptr, cols, a, b, out, r0, r1, d, nnz, num_cols, err);
}

template <typename scalar_t>
GCNPRUNE_TARGET_AVX2 void sddmm_rows_avx2(const int64_t* indptr, const int64_t* cols,
                                      const scalar_t* a, const scalar_t* b, scalar_t* out,
                                      int64_t r0, int64_t r1, int64_t d, int64_t nnz,
                                      int64_t num_cols, RowErrors* err) {
  sddmm_rows_impl(indptr, cols, a, b, out, r0, r1, d, nnz, num_cols, err);
}

// ---------------------------------------------------------------------------------------------
// Operators.

at::Tensor spmm_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                    const at::Tensor& x) {
  constexpr const char* op = "gcnprune::spmm";
  spmm_detail::check_spmm(op, indptr, indices, values, x);
  const int64_t num_rows = indptr.numel() - 1, nnz = indices.numel();
  const int64_t num_cols = x.size(0), d = x.size(1);
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto values_c = values.contiguous(), x_c = x.contiguous();
  check_indptr_ends(op, indptr_c.data_ptr<int64_t>(), num_rows, nnz);
  auto out = at::empty({num_rows, d}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (num_rows == 0 || d == 0) return out;
  RowErrors err;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gcnprune_spmm", [&] {
    spmm_kernel<scalar_t>(indptr_c.data_ptr<int64_t>(), indices_c.data_ptr<int64_t>(),
                          values_c.data_ptr<scalar_t>(), nullptr, x_c.data_ptr<scalar_t>(),
                          out.data_ptr<scalar_t>(), num_rows, d, nnz, num_cols, &err);
  });
  err.raise(op, num_cols);
  return out;
}

// Transposed structure of a CSR [R, num_cols]: CSR [num_cols, R] whose entries keep row order
// within each column (so indices stay sorted). Parallel counting sort, one histogram per chunk.
struct TransposedCSR {
  at::Tensor indptr, indices, perm;  // perm[t] = entry id in the original CSR
};

TransposedCSR transpose_structure(const int64_t* indptr, const int64_t* cols, int64_t num_rows,
                                  int64_t nnz, int64_t num_cols, const at::TensorOptions& opts,
                                  RowErrors& err) {
  TransposedCSR t;
  t.indptr = at::empty({num_cols + 1}, opts);
  t.indices = at::empty({nnz}, opts);
  t.perm = at::empty({nnz}, opts);
  int64_t* tptr = t.indptr.data_ptr<int64_t>();
  int64_t* trow = t.indices.data_ptr<int64_t>();
  int64_t* tperm = t.perm.data_ptr<int64_t>();
  // Chunks by entries; per-chunk histograms cost chunks * num_cols, so use fewer chunks when the
  // column count dwarfs nnz.
  int64_t chunks = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(nnz / 65536, 1));
  while (chunks > 1 && chunks * num_cols > 4 * nnz) --chunks;
  chunks = std::min<int64_t>(chunks, std::max<int64_t>(num_rows, 1));
  std::vector<int64_t> bound(chunks + 1);
  bound[0] = 0;
  bound[chunks] = num_rows;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = nnz * c / chunks;
    bound[c] = std::max(std::upper_bound(indptr, indptr + num_rows + 1, target) - indptr - 1,
                        bound[c - 1]);
    bound[c] = std::min(bound[c], num_rows);
  }
  std::vector<int64_t> pos(static_cast<size_t>(chunks) * num_cols, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* count = pos.data() + c * num_cols;
      for (int64_t r = bound[c]; r < bound[c + 1]; ++r) {
        if (!row_ok(indptr, cols, r, nnz, num_cols, err)) continue;
        for (int64_t e = indptr[r]; e < indptr[r + 1]; ++e) ++count[cols[e]];
      }
    }
  });
  err.raise("gcnprune::spmm_transpose", num_cols);
  // Exclusive scan, column-major over (column, chunk): chunk c's entries of column k follow
  // chunk c-1's, which keeps row order.
  int64_t running = 0;
  for (int64_t k = 0; k < num_cols; ++k) {
    tptr[k] = running;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n = pos[c * num_cols + k];
      pos[c * num_cols + k] = running;
      running += n;
    }
  }
  tptr[num_cols] = running;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* next = pos.data() + c * num_cols;
      for (int64_t r = bound[c]; r < bound[c + 1]; ++r) {
        for (int64_t e = indptr[r]; e < indptr[r + 1]; ++e) {
          const int64_t p = next[cols[e]]++;
          trow[p] = r;
          tperm[p] = e;
        }
      }
    }
  });
  return t;
}

// The transposed structure depends on (indptr, indices, n_cols) only, and a GCN propagates over
// the same graph at every training step: keep the last few, keyed weakly on the index tensors.
// An entry is reused only while both tensors are alive (the weak references also keep their
// TensorImpl addresses from being recycled), unmodified (same version counters: any in-place
// change bumps them) and at the same data pointers and sizes.
class TransposeCache {
 public:
  static TransposeCache& instance() {
    static TransposeCache cache;
    return cache;
  }

  TransposedCSR get(const at::Tensor& indptr, const at::Tensor& indices, const int64_t* ip,
                    const int64_t* cols, int64_t num_rows, int64_t nnz, int64_t num_cols) {
    const bool cacheable = !indptr.is_inference() && !indices.is_inference();
    if (cacheable) {
      std::lock_guard<std::mutex> lock(mutex_);
      std::erase_if(entries_, [](const Entry& e) {
        return e.indptr_ref.expired() || e.indices_ref.expired();
      });
      for (const Entry& e : entries_) {
        if (e.matches(indptr, indices, num_cols)) return e.t;
      }
    }
    RowErrors err;
    TransposedCSR t = transpose_structure(ip, cols, num_rows, nnz, num_cols, indptr.options(), err);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (entries_.size() >= kCapacity) entries_.erase(entries_.begin());
      entries_.push_back(Entry{WeakImpl(indptr.getIntrusivePtr()),
                               WeakImpl(indices.getIntrusivePtr()),
                               indptr.const_data_ptr(), indices.const_data_ptr(),
                               indptr._version(), indices._version(), indptr.numel(),
                               indices.numel(), num_cols, t});
    }
    return t;
  }

 private:
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  static constexpr size_t kCapacity = 4;

  struct Entry {
    WeakImpl indptr_ref, indices_ref;
    const void* indptr_data;
    const void* indices_data;
    int64_t indptr_version, indices_version;
    int64_t indptr_numel, indices_numel, num_cols;
    TransposedCSR t;

    bool matches(const at::Tensor& indptr, const at::Tensor& indices, int64_t cols) const {
      return indptr_ref._unsafe_get_target() == indptr.unsafeGetTensorImpl() &&
             indices_ref._unsafe_get_target() == indices.unsafeGetTensorImpl() &&
             indptr_data == indptr.const_data_ptr() && indices_data == indices.const_data_ptr() &&
             indptr_version == indptr._version() && indices_version == indices._version() &&
             indptr_numel == indptr.numel() && indices_numel == indices.numel() &&
             num_cols == cols;
    }
  };

  std::mutex mutex_;
  std::vector<Entry> entries_;
};

TransposedCSR cached_transpose(const at::Tensor& indptr, const at::Tensor& indices,
                               const int64_t* ip, const int64_t* cols, int64_t num_rows,
                               int64_t nnz, int64_t num_cols) {
  return TransposeCache::instance().get(indptr, indices, ip, cols, num_rows, nnz, num_cols);
}

at::Tensor spmm_transpose_cpu(const at::Tensor& indptr, const at::Tensor& indices,
                              const at::Tensor& values, const at::Tensor& g, int64_t n_cols) {
  constexpr const char* op = "gcnprune::spmm_transpose";
  spmm_detail::check_spmm_transpose(op, indptr, indices, values, g, n_cols);
  const int64_t num_rows = indptr.numel() - 1, nnz = indices.numel();
  const int64_t d = g.size(1);
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto values_c = values.contiguous(), g_c = g.contiguous();
  const int64_t* ip = indptr_c.data_ptr<int64_t>();
  check_indptr_ends(op, ip, num_rows, nnz);
  if (d == 0 || nnz == 0) return at::zeros({n_cols, d}, g.options());
  const TransposedCSR t = cached_transpose(indptr, indices, ip, indices_c.data_ptr<int64_t>(),
                                           num_rows, nnz, n_cols);
  auto out = at::empty({n_cols, d}, g.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "gcnprune_spmm_transpose", [&] {
    spmm_kernel<scalar_t>(t.indptr.data_ptr<int64_t>(), t.indices.data_ptr<int64_t>(),
                          values_c.data_ptr<scalar_t>(), t.perm.data_ptr<int64_t>(),
                          g_c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n_cols, d, nnz,
                          num_rows, nullptr);
  });
  return out;
}

at::Tensor sddmm_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& a,
                     const at::Tensor& b) {
  constexpr const char* op = "gcnprune::sddmm";
  spmm_detail::check_sddmm(op, indptr, indices, a, b);
  const int64_t num_rows = indptr.numel() - 1, nnz = indices.numel();
  const int64_t num_cols = b.size(0), d = a.size(1);
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto a_c = a.contiguous(), b_c = b.contiguous();
  const int64_t* ip = indptr_c.data_ptr<int64_t>();
  check_indptr_ends(op, ip, num_rows, nnz);
  auto out = at::zeros({nnz}, a.options());
  if (nnz == 0) return out;
  RowErrors err;
  const bool avx2 = cpu_has_avx2();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gcnprune_sddmm", [&] {
    const int64_t* cols = indices_c.data_ptr<int64_t>();
    const scalar_t* ap = a_c.data_ptr<scalar_t>();
    const scalar_t* bp = b_c.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    parallel_rows(ip, num_rows, nnz, d, [&](int64_t r0, int64_t r1) {
      if (avx2) {
        sddmm_rows_avx2(ip, cols, ap, bp, op_, r0, r1, d, nnz, num_cols, &err);
      } else {
        sddmm_rows_default(ip, cols, ap, bp, op_, r0, r1, d, nnz, num_cols, &err);
      }
    });
  });
  err.raise(op, num_cols);
  return out;
}

// D^-1/2 (A + I) D^-1/2: see gcnprune_fast/ops/reference/sparse.py for the exact semantics
// (where self loops go, existing diagonal entries, zero degrees).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gcn_norm_cpu(const at::Tensor& indptr,
                                                            const at::Tensor& indices,
                                                            const at::Tensor& values,
                                                            bool add_self_loops) {
  constexpr const char* op = "gcnprune::gcn_norm";
  spmm_detail::check_gcn_norm(op, indptr, indices, values);
  const int64_t n = indptr.numel() - 1, nnz = indices.numel();
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto values_c = values.contiguous();
  const int64_t* ip = indptr_c.data_ptr<int64_t>();
  const int64_t* cols = indices_c.data_ptr<int64_t>();
  check_indptr_ends(op, ip, n, nnz);
  RowErrors err;

  // Pass 1: where each row's self loop goes: -1 = an existing diagonal entry gets +1 (position
  // stored in diag_at), otherwise the insertion position (first entry with column > row).
  std::vector<int64_t> diag_at(n), insert_at(n);
  auto out_indptr = at::empty({n + 1}, indptr.options());
  int64_t* optr = out_indptr.data_ptr<int64_t>();
  parallel_rows(ip, n, nnz, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      diag_at[r] = -1;
      insert_at[r] = -1;
      if (!row_ok(ip, cols, r, nnz, n, err)) continue;
      if (!add_self_loops) continue;
      int64_t ins = ip[r + 1];
      for (int64_t e = ip[r]; e < ip[r + 1]; ++e) {
        if (cols[e] == r) {
          diag_at[r] = e;
          break;
        }
        if (cols[e] > r && ins == ip[r + 1]) ins = e;
      }
      if (diag_at[r] < 0) insert_at[r] = ins;
    }
  });
  err.raise(op, n);
  optr[0] = 0;
  for (int64_t r = 0; r < n; ++r) optr[r + 1] = optr[r] + (ip[r + 1] - ip[r]) + (insert_at[r] >= 0);
  const int64_t out_nnz = optr[n];
  auto out_indices = at::empty({out_nnz}, indices.options());
  auto out_values = at::empty({out_nnz}, values.options());
  int64_t* ocols = out_indices.data_ptr<int64_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "gcnprune_gcn_norm", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* vals = values_c.data_ptr<scalar_t>();
    scalar_t* ovals = out_values.data_ptr<scalar_t>();
    std::vector<acc_t> w(out_nnz);  // self-looped weights in the accumulation dtype
    std::vector<acc_t> scale(n);
    // Pass 2: copy rows with the self loop merged in; degree = row sum; scale = deg^-1/2 or 0.
    parallel_rows(ip, n, nnz, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t o = optr[r];
        acc_t deg = 0;
        for (int64_t e = ip[r]; e <= ip[r + 1]; ++e) {
          if (e == insert_at[r]) {
            ocols[o] = r;
            w[o] = acc_t(1);
            deg += acc_t(1);
            ++o;
          }
          if (e == ip[r + 1]) break;
          acc_t v = static_cast<acc_t>(vals[e]);
          if (e == diag_at[r]) v += acc_t(1);
          ocols[o] = cols[e];
          w[o] = v;
          deg += v;
          ++o;
        }
        scale[r] = deg > acc_t(0) ? acc_t(1) / std::sqrt(deg) : acc_t(0);
      }
    });
    // Pass 3: w * scale[row] * scale[col].
    parallel_rows(optr, n, out_nnz, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t o = optr[r]; o < optr[r + 1]; ++o) {
          ovals[o] = static_cast<scalar_t>(w[o] * scale[r] * scale[ocols[o]]);
        }
      }
    });
  });
  return {out_indptr, out_indices, out_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(gcnprune, CPU, m) {
  m.impl("gcn_norm", &gcn_norm_cpu);
  m.impl("spmm", &spmm_cpu);
  m.impl("spmm_transpose", &spmm_transpose_cpu);
  m.impl("sddmm", &sddmm_cpu);
}

}  // namespace gcnprune
