"""Sparse GCN propagation: :func:`gcn_norm` and :func:`spmm` on :class:`CSRGraph` graphs.

Both check their arguments, then run ``torch.ops.gcnprune.{gcn_norm, spmm}`` when the native
library is loaded (CPU, or CUDA when built with CUDA kernels) and the plain-PyTorch reference in
:mod:`gcnprune_fast.ops.reference.sparse` otherwise. This module also registers, for the native
ops, the fake (meta) kernels used by ``torch.compile`` / ``torch.export`` and the autograd formulas:

- ``spmm``: ``grad_x = A^T G`` (``spmm_transpose``), ``grad_values[e] = <G[row(e)], X[col(e)]>``
  (``sddmm``);
- ``spmm_transpose`` and ``sddmm`` are differentiable as well (so double backward works).
"""
from __future__ import annotations

import torch

from gcnprune_fast.ops import _native
from gcnprune_fast.ops.csr import CSRGraph
from gcnprune_fast.ops.reference import sparse as _reference

__all__ = ["gcn_norm", "spmm"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------------
# Argument checks


def _check_graph(graph, op: str) -> CSRGraph:
    """Type, dtype, rank, device and indptr checks of a CSR graph; returns it as a CSRGraph."""
    if not isinstance(graph, tuple) or len(graph) != 3:
        raise TypeError(f"{op}: graph must be a CSRGraph(indptr, indices, values), "
                        f"got {type(graph).__name__}")
    indptr, indices, values = graph
    for name, t in (("indptr", indptr), ("indices", indices), ("values", values)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: graph.{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("indptr", indptr), ("indices", indices)):
        if t.dtype != torch.int64:
            raise TypeError(f"{op}: graph.{name} must be int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{op}: graph.{name} must be 1-D, got shape {tuple(t.shape)}")
    if indptr.numel() < 1:
        raise ValueError(f"{op}: graph.indptr must have at least one element (R + 1 with R >= 0)")
    if values.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: graph.values must be float16/bfloat16/float32/float64, "
                        f"got {values.dtype}")
    if values.dim() != 1 or values.numel() != indices.numel():
        raise ValueError(f"{op}: graph.values must be 1-D with nnz = {indices.numel()} entries "
                         f"(one per index), got shape {tuple(values.shape)}")
    if not (indptr.device == indices.device == values.device):
        raise ValueError(f"{op}: graph tensors must share one device, got indptr on "
                         f"{indptr.device}, indices on {indices.device}, values on {values.device}")
    return CSRGraph(indptr, indices, values)


def _check_structure(graph: CSRGraph, num_cols: int, op: str, cols_name: str) -> None:
    """Data checks (one device sync): indptr starts at 0, never decreases and ends at nnz;
    column ids lie in [0, num_cols). Skipped while tracing (fake tensors have no data)."""
    if torch.compiler.is_compiling():
        return
    indptr, indices, _ = graph
    nnz = indices.numel()
    flags = [indptr[0] != 0, indptr[-1] != nnz]
    if indptr.numel() > 1:
        flags.append((indptr.diff() < 0).any())
    if nnz:
        lo, hi = torch.aminmax(indices)
        flags.append((lo < 0) | (hi >= num_cols))
    bad = torch.stack(flags).tolist()
    if bad[0]:
        raise ValueError(f"{op}: graph.indptr must start at 0, got {int(indptr[0])}")
    if bad[1]:
        raise ValueError(f"{op}: graph.indptr[-1] must equal nnz = {nnz}, got {int(indptr[-1])}")
    if len(bad) > 2 and bad[2]:
        raise ValueError(f"{op}: graph.indptr must be non-decreasing")
    if nnz and bad[-1]:
        raise ValueError(f"{op}: graph.indices must lie in [0, {num_cols}) ({cols_name}), got "
                         f"min {int(indices.min())}, max {int(indices.max())}")


# ------------------------------------------------------------------------------------------------
# Public ops


def gcn_norm(graph: CSRGraph, add_self_loops: bool = True) -> CSRGraph:
    """Symmetric GCN normalization ``D^-1/2 (A + I) D^-1/2`` of a square CSR graph [N, N].

    Args:
        graph: CSRGraph with indptr int64 [N + 1], indices int64 [nnz] (sorted within each row),
            values float [nnz] (float16/bfloat16/float32/float64).
        add_self_loops: add the identity first. Row i gains the entry (i, i) with weight 1 at its
            sorted position; if row i already stores a diagonal entry, 1 is added to it instead
            (the structure is then unchanged for that row).

    Returns:
        A new CSRGraph [N, N] (nnz grows by the number of rows without a stored diagonal entry)
        with values ``w_ij / sqrt(deg_i * deg_j)``, ``deg_i`` the row sum of the (self-looped)
        weights ``w``. Rows with ``deg <= 0`` get the scale 0 (no inf/NaN). Values keep the input
        dtype (float32 accumulation for half types). Differentiable in ``graph.values`` (the
        plain-PyTorch path is used when they require grad).
    """
    op = "gcn_norm"
    graph = _check_graph(graph, op)
    if not isinstance(add_self_loops, bool):
        raise TypeError(f"{op}: add_self_loops must be a bool, got {type(add_self_loops).__name__}")
    _check_structure(graph, graph.num_rows, op, "the graph must be square [N, N]")
    needs_grad = torch.is_grad_enabled() and graph.values.requires_grad
    if not needs_grad and _native.use_native(*graph):
        return CSRGraph(*torch.ops.gcnprune.gcn_norm(*graph, add_self_loops))
    return _reference.gcn_norm(graph, add_self_loops)


def spmm(graph: CSRGraph, x: torch.Tensor) -> torch.Tensor:
    """Sparse-dense product ``Y = A X`` (one GCN propagation step).

    Args:
        graph: CSRGraph A [R, Ncol]: indptr int64 [R + 1], indices int64 [nnz] in [0, Ncol),
            values float [nnz].
        x: dense float tensor [Ncol, d] (any strides; any d >= 0).

    Returns:
        Y [R, d], dtype ``torch.promote_types(values.dtype, x.dtype)``; float16/bfloat16 accumulate
        in float32. Differentiable in ``x`` and ``graph.values``.
    """
    op = "spmm"
    graph = _check_graph(graph, op)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16/bfloat16/float32/float64, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D [num_cols, d], got shape {tuple(x.shape)}")
    if x.device != graph.values.device:
        raise ValueError(f"{op}: x is on {x.device} but the graph is on {graph.values.device}")
    _check_structure(graph, x.size(0), op, f"x has {x.size(0)} rows")
    dtype = torch.promote_types(graph.values.dtype, x.dtype)
    values, x = graph.values.to(dtype), x.to(dtype)
    if _native.use_native(graph.indptr, graph.indices, values, x):
        return torch.ops.gcnprune.spmm(graph.indptr, graph.indices, values, x)
    return _reference.spmm(CSRGraph(graph.indptr, graph.indices, values), x)


# ------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the native ops


def _register_native() -> None:
    lib = torch.ops.gcnprune

    @torch.library.register_fake("gcnprune::gcn_norm")
    def _gcn_norm_fake(indptr, indices, values, add_self_loops=True):
        nnz = torch.library.get_ctx().new_dynamic_size() if add_self_loops else indices.shape[0]
        return torch.empty_like(indptr), indices.new_empty((nnz,)), values.new_empty((nnz,))

    @torch.library.register_fake("gcnprune::spmm")
    def _spmm_fake(indptr, indices, values, x):
        torch._check(values.dtype == x.dtype, lambda: "spmm: values and x dtypes differ")
        return x.new_empty((indptr.shape[0] - 1, x.shape[1]))

    @torch.library.register_fake("gcnprune::spmm_transpose")
    def _spmm_transpose_fake(indptr, indices, values, g, n_cols):
        return g.new_empty((n_cols, g.shape[1]))

    @torch.library.register_fake("gcnprune::sddmm")
    def _sddmm_fake(indptr, indices, a, b):
        return a.new_empty((indices.shape[0],))

    # spmm: Y = A X.  dX = A^T dY, dvalues[e] = <dY[row(e)], X[col(e)]>.
    def _spmm_setup(ctx, inputs, output):
        indptr, indices, values, x = inputs
        ctx.save_for_backward(indptr, indices, values, x)

    def _spmm_backward(ctx, grad):
        indptr, indices, values, x = ctx.saved_tensors
        grad_values = grad_x = None
        if ctx.needs_input_grad[2]:
            grad_values = lib.sddmm(indptr, indices, grad, x)
        if ctx.needs_input_grad[3]:
            grad_x = lib.spmm_transpose(indptr, indices, values, grad, x.shape[0])
        return None, None, grad_values, grad_x

    torch.library.register_autograd("gcnprune::spmm", _spmm_backward, setup_context=_spmm_setup)

    # spmm_transpose: Z = A^T G.  dG = A dZ, dvalues[e] = <G[row(e)], dZ[col(e)]>.
    def _spmm_transpose_setup(ctx, inputs, output):
        indptr, indices, values, g, _ = inputs
        ctx.save_for_backward(indptr, indices, values, g)

    def _spmm_transpose_backward(ctx, grad):
        indptr, indices, values, g = ctx.saved_tensors
        grad_values = grad_g = None
        if ctx.needs_input_grad[2]:
            grad_values = lib.sddmm(indptr, indices, g, grad)
        if ctx.needs_input_grad[3]:
            grad_g = lib.spmm(indptr, indices, values, grad)
        return None, None, grad_values, grad_g, None

    torch.library.register_autograd("gcnprune::spmm_transpose", _spmm_transpose_backward,
                                    setup_context=_spmm_transpose_setup)

    # sddmm: s[e] = <a[row(e)], b[col(e)]>.  da = S b, db = S^T a with S = CSR(values = ds).
    def _sddmm_setup(ctx, inputs, output):
        indptr, indices, a, b = inputs
        ctx.save_for_backward(indptr, indices, a, b)

    def _sddmm_backward(ctx, grad):
        indptr, indices, a, b = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_a = lib.spmm(indptr, indices, grad, b)
        if ctx.needs_input_grad[3]:
            grad_b = lib.spmm_transpose(indptr, indices, grad, a, b.shape[0])
        return None, None, grad_a, grad_b

    torch.library.register_autograd("gcnprune::sddmm", _sddmm_backward, setup_context=_sddmm_setup)


if _native.native_available():
    _register_native()
