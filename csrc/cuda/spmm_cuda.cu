// CUDA kernels of the sparse GCN propagation family: gcn_norm, spmm, spmm_transpose, sddmm.
// Schemas: csrc/ops.cpp; semantics: gcnprune_fast/ops/reference/sparse.py.
//
// Layout: CSR graph = indptr int64 [R+1], indices int64 [nnz], values [nnz]; dense operands are
// row-major [rows, d] (made contiguous here). Accumulation in float32 for float16/bfloat16.
//
// - spmm: one warp per output row; the row's (column, value) pairs are loaded 32 at a time by the
//   lanes and broadcast with shuffles; each lane owns VEC consecutive columns of d (16-byte
//   vector loads when d and the pointers allow), looping over d in steps of 32 * VEC.
// - spmm_transpose (A^T G): one warp per row of A, atomicAdd of v * G[row] into out[col]
//   (float32 scratch buffer for half types).
// - sddmm: one warp per row of A; per entry a warp-wide dot product reduced with shuffles.
// - gcn_norm: one thread per row (count, cumsum, fill, scale).
//
// Structure validation: the Python wrappers check indptr/indices (one sync). Kernels called
// directly stay memory-safe without a sync: rows with an invalid extent and out-of-range column ids
// are skipped. gcn_norm synchronizes anyway (its output size is data-dependent) and raises.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/acc_type.h"
#include "common/spmm.h"

#include <cstdint>

namespace gcnprune {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

__device__ __forceinline__ bool bad_extent(int64_t e0, int64_t e1, int64_t nnz) {
  return e0 < 0 || e1 < e0 || e1 > nnz;
}

int64_t warp_blocks(int64_t warps) {
  return (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
}

// ---------------------------------------------------------------------------------------------
// spmm: out [R, d] = A [R, num_cols] @ x [num_cols, d].

template <typename scalar_t, int VEC>
__global__ void spmm_kernel(const int64_t* __restrict__ indptr, const int64_t* __restrict__ cols,
                            const scalar_t* __restrict__ vals, const scalar_t* __restrict__ x,
                            scalar_t* __restrict__ out, int64_t num_rows, int64_t d, int64_t nnz,
                            int64_t num_cols) {
  using acc_t = typename AccType<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= num_rows) return;  // uniform per warp
  int64_t e0 = indptr[row], e1 = indptr[row + 1];
  if (bad_extent(e0, e1, nnz)) e1 = e0 = 0;
  scalar_t* y = out + row * d;
  for (int64_t j0 = 0; j0 < d; j0 += kWarp * VEC) {
    const int64_t j = j0 + static_cast<int64_t>(lane) * VEC;
    const bool active = j < d;  // d % VEC == 0, so a lane's VEC columns are all in range
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = acc_t(0);
    for (int64_t eb = e0; eb < e1; eb += kWarp) {
      int64_t my_col = -1;
      acc_t my_val = acc_t(0);
      if (eb + lane < e1) {
        my_col = cols[eb + lane];
        my_val = static_cast<acc_t>(vals[eb + lane]);
      }
      const int n = static_cast<int>(e1 - eb < kWarp ? e1 - eb : kWarp);
      for (int t = 0; t < n; ++t) {
        const int64_t c = __shfl_sync(kFullMask, my_col, t);
        const acc_t v = __shfl_sync(kFullMask, my_val, t);
        if (!active || static_cast<uint64_t>(c) >= static_cast<uint64_t>(num_cols)) continue;
        const Pack<scalar_t, VEC> p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + c * d + j);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += v * static_cast<acc_t>(p.v[k]);
      }
    }
    if (active) {
      Pack<scalar_t, VEC> p;
#pragma unroll
      for (int k = 0; k < VEC; ++k) p.v[k] = static_cast<scalar_t>(acc[k]);
      *reinterpret_cast<Pack<scalar_t, VEC>*>(y + j) = p;
    }
  }
}

