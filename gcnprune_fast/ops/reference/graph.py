"""Plain-PyTorch cosine / KL similarity and kNN channel graph (the semantics the native kernels
follow).

Conventions shared with the native kernels (``csrc/cpu/knn_graph_cpu.cpp``,
``csrc/cuda/knn_graph_cuda.cu``):

- compute dtype: float64 for float64 input, float32 otherwise (float16/bfloat16/float32);
- cosine: rows are optionally centered (row mean subtracted; a constant row becomes exactly zero),
  then scaled by their largest magnitude (so squares cannot overflow) and normalized to unit L2
  norm; a row of norm zero stays all-zero, i.e. its similarity to every row (itself included) is 0;
- kl (:func:`kl_similarity`): each row f_i [B] is standardized, ``z_i = (f_i - mean) / std``
  (population std; computed after scaling by the largest magnitude, so nothing overflows; an
  exactly constant row -- zero rows included -- gets ``z_i = 0``), and turned into a distribution
  over the B samples, ``p_i = softmax(z_i)`` (a constant row is the uniform distribution). The
  distance is the symmetric KL divergence
  ``d(i, j) = (KL(p_i||p_j) + KL(p_j||p_i)) / 2 = sum_b (p_ib - p_jb)(z_ib - z_jb) / 2``
  (the log-partition terms cancel), computed as ``((a_i + a_j) - (M_ij + M_ji)) / 2`` with
  ``a_i = sum_b p_ib z_ib`` and ``M = P Z^T`` (two GEMMs, so it tiles like the cosine), and the
  similarity is ``exp(-max(d, 0))``: in (0, 1] (0 only by underflow, for B of several thousand),
  exactly 1 on the diagonal, 1 between any two constant rows, symmetric. Standardizing first makes
  it invariant to each channel's scale and offset, like the centered cosine (to first order in z,
  ``d ~ 1 - pearson(f_i, f_j)``; the softmax weights the samples where a channel responds most).
  B = 0 or 1: every row is constant, all similarities are 1;
- kNN order: a candidate ``(s, j)`` ranks before ``(s', j')`` when ``s > s'``, or ``s == s'`` and
  ``j < j'`` (ties go to the LOWER column index), so the graph is deterministic.
"""
from __future__ import annotations

import torch

