// Argument checks shared by the CPU and CUDA kernels of gcn_norm / spmm / spmm_transpose / sddmm
// (csrc/cpu/spmm_cpu.cpp, csrc/cuda/spmm_cuda.cu). Header-only host code, valid for any device.
// The Python wrappers check more thoroughly and with friendlier messages; these keep direct
// torch.ops / C++ callers memory-safe.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace gcnprune {
namespace spmm_detail {

inline void check_csr(const char* op, const at::Tensor& indptr, const at::Tensor& indices) {
  TORCH_CHECK_TYPE(indptr.scalar_type() == at::kLong, op, ": indptr must be int64, got ",
                   indptr.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() >= 1, op,
                    ": indptr must be 1-D with at least one element, got shape ", indptr.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1, op, ": indices must be 1-D, got shape ", indices.sizes());
  TORCH_CHECK(indptr.device() == indices.device(), op,
              ": indptr and indices must be on the same device");
}

// A floating dense operand on the graph's device.
inline void check_dense(const char* op, const char* name, const at::Tensor& t,
                        const at::Tensor& indptr) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be a floating tensor (float16/bfloat16/float32/float64), got ",
                   t.scalar_type());
  TORCH_CHECK(t.device() == indptr.device(), op, ": ", name, " must be on ", indptr.device(),
              ", got ", t.device());
}

inline void check_values(const char* op, const at::Tensor& values, int64_t nnz) {
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == nnz, op,
                    ": values must be 1-D with nnz = ", nnz, " entries, got shape ", values.sizes());
}

inline void check_same_dtype(const char* op, const char* a_name, const at::Tensor& a,
                             const char* b_name, const at::Tensor& b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", a_name, " and ", b_name,
                   " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// spmm(indptr, indices, values, x): Y = A X.
inline void check_spmm(const char* op, const at::Tensor& indptr, const at::Tensor& indices,
                       const at::Tensor& values, const at::Tensor& x) {
  check_csr(op, indptr, indices);
  check_dense(op, "values", values, indptr);
  check_dense(op, "x", x, indptr);
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [num_cols, d], got shape ", x.sizes());
  check_values(op, values, indices.numel());
  check_same_dtype(op, "values", values, "x", x);
}

// spmm_transpose(indptr, indices, values, g, n_cols): Z = A^T G.
inline void check_spmm_transpose(const char* op, const at::Tensor& indptr,
                                 const at::Tensor& indices, const at::Tensor& values,
                                 const at::Tensor& g, int64_t n_cols) {
  check_csr(op, indptr, indices);
  check_dense(op, "values", values, indptr);
  check_dense(op, "g", g, indptr);
  const int64_t num_rows = indptr.numel() - 1;
  TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == num_rows, op, ": g must be 2-D [R, d] with R = ",
                    num_rows, ", got shape ", g.sizes());
  check_values(op, values, indices.numel());
  check_same_dtype(op, "values", values, "g", g);
  TORCH_CHECK_VALUE(n_cols >= 0, op, ": n_cols must be >= 0, got ", n_cols);
}

// sddmm(indptr, indices, a, b): s[e] = <a[row(e)], b[col(e)]>.
inline void check_sddmm(const char* op, const at::Tensor& indptr, const at::Tensor& indices,
                        const at::Tensor& a, const at::Tensor& b) {
  check_csr(op, indptr, indices);
  check_dense(op, "a", a, indptr);
  check_dense(op, "b", b, indptr);
  const int64_t num_rows = indptr.numel() - 1;
  TORCH_CHECK_VALUE(a.dim() == 2 && a.size(0) == num_rows, op,
                    ": a must be 2-D [R, d] with R = ", num_rows, ", got shape ", a.sizes());
  TORCH_CHECK_VALUE(b.dim() == 2 && b.size(1) == a.size(1), op,
                    ": b must be 2-D [num_cols, d] with d = ", a.size(1), ", got shape ",
                    b.sizes());
  check_same_dtype(op, "a", a, "b", b);
}

// gcn_norm(indptr, indices, values, add_self_loops).
inline void check_gcn_norm(const char* op, const at::Tensor& indptr, const at::Tensor& indices,
                           const at::Tensor& values) {
  check_csr(op, indptr, indices);
  check_dense(op, "values", values, indptr);
  check_values(op, values, indices.numel());
}

}  // namespace spmm_detail
}  // namespace gcnprune