template <typename scalar_t>
void launch_spmm(const int64_t* indptr, const int64_t* cols, const scalar_t* vals,
                 const scalar_t* x, scalar_t* out, int64_t num_rows, int64_t d, int64_t nnz,
                 int64_t num_cols, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t);  // 16-byte loads: 4 floats, 2 doubles, 8 halves
  const bool aligned = d % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(warp_blocks(num_rows)));
  const dim3 block(kWarp * kWarpsPerBlock);
  if (aligned) {
    spmm_kernel<scalar_t, kVec><<<grid, block, 0, stream>>>(indptr, cols, vals, x, out, num_rows,
                                                            d, nnz, num_cols);
  } else {
    spmm_kernel<scalar_t, 1><<<grid, block, 0, stream>>>(indptr, cols, vals, x, out, num_rows, d,
                                                         nnz, num_cols);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// spmm_transpose: out [num_cols, d] += A^T g, g [R, d]; out_t is float/double (zeroed).

template <typename scalar_t, typename out_t>
__global__ void spmm_transpose_kernel(const int64_t* __restrict__ indptr,
                                      const int64_t* __restrict__ cols,
                                      const scalar_t* __restrict__ vals,
                                      const scalar_t* __restrict__ g, out_t* __restrict__ out,
                                      int64_t num_rows, int64_t d, int64_t nnz, int64_t num_cols) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= num_rows) return;
  const int64_t e0 = indptr[row], e1 = indptr[row + 1];
  if (bad_extent(e0, e1, nnz)) return;
  const scalar_t* gr = g + row * d;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t c = cols[e];
    if (static_cast<uint64_t>(c) >= static_cast<uint64_t>(num_cols)) continue;
    const out_t v = static_cast<out_t>(vals[e]);
    out_t* o = out + c * d;
    for (int64_t j = lane; j < d; j += kWarp) gpuAtomicAdd(o + j, v * static_cast<out_t>(gr[j]));
  }
}

// ---------------------------------------------------------------------------------------------
// sddmm: out[e] = <a[row(e)], b[cols[e]]>.

template <typename scalar_t>
__global__ void sddmm_kernel(const int64_t* __restrict__ indptr, const int64_t* __restrict__ cols,
                             const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                             scalar_t* __restrict__ out, int64_t num_rows, int64_t d, int64_t nnz,
                             int64_t num_cols) {
  using acc_t = typename AccType<scalar_t>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= num_rows) return;
  const int64_t e0 = indptr[row], e1 = indptr[row + 1];
  if (bad_extent(e0, e1, nnz)) return;
  const scalar_t* ar = a + row * d;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t c = cols[e];
    if (static_cast<uint64_t>(c) >= static_cast<uint64_t>(num_cols)) continue;
    const scalar_t* br = b + c * d;
    acc_t sum = acc_t(0);
    for (int64_t j = lane; j < d; j += kWarp) {
      sum += static_cast<acc_t>(ar[j]) * static_cast<acc_t>(br[j]);
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(kFullMask, sum, offset);
    }
    if (lane == 0) out[e] = static_cast<scalar_t>(sum);
  }
}

// ---------------------------------------------------------------------------------------------
// gcn_norm (one thread per row).

// diag_at[r]: first stored diagonal entry (or -1); insert_at[r]: where the new self loop goes
// (or -1); count[r]: the row's output length. *error: 1 bad extent, 2 column out of range.
__global__ void gcn_norm_plan_kernel(const int64_t* __restrict__ indptr,
                                     const int64_t* __restrict__ cols, int64_t n, int64_t nnz,
                                     bool add_self_loops, int64_t* __restrict__ diag_at,
                                     int64_t* __restrict__ insert_at, int64_t* __restrict__ count,
                                     int* __restrict__ error) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const int64_t e0 = indptr[r], e1 = indptr[r + 1];
  diag_at[r] = -1;
  insert_at[r] = -1;
  count[r] = 0;
  if (bad_extent(e0, e1, nnz)) {
    atomicMax(error, 1);
    return;
  }
  int64_t ins = e1;
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t c = cols[e];
    if (static_cast<uint64_t>(c) >= static_cast<uint64_t>(n)) {
      atomicMax(error, 2);
      return;
    }
    if (add_self_loops && diag_at[r] < 0) {
      if (c == r) diag_at[r] = e;
      else if (c > r && ins == e1) ins = e;
    }
  }
  if (add_self_loops && diag_at[r] < 0) insert_at[r] = ins;
  count[r] = (e1 - e0) + (insert_at[r] >= 0 ? 1 : 0);
}

