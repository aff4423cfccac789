"""Plain-PyTorch sparse GCN propagation: :func:`gcn_norm` and :func:`spmm` (+ backward helpers).

These define the semantics of ``torch.ops.gcnprune.{gcn_norm, spmm, spmm_transpose, sddmm}``.
They take already-validated inputs (the public wrappers in :mod:`gcnprune_fast.ops.sparse` check
arguments) and are built from differentiable torch ops only, so autograd works through them.
"""
from __future__ import annotations

import torch

from gcnprune_fast.ops.csr import CSRGraph

__all__ = ["gcn_norm", "spmm", "spmm_transpose", "sddmm", "row_ids"]


def row_ids(indptr: torch.Tensor) -> torch.Tensor:
    """Row index of every stored entry: int64 [nnz] from indptr int64 [R + 1]."""
    num_rows = indptr.numel() - 1
    return torch.repeat_interleave(torch.arange(num_rows, device=indptr.device), indptr.diff())


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def gcn_norm(graph: CSRGraph, add_self_loops: bool = True) -> CSRGraph:
    """Symmetric GCN normalization ``D^-1/2 (A + I) D^-1/2`` of a square CSR graph [N, N].

    With ``add_self_loops`` every row i gains the diagonal entry (i, i) with weight 1, inserted
    before the first stored entry of the row whose column is greater than i (its sorted position,
    since rows are sorted by convention); when a row already stores a diagonal entry, 1 is added
    to the (first) stored one instead and the structure is unchanged.
    ``deg[i]`` is the row sum of the (self-looped) weights; rows with ``deg <= 0`` (or NaN) get the
    scale 0 instead of inf/NaN. Output values have the input dtype (degrees accumulate in float32
    for half types).
    """
    indptr, indices, values = graph
    n = indptr.numel() - 1
    rows = row_ids(indptr)
    acc = _acc_dtype(values.dtype)
    vals = values.to(acc)
    if add_self_loops:
        is_diag = rows == indices
        diag_edges = is_diag.nonzero().flatten()
        diag_rows = rows[diag_edges]
        # First stored diagonal entry of each row (edges are in row order).
        first = torch.ones_like(diag_rows, dtype=torch.bool)
        if diag_rows.numel() > 1:
            first[1:] = diag_rows[1:] != diag_rows[:-1]
        bump = torch.zeros_like(vals)
        bump[diag_edges[first]] = 1.0
        vals = vals + bump
        has_diag = torch.zeros(n, dtype=torch.bool, device=indptr.device)
        has_diag[diag_rows] = True
        new_nodes = (~has_diag).nonzero().flatten()
        all_rows = torch.cat([rows, new_nodes])
        all_cols = torch.cat([indices, new_nodes])
        all_vals = torch.cat([vals, torch.ones(new_nodes.numel(), dtype=acc, device=vals.device)])
        key_order = _self_loop_order(indptr, rows, indices, new_nodes)
        rows_out, cols_out, vals_out = all_rows[key_order], all_cols[key_order], all_vals[key_order]
        counts = torch.bincount(rows_out, minlength=n)
        indptr_out = torch.zeros(n + 1, dtype=torch.int64, device=indptr.device)
        indptr_out[1:] = torch.cumsum(counts, 0)
    else:
        rows_out, cols_out, vals_out, indptr_out = rows, indices, vals, indptr.clone()
    deg = torch.zeros(n, dtype=acc, device=vals.device).index_add(0, rows_out, vals_out)
    positive = deg > 0
    scale = torch.where(positive, torch.where(positive, deg, 1.0).rsqrt(), 0.0)
    out = vals_out * scale[rows_out] * scale[cols_out]
    return CSRGraph(indptr_out, cols_out.clone(), out.to(values.dtype))


def _self_loop_order(indptr, rows, indices, new_nodes):
    """Permutation of ``cat([stored entries, new self loops])`` that puts the self loop of row i
    right before the first stored entry of row i whose column is greater than i (or at the row's
    end): the sorted position for sorted rows, and what the native kernel does otherwise."""
    nnz = rows.numel()
    n = indptr.numel() - 1
    edge_ids = torch.arange(nnz, device=rows.device)
    greater = indices > rows
    first_greater = torch.full((n,), nnz, dtype=torch.int64, device=rows.device).scatter_reduce(
        0, rows[greater], edge_ids[greater], reduce="amin")
    pos_new = torch.minimum(first_greater, indptr[1:])[new_nodes]
    # Stored entry e sorts at 2e + 1, a self loop placed before entry p at 2p; ties between self
    # loops of consecutive empty rows keep node order (stable sort).
    key = torch.cat([2 * edge_ids + 1, 2 * pos_new])
    return torch.argsort(key, stable=True)


def spmm(graph: CSRGraph, x: torch.Tensor) -> torch.Tensor:
    """``Y = A X`` for CSR ``A`` [R, Ncol] and dense ``x`` [Ncol, d] -> [R, d] in x's dtype.

    Scatter formulation (gather rows of x, scale by the edge weight, add into the output rows);
    half types accumulate in float32. Differentiable in ``x`` and ``graph.values``.
    """
    indptr, indices, values = graph
    acc = _acc_dtype(x.dtype)
    rows = row_ids(indptr)
    messages = x.index_select(0, indices).to(acc) * values.to(acc).unsqueeze(1)
    out = torch.zeros(indptr.numel() - 1, x.size(1), dtype=acc, device=x.device)
    return out.index_add(0, rows, messages).to(x.dtype)


def spmm_transpose(graph: CSRGraph, g: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``A^T G`` for CSR ``A`` [R, n_cols] and ``g`` [R, d] -> [n_cols, d] (spmm's grad wrt x)."""
    indptr, indices, values = graph
    acc = _acc_dtype(g.dtype)
    rows = row_ids(indptr)
    messages = g.index_select(0, rows).to(acc) * values.to(acc).unsqueeze(1)
    out = torch.zeros(n_cols, g.size(1), dtype=acc, device=g.device)
    return out.index_add(0, indices, messages).to(g.dtype)


def sddmm(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
          b: torch.Tensor) -> torch.Tensor:
    """Per-edge dot products ``out[e] = <a[row(e)], b[col(e)]>`` -> [nnz] in a's dtype
    (spmm's grad wrt values with ``a = G``, ``b = X``)."""
    acc = _acc_dtype(a.dtype)
    rows = row_ids(indptr)
    prod = a.index_select(0, rows).to(acc) * b.index_select(0, indices).to(acc)
    return prod.sum(1).to(a.dtype)
