"""Native kernels of gcnprune_fast, with a plain-PyTorch reference path.

Public ops (each dispatches to ``torch.ops.gcnprune.*`` when the compiled library is loaded, else
to :mod:`gcnprune_fast.ops.reference`):

- :func:`gap_stats` / :class:`GapAccumulator`: batched global-average-pool statistics
- :func:`cosine_similarity`, :func:`kl_similarity`, :func:`knn_graph`: channel similarity graphs
  (CSR)
- :func:`gcn_norm`, :func:`spmm`: sparse GCN propagation
"""
from gcnprune_fast.ops._native import native_available, native_cuda_available
from gcnprune_fast.ops.csr import CSRGraph
from gcnprune_fast.ops.gap import GapAccumulator, GapStats, gap_stats
from gcnprune_fast.ops.graph import cosine_similarity, kl_similarity, knn_graph
from gcnprune_fast.ops.sparse import gcn_norm, spmm
from gcnprune_fast.ops import reference

__all__ = [
    "CSRGraph", "GapAccumulator", "GapStats", "gap_stats", "cosine_similarity", "kl_similarity",
    "knn_graph", "gcn_norm", "spmm", "native_available", "native_cuda_available", "reference",
]
