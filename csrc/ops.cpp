// Schema of every gcnprune operator, declared once. Kernels are registered per device in
// csrc/cpu/*_cpu.cpp (CPU) and csrc/cuda/*_cuda.cu (CUDA), with the checks both share in
// csrc/common/; fake (meta) kernels and autograd formulas are registered from Python, next to each
// op's wrapper (gcnprune_fast/ops/{gap,graph,sparse}.py). Adding an op: csrc/README.md.
//
// Layout conventions shared by all kernels:
//   - a graph is CSR: indptr int64 [R+1], indices int64 [nnz] (sorted within each row),
//     values float [nnz]; a block-diagonal batch of G graphs is described by int64 segment
//     offsets [G+1] into the node range.
//   - accumulation is float32 (or float64 for float64 inputs).
#include <torch/library.h>

TORCH_LIBRARY(gcnprune, m) {
  // One pass over x ([N, C, H, W] contiguous or channels_last, [N, C, L] or [N, C]):
  // per-sample GAP [N, C] and per-channel mean/var(population)/abs_mean/zero_frac/max [C].
  m.def("gap_stats(Tensor x) -> (Tensor gap, Tensor mean, Tensor var, Tensor abs_mean, "
        "Tensor zero_frac, Tensor max)");
  // Cosine similarity of the rows of f [C, B] -> [C, C] (rows optionally centered first).
  m.def("cosine_similarity(Tensor f, bool center=False) -> Tensor");
  // Symmetric-KL similarity of the rows of f [C, B] -> [C, C] in (0, 1]: each row is standardized
  // (z-score; a constant row gives z = 0), p = softmax(z) over the B samples, and
  // sim(i, j) = exp(-(KL(p_i||p_j) + KL(p_j||p_i)) / 2); exactly 1 on the diagonal.
  m.def("kl_similarity(Tensor f) -> Tensor");
  // k most similar rows of every row of f [C, B] within its segment (similarity "cosine" or
  // "kl", as the two ops above; center only affects the cosine), symmetrized, weights
  // max(sim, 0), as CSR (indptr [C+1], indices [nnz], values [nnz]).
  m.def("knn_graph(Tensor f, int k, Tensor? segments=None, bool center=False, "
        "str similarity=\"cosine\") -> (Tensor indptr, Tensor indices, Tensor values)");
  // Symmetric GCN normalization D^-1/2 (A + I) D^-1/2 of a square CSR graph.
  m.def("gcn_norm(Tensor indptr, Tensor indices, Tensor values, bool add_self_loops=True) -> "
        "(Tensor indptr, Tensor indices, Tensor values)");
  // Y = A X for CSR A [R, Ncol] and dense X [Ncol, d] -> [R, d].
  m.def("spmm(Tensor indptr, Tensor indices, Tensor values, Tensor x) -> Tensor");
  // Backward helpers of spmm. grad_x = A^T G ([n_cols, d]); grad_values[e] = <G[row(e)], X[col(e)]>.
  m.def("spmm_transpose(Tensor indptr, Tensor indices, Tensor values, Tensor g, int n_cols) -> Tensor");
  m.def("sddmm(Tensor indptr, Tensor indices, Tensor a, Tensor b) -> Tensor");
}