from gcnprune_fast.ops.csr import CSRGraph


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the graph ops for input ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalized_rows(f: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Unit-norm rows of ``f`` [C, B] in the compute dtype (zero rows stay zero). Raises
    ValueError when ``f`` holds NaN or infinity."""
    x = f.to(compute_dtype(f.dtype))
    if x.shape[1] == 0:  # B = 0: every row has zero norm
        return x
    if center:
        x = x - x.mean(dim=1, keepdim=True)
        # A constant row would otherwise keep rounding noise of its mean and get a random direction.
        constant = x.amax(dim=1) == x.amin(dim=1)
        x = x.masked_fill(constant.unsqueeze(1), 0.0)
    scale = x.abs().amax(dim=1, keepdim=True)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError("f: holds NaN or infinite values")
    x = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def cosine_similarity(f: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Cosine similarity of the rows of ``f`` [C, B] -> [C, C] (float32; float64 for float64 input).

    ``center=True`` subtracts each row's mean first (Pearson correlation). Rows of zero norm have
    similarity 0 with every row, including themselves.
    """
    xn = normalized_rows(f, center)
    return xn @ xn.T


def kl_rows(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The KL similarity's row transform of ``f`` [C, B]: ``(z, p, a)`` with z the standardized
    rows [C, B], p = softmax(z) over the B samples [C, B] and a = rowsum(p * z) [C], in the compute
    dtype. Raises ValueError when ``f`` holds NaN or infinity."""
    x = f.to(compute_dtype(f.dtype))
    if x.shape[1] == 0:  # B = 0: no samples; every pair has distance 0
        return x, x, x.new_zeros(x.shape[0])
    scale = x.abs().amax(dim=1, keepdim=True)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError("f: holds NaN or infinite values")
    constant = (x.amax(dim=1) == x.amin(dim=1)).unsqueeze(1)
    x = x / torch.where(scale > 0, scale, torch.ones_like(scale))  # max |x| = 1: no overflow
    x = x - x.mean(dim=1, keepdim=True)
    rms = x.square().mean(dim=1, keepdim=True).sqrt()
    z = (x / torch.where(rms > 0, rms, torch.ones_like(rms))).masked_fill(constant, 0.0)
    p = torch.softmax(z, dim=1)
    return z, p, (p * z).sum(dim=1)


def _kl_matrix(z: torch.Tensor, p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """exp(-max((a_i + a_j) - (M_ij + M_ji), 0) / 2) with M = P Z^T: the KL similarities of the
    rows given by ``kl_rows`` (the diagonal as computed, not forced to 1)."""
    m = p @ z.T
    d = (a[:, None] + a[None, :]) - (m + m.T)  # m + m.T is exactly symmetric
    return torch.exp(-0.5 * d.clamp_min(0))


def kl_similarity(f: torch.Tensor) -> torch.Tensor:
    """Symmetric-KL similarity of the rows of ``f`` [C, B] -> [C, C] (float32; float64 for float64
    input): ``exp(-(KL(p_i||p_j) + KL(p_j||p_i)) / 2)`` with ``p_i = softmax(zscore(f_i))`` over the
    B samples (see the module docstring). Exactly symmetric, exactly 1 on the diagonal, in [0, 1].
    """
    s = _kl_matrix(*kl_rows(f))
    # d(i, i) = 0 exactly (the rounding of a_i and M_ii may differ). Out of place: differentiable.
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return s.masked_fill(eye, 1.0)


SIMILARITIES = ("cosine", "kl")


def _segment_bounds(c: int, segments: torch.Tensor | None) -> list[tuple[int, int]]:
    if segments is None:
        return [(0, c)]
    offs = segments.tolist()
    return [(offs[g], offs[g + 1]) for g in range(len(offs) - 1)]


def _topk_lower_index_ties(s: torch.Tensor, k: int) -> torch.Tensor:
    """Column ids [R, k] of the k best entries of each row of ``s`` [R, N], ties to the lower id
    (needs k < N).

    ``torch.topk`` returns the right values but leaves the order of equal values unspecified, so
    the chosen set is ambiguous only when the (k+1)-th value equals the k-th; those rows (rare for
    real data) are redone with a stable sort.
    """
    vals, idx = torch.topk(s, k + 1, dim=1)
    idx = idx[:, :k]
    ambiguous = vals[:, k] == vals[:, k - 1]
    rows = ambiguous.nonzero().flatten()
    if rows.numel():
        order = torch.sort(s[rows], dim=1, descending=True, stable=True).indices
        idx[rows] = order[:, :k]
    return idx


def knn_graph(f: torch.Tensor, k: int, segments: torch.Tensor | None = None,
              center: bool = False, similarity: str = "cosine") -> CSRGraph:
    """Symmetrized kNN graph of the rows of ``f`` [C, B], as CSR without self loops.

    Every row i picks its ``k`` most similar rows j != i of its own segment (``segments``: int64
    offsets [G+1] of a block-diagonal batch; None = one segment; ties go to the lower j; all other
    rows when the segment has at most k+1 rows); the graph is the union of the edges i->j and
    j->i, weighted ``max(sim(i, j), 0)`` (edges with negative similarity stay, with weight 0).
    ``similarity``: "cosine" (:func:`cosine_similarity`, optionally centered) or "kl"
    (:func:`kl_similarity`, in [0, 1]; ``center`` has no effect: the rows are standardized).
    Dense per segment: memory O(segment size^2).

    Returns ``CSRGraph(indptr [C+1] int64, indices [nnz] int64 sorted per row, values [nnz])``,
    values float32 (float64 for float64 input).
    """
    c = f.shape[0]
    kl = similarity == "kl"
    if kl:
        z, p, a = kl_rows(f)
        xn = z
    else:
        xn = normalized_rows(f, center)
    device = f.device
    rows, cols, vals = [], [], []
    for lo, hi in _segment_bounds(c, segments):
        n = hi - lo
        kk = min(k, n - 1)
        if kk <= 0:
            continue
        if kl:
            # clone: exp saves its output for backward, and the diagonal is overwritten below
            s = _kl_matrix(z[lo:hi], p[lo:hi], a[lo:hi]).clone()
        else:
            s = xn[lo:hi] @ xn[lo:hi].T
        s.fill_diagonal_(float("-inf"))
        nbr = _topk_lower_index_ties(s, kk)
        src = torch.arange(n, device=device).repeat_interleave(kk)
        dst = nbr.flatten()
        rows.append(torch.cat([src, dst]) + lo)
        cols.append(torch.cat([dst, src]) + lo)
        # Each pair's weight is read from the upper triangle, so both directions agree exactly.
        w = s[torch.minimum(src, dst), torch.maximum(src, dst)].clamp_min(0)
        vals.append(torch.cat([w, w]))
    dtype = xn.dtype
    if not rows:
        return CSRGraph(torch.zeros(c + 1, dtype=torch.long, device=device),
                        torch.zeros(0, dtype=torch.long, device=device),
                        torch.zeros(0, dtype=dtype, device=device))
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    key, order = torch.sort(row * c + col)
    keep = torch.ones_like(key, dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    key, val = key[keep], val[order][keep]
    row, col = key // c, key % c
    indptr = torch.zeros(c + 1, dtype=torch.long, device=device)
    indptr[1:] = torch.cumsum(torch.bincount(row, minlength=c), 0)
    return CSRGraph(indptr, col, val)
