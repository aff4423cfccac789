"""Plain-PyTorch implementations of every op in :mod:`gcnprune_fast.ops`.

They define the semantics that the native kernels are tested against, and they are the fallback
when the compiled library is unavailable.
"""
from gcnprune_fast.ops.reference.gap import gap_stats
from gcnprune_fast.ops.reference.graph import cosine_similarity, kl_similarity, knn_graph
from gcnprune_fast.ops.reference.sparse import gcn_norm, spmm

__all__ = ["gap_stats", "cosine_similarity", "kl_similarity", "knn_graph", "gcn_norm", "spmm"]
