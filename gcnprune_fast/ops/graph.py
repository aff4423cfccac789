"""Channel similarity graphs: cosine and symmetric-KL similarity, and the symmetrized kNN graph
(CSR) under either.

The ops run ``torch.ops.gcnprune.*`` (C++/CUDA) when the compiled library is loaded and the
plain-PyTorch reference (:mod:`gcnprune_fast.ops.reference.graph`) otherwise; the semantics
(compute dtype, zero rows, tie-break to the lower column index) are documented there.

The native ``knn_graph`` never materializes the C x C similarity matrix: it walks upper-triangular
tiles of each segment (one GEMM per tile; two for the KL similarity), feeds every pair to both rows' running top-k, and keeps
memory at O(C * k + tile). The tile edge (rows = columns) defaults to 512 on CPU and 4096 on CUDA
and can be set with the environment variable ``GCNPRUNE_KNN_TILE`` (used by the tests to force
many tiles on small inputs).
"""
from __future__ import annotations

import torch

from gcnprune_fast.ops._native import native_available, use_native
from gcnprune_fast.ops.csr import CSRGraph
from gcnprune_fast.ops.reference import graph as _ref

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_features(f) -> None:
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"f: expected a torch.Tensor [C, B], got {type(f).__name__}")
    if f.dim() != 2:
        raise ValueError(f"f: expected a 2-D tensor [C, B] (C channels, B features), "
                         f"got shape {tuple(f.shape)}")
    if f.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"f: expected float16, bfloat16, float32 or float64, got {f.dtype}")


def _check_center(center) -> None:
    if not isinstance(center, bool):
        raise TypeError(f"center: expected a bool, got {type(center).__name__}")


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k: must be >= 0, got {k}")


def _check_segments(segments, f: torch.Tensor) -> None:
    if segments is None:
        return
    if not isinstance(segments, torch.Tensor):
        raise TypeError(f"segments: expected an int64 tensor of offsets [G+1] or None, "
                        f"got {type(segments).__name__}")
    if segments.dtype != torch.int64:
        raise TypeError(f"segments: expected dtype int64, got {segments.dtype}")
    if segments.dim() != 1 or segments.numel() < 1:
        raise ValueError(f"segments: expected a non-empty 1-D tensor of offsets [G+1], "
                         f"got shape {tuple(segments.shape)}")
    if segments.device != f.device:
        raise ValueError(f"segments: on {segments.device} but f is on {f.device}")
    offs = segments.cpu()
    c = f.shape[0]
    if int(offs[0]) != 0:
        raise ValueError(f"segments: must start at 0, got {int(offs[0])}")
    if bool((offs[1:] < offs[:-1]).any()):
        raise ValueError(f"segments: offsets must be non-decreasing, got {offs.tolist()}")
    if int(offs[-1]) != c:
        raise ValueError(f"segments: must end at C = {c} (rows of f), got {int(offs[-1])}")


def _check_similarity(similarity) -> None:
    if not isinstance(similarity, str):
        raise TypeError(f"similarity: expected a str ('cosine' or 'kl'), "
                        f"got {type(similarity).__name__}")
    if similarity not in _ref.SIMILARITIES:
        raise ValueError(f"similarity: expected 'cosine' or 'kl', got {similarity!r}")


def _needs_grad(f: torch.Tensor) -> bool:
    return f.requires_grad and torch.is_grad_enabled()