template <typename scalar_t, typename acc_t>
__global__ void gcn_norm_fill_kernel(const int64_t* __restrict__ indptr,
                                     const int64_t* __restrict__ cols,
                                     const scalar_t* __restrict__ vals,
                                     const int64_t* __restrict__ diag_at,
                                     const int64_t* __restrict__ insert_at,
                                     const int64_t* __restrict__ out_indptr,
                                     int64_t* __restrict__ out_cols, acc_t* __restrict__ w,
                                     acc_t* __restrict__ scale, int64_t n) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const int64_t e1 = indptr[r + 1];
  int64_t o = out_indptr[r];
  acc_t deg = acc_t(0);
  for (int64_t e = indptr[r]; e <= e1; ++e) {
    if (e == insert_at[r]) {
      out_cols[o] = r;
      w[o] = acc_t(1);
      deg += acc_t(1);
      ++o;
    }
    if (e == e1) break;
    acc_t v = static_cast<acc_t>(vals[e]);
    if (e == diag_at[r]) v += acc_t(1);
    out_cols[o] = cols[e];
    w[o] = v;
    deg += v;
    ++o;
  }
  scale[r] = deg > acc_t(0) ? acc_t(1) / sqrt(deg) : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void gcn_norm_scale_kernel(const int64_t* __restrict__ out_indptr,
                                      const int64_t* __restrict__ out_cols,
                                      const acc_t* __restrict__ w, const acc_t* __restrict__ scale,
                                      scalar_t* __restrict__ out_vals, int64_t n) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const acc_t sr = scale[r];
  for (int64_t o = out_indptr[r]; o < out_indptr[r + 1]; ++o) {
    out_vals[o] = static_cast<scalar_t>(w[o] * sr * scale[out_cols[o]]);
  }
}

// ---------------------------------------------------------------------------------------------
// Operators.