def cosine_similarity(f: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Cosine similarity of the rows of ``f`` [C, B] -> [C, C].

    Result float32 (float64 for float64 input; float16/bfloat16 are computed in float32);
    ``center=True`` subtracts each row's mean first. Rows of zero norm have similarity 0 with every
    row (their diagonal entry included). The native result is exactly symmetric.

    Raises TypeError/ValueError naming ``f`` or ``center`` for a wrong type, rank or dtype, and
    ValueError when ``f`` holds NaN or infinity.
    """
    _check_features(f)
    _check_center(center)
    # The native kernels have no backward: a differentiable call takes the reference path.
    if use_native(f) and not _needs_grad(f):
        return torch.ops.gcnprune.cosine_similarity(f, center)
    return _ref.cosine_similarity(f, center)


def kl_similarity(f: torch.Tensor) -> torch.Tensor:
    """Symmetric-KL similarity of the rows of ``f`` [C, B] -> [C, C].

    Each row (one channel's values over B samples) is standardized (z-score with the population
    std; an exactly constant row, zero rows included, gets z = 0) and turned into a distribution
    over the samples, ``p_i = softmax(z_i)``; the similarity is ``exp(-d(i, j))`` with the
    symmetric KL divergence ``d = (KL(p_i||p_j) + KL(p_j||p_i)) / 2``. Values in [0, 1] (0 only by
    underflow), exactly 1 on the diagonal and between constant rows, exactly symmetric in the
    native kernels; invariant to each row's scale and offset. B = 0 or 1: all ones. Result float32
    (float64 for float64 input). Full definition: :mod:`gcnprune_fast.ops.reference.graph`.

    Raises TypeError/ValueError naming ``f`` for a wrong type, rank or dtype, and ValueError when
    ``f`` holds NaN or infinity.
    """
    _check_features(f)
    if use_native(f) and not _needs_grad(f):
        return torch.ops.gcnprune.kl_similarity(f)
    return _ref.kl_similarity(f)


def knn_graph(f: torch.Tensor, k: int, segments: torch.Tensor | None = None,
              center: bool = False, similarity: str = "cosine") -> CSRGraph:
    """Symmetrized k-nearest-neighbour graph of the rows of ``f`` [C, B], in CSR.

    Args:
        f: features [C, B], one row per channel (float16/bfloat16/float32/float64).
        k: neighbours per row (>= 0). A row picks all other rows of its segment when the segment
            has at most ``k + 1`` rows; ``k = 0`` gives an empty graph.
        segments: int64 offsets [G+1] (0 = offsets[0] <= ... <= offsets[G] = C) of a
            block-diagonal batch (one segment per pruning group); edges never cross segments.
            None = one segment. Empty segments are allowed.
        center: subtract each row's mean before the cosine (no effect with ``similarity="kl"``,
            which standardizes the rows anyway).
        similarity: ``"cosine"`` (:func:`cosine_similarity`) or ``"kl"`` (:func:`kl_similarity`).

    Returns:
        ``CSRGraph(indptr [C+1], indices [nnz], values [nnz])``: the union of the edges i->j
        (j among the k most similar rows of i, self excluded, ties to the lower j) and j->i,
        weights ``max(sim(i, j), 0)`` (float32, float64 for float64 input; negative-similarity
        edges stay with weight 0; KL weights are in [0, 1] already), columns sorted within each
        row, no self loops. Cosine: rows of zero norm have similarity 0 to all rows, so they link
        to the lowest-index rows of their segment. KL: constant rows are the uniform
        distribution, similarity 1 to each other.

    Raises TypeError/ValueError naming the argument (``f``, ``k``, ``segments``, ``center``,
    ``similarity``) for wrong types, ranks, dtypes, devices, negative ``k``, malformed offsets,
    an unknown similarity, or NaN/inf in ``f``.
    """
    _check_features(f)
    _check_k(k)
    _check_center(center)
    _check_segments(segments, f)
    _check_similarity(similarity)
    if use_native(f, segments) and not _needs_grad(f):
        if similarity == "cosine":  # the schema's default: the call of the cosine-only op
            indptr, indices, values = torch.ops.gcnprune.knn_graph(f, k, segments, center)
        else:
            indptr, indices, values = torch.ops.gcnprune.knn_graph(f, k, segments, center,
                                                                   similarity)
        return CSRGraph(indptr, indices, values)
    if similarity == "cosine":
        return _ref.knn_graph(f, k, segments, center)
    return _ref.knn_graph(f, k, segments, center, similarity)


def _register_fakes() -> None:
    """Shape-only kernels so that torch.compile / torch.export can trace the native ops."""

    @torch.library.register_fake("gcnprune::cosine_similarity")
    def _cosine_similarity_fake(f, center=False):
        c = f.shape[0]
        return f.new_empty((c, c), dtype=_ref.compute_dtype(f.dtype))

    if hasattr(torch.ops.gcnprune, "kl_similarity"):  # absent from libraries built before it
        @torch.library.register_fake("gcnprune::kl_similarity")
        def _kl_similarity_fake(f):
            c = f.shape[0]
            return f.new_empty((c, c), dtype=_ref.compute_dtype(f.dtype))

    @torch.library.register_fake("gcnprune::knn_graph")
    def _knn_graph_fake(f, k, segments=None, center=False, similarity="cosine"):
        c = f.shape[0]
        nnz = torch.library.get_ctx().new_dynamic_size()  # data dependent (ties, union)
        return (f.new_empty((c + 1,), dtype=torch.int64),
                f.new_empty((nnz,), dtype=torch.int64),
                f.new_empty((nnz,), dtype=_ref.compute_dtype(f.dtype)))


if native_available():
    _register_fakes()