at::Tensor spmm_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                     const at::Tensor& x) {
  constexpr const char* op = "gcnprune::spmm";
  spmm_detail::check_spmm(op, indptr, indices, values, x);
  TORCH_CHECK(indptr.is_cuda(), op, ": indptr and indices must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t num_rows = indptr.numel() - 1, nnz = indices.numel();
  const int64_t num_cols = x.size(0), d = x.size(1);
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto values_c = values.contiguous(), x_c = x.contiguous();
  auto out = at::empty({num_rows, d}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (num_rows == 0 || d == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gcnprune_spmm_cuda",
                                  [&] {
    launch_spmm<scalar_t>(indptr_c.data_ptr<int64_t>(), indices_c.data_ptr<int64_t>(),
                          values_c.data_ptr<scalar_t>(), x_c.data_ptr<scalar_t>(),
                          out.data_ptr<scalar_t>(), num_rows, d, nnz, num_cols, stream);
  });
  return out;
}

at::Tensor spmm_transpose_cuda(const at::Tensor& indptr, const at::Tensor& indices,
                               const at::Tensor& values, const at::Tensor& g, int64_t n_cols) {
  constexpr const char* op = "gcnprune::spmm_transpose";
  spmm_detail::check_spmm_transpose(op, indptr, indices, values, g, n_cols);
  TORCH_CHECK(indptr.is_cuda(), op, ": indptr and indices must be on a CUDA device");
  const int64_t num_rows = indptr.numel() - 1, nnz = indices.numel();
  const c10::cuda::CUDAGuard guard(g.device());
  const int64_t d = g.size(1);
  const bool half = g.scalar_type() == at::kHalf || g.scalar_type() == at::kBFloat16;
  auto acc = at::zeros({n_cols, d}, g.options().dtype(half ? at::kFloat : g.scalar_type()));
  if (d == 0 || nnz == 0 || num_rows == 0) return half ? acc.to(g.scalar_type()) : acc;
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto values_c = values.contiguous(), g_c = g.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(warp_blocks(num_rows)));
  const dim3 block(kWarp * kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "gcnprune_spmm_transpose_cuda", [&] {
    using out_t = typename AccType<scalar_t>::type;
    spmm_transpose_kernel<scalar_t, out_t><<<grid, block, 0, stream>>>(
        indptr_c.data_ptr<int64_t>(), indices_c.data_ptr<int64_t>(), values_c.data_ptr<scalar_t>(),
        g_c.data_ptr<scalar_t>(), acc.data_ptr<out_t>(), num_rows, d, nnz, n_cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return half ? acc.to(g.scalar_type()) : acc;
}

at::Tensor sddmm_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& a,
                      const at::Tensor& b) {
  constexpr const char* op = "gcnprune::sddmm";
  spmm_detail::check_sddmm(op, indptr, indices, a, b);
  TORCH_CHECK(indptr.is_cuda(), op, ": indptr and indices must be on a CUDA device");
  const int64_t num_rows = indptr.numel() - 1, nnz = indices.numel();
  const c10::cuda::CUDAGuard guard(a.device());
  auto out = at::zeros({nnz}, a.options());
  if (nnz == 0 || num_rows == 0) return out;
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto a_c = a.contiguous(), b_c = b.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(warp_blocks(num_rows)));
  const dim3 block(kWarp * kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gcnprune_sddmm_cuda",
                                  [&] {
    sddmm_kernel<scalar_t><<<grid, block, 0, stream>>>(
        indptr_c.data_ptr<int64_t>(), indices_c.data_ptr<int64_t>(), a_c.data_ptr<scalar_t>(),
        b_c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), num_rows, a.size(1), nnz, b.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gcn_norm_cuda(const at::Tensor& indptr,
                                                             const at::Tensor& indices,
                                                             const at::Tensor& values,
                                                             bool add_self_loops) {
  constexpr const char* op = "gcnprune::gcn_norm";
  spmm_detail::check_gcn_norm(op, indptr, indices, values);
  TORCH_CHECK(indptr.is_cuda(), op, ": indptr and indices must be on a CUDA device");
  const int64_t n = indptr.numel() - 1, nnz = indices.numel();
  const c10::cuda::CUDAGuard guard(indptr.device());
  auto indptr_c = indptr.contiguous(), indices_c = indices.contiguous();
  auto values_c = values.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  auto long_opts = indptr.options();
  auto diag_at = at::empty({n}, long_opts), insert_at = at::empty({n}, long_opts);
  auto count = at::empty({n}, long_opts);
  auto error = at::zeros({1}, indptr.options().dtype(at::kInt));
  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  if (n > 0) {
    gcn_norm_plan_kernel<<<grid, kThreads, 0, stream>>>(
        indptr_c.data_ptr<int64_t>(), indices_c.data_ptr<int64_t>(), n, nnz, add_self_loops,
        diag_at.data_ptr<int64_t>(), insert_at.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
        error.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto out_indptr = at::zeros({n + 1}, long_opts);
  if (n > 0) out_indptr.slice(0, 1).copy_(at::cumsum(count, 0));
  // One sync for the error flag, the output size and indptr's first and last entries.
  const auto host = at::cat({error.to(at::kLong), out_indptr.slice(0, n, n + 1),
                             indptr_c.slice(0, 0, 1), indptr_c.slice(0, n, n + 1)})
                        .cpu();
  const int64_t* h = host.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(h[2] == 0, op, ": indptr[0] must be 0, got ", h[2]);
  TORCH_CHECK_VALUE(h[3] == nnz, op, ": indptr[-1] must equal nnz = ", nnz, ", got ", h[3]);
  TORCH_CHECK_VALUE(h[0] != 1, op, ": indptr must be non-decreasing and within [0, nnz]");
  TORCH_CHECK_VALUE(h[0] != 2, op, ": indices must lie in [0, ", n, ")");
  const int64_t out_nnz = h[1];
  auto out_indices = at::empty({out_nnz}, indices.options());
  auto out_values = at::empty({out_nnz}, values.options());
  if (n == 0) return {out_indptr, out_indices, out_values};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(),
                                  "gcnprune_gcn_norm_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    auto acc_opts = values.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    auto w = at::empty({out_nnz}, acc_opts);
    auto scale = at::empty({n}, acc_opts);
    gcn_norm_fill_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        indptr_c.data_ptr<int64_t>(), indices_c.data_ptr<int64_t>(), values_c.data_ptr<scalar_t>(),
        diag_at.data_ptr<int64_t>(), insert_at.data_ptr<int64_t>(), out_indptr.data_ptr<int64_t>(),
        out_indices.data_ptr<int64_t>(), w.data_ptr<acc_t>(), scale.data_ptr<acc_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gcn_norm_scale_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        out_indptr.data_ptr<int64_t>(), out_indices.data_ptr<int64_t>(), w.data_ptr<acc_t>(),
        scale.data_ptr<acc_t>(), out_values.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_indptr, out_indices, out_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(gcnprune, CUDA, m) {
  m.impl("gcn_norm", &gcn_norm_cuda);
  m.impl("spmm", &spmm_cuda);
  m.impl("spmm_transpose", &spmm_transpose_cuda);
  m.impl("sddmm", &sddmm_cuda);
}

}  // namespace gcnprune
