"""Sparse GCN propagation ops: gcn_norm, spmm (+ spmm_transpose, sddmm), native vs reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gcnprune_fast.ops import CSRGraph, gcn_norm, native_available, native_cuda_available, spmm
from gcnprune_fast.ops import _native
from gcnprune_fast.ops.reference import sparse as ref

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

needs_native = pytest.mark.skipif(not native_available(), reason="native library not built")
needs_cuda = pytest.mark.skipif(not native_cuda_available(), reason="no CUDA device / CUDA kernels")

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tol(dtype):
    return {torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=8e-2, rtol=5e-2),
            torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: {}}[dtype]


def random_csr(num_rows, num_cols, density=0.3, dtype=torch.float32, seed=0, empty_rows=True,
               device="cpu") -> CSRGraph:
    """Sorted, duplicate-free CSR [num_rows, num_cols]; some rows emptied on purpose."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_rows, num_cols, generator=gen) < density
    if empty_rows and num_rows > 2:
        mask[::3] = False
    rows, cols = mask.nonzero(as_tuple=True)
    indptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    values = (torch.rand(cols.numel(), generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    return CSRGraph(indptr, cols.contiguous(), values).to(device)


def dense(graph, num_cols, dtype=torch.float64):
    return CSRGraph(graph.indptr, graph.indices, graph.values.to(dtype)).to_dense(num_cols)


def native_spmm(graph, x):
    return torch.ops.gcnprune.spmm(graph.indptr, graph.indices, graph.values, x)


def with_reference(monkeypatch):
    monkeypatch.setattr(_native, "use_native", lambda *t: False)


# ------------------------------------------------------------------------------------------------
# spmm


@needs_native
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("d", [0, 1, 7, 8, 32, 67, 136])
def test_spmm_native_matches_reference_and_dense(dtype, d):
    g = random_csr(23, 17, dtype=dtype, seed=d)
    x = torch.randn(17, d, dtype=torch.float64).to(dtype)
    out = spmm(g, x)
    assert out.shape == (23, d) and out.dtype == dtype
    expected = ref.spmm(g, x)
    torch.testing.assert_close(out, expected, **tol(dtype))
    torch.testing.assert_close(out.double(), dense(g, 17) @ x.double(), **tol(dtype))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_non_contiguous_x(dtype):
    g = random_csr(11, 20, dtype=dtype, seed=3)
    base = torch.randn(40, 20, dtype=dtype)
    for x in (base.t(), base.t()[:, ::2], base[::2].t()[:, 1:]):
        assert not x.is_contiguous()
        torch.testing.assert_close(spmm(g, x), dense(g, 20, dtype) @ x)


def test_spmm_reference_matches_dense():
    g = random_csr(9, 6, dtype=torch.float64, seed=1)
    x = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(ref.spmm(g, x), dense(g, 6) @ x)


@needs_native
def test_spmm_promotes_mixed_dtypes():
    g = random_csr(5, 4, dtype=torch.float32)
    x = torch.randn(4, 3, dtype=torch.float16)
    out = spmm(g, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dense(g, 4, torch.float32) @ x.float())


@pytest.mark.parametrize("native", [True, False])
def test_spmm_degenerate_shapes(native, monkeypatch):
    if native and not native_available():
        pytest.skip("native library not built")
    if not native:
        with_reference(monkeypatch)
    empty = CSRGraph(torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                     torch.zeros(0))
    assert spmm(empty, torch.randn(5, 3)).shape == (0, 3)  # R = 0
    no_edges = CSRGraph(torch.zeros(4, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                        torch.zeros(0))
    assert torch.equal(spmm(no_edges, torch.randn(2, 3)), torch.zeros(3, 3))  # nnz = 0
    assert torch.equal(spmm(no_edges, torch.randn(0, 3)), torch.zeros(3, 3))  # Ncol = 0
    g = random_csr(4, 4)
    assert spmm(g, torch.randn(4, 0)).shape == (4, 0)  # d = 0


@needs_native
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_spmm_transpose_and_sddmm_match_reference(dtype):
    g = random_csr(19, 13, dtype=dtype, seed=5)
    for d in (1, 9, 40, 64):
        gr = torch.randn(19, d, dtype=torch.float64).to(dtype)
        x = torch.randn(13, d, dtype=torch.float64).to(dtype)
        out = torch.ops.gcnprune.spmm_transpose(*g, gr, 13)
        torch.testing.assert_close(out, ref.spmm_transpose(g, gr, 13), **tol(dtype))
        torch.testing.assert_close(out.double(), dense(g, 13).t() @ gr.double(), **tol(dtype))
        s = torch.ops.gcnprune.sddmm(g.indptr, g.indices, gr, x)
        torch.testing.assert_close(s, ref.sddmm(g.indptr, g.indices, gr, x), **tol(dtype))
        expected = (gr.double() @ x.double().t())[ref.row_ids(g.indptr), g.indices]
        torch.testing.assert_close(s.double(), expected, **tol(dtype))


@needs_native
def test_multithreaded_chunks_match_dense():
    # Large enough for several row chunks and several counting-sort chunks (nnz >= 2 * 65536).
    g = random_csr(600, 500, density=0.5, dtype=torch.float64, seed=9, empty_rows=True)
    gr = torch.randn(600, 3, dtype=torch.float64)
    x = torch.randn(500, 3, dtype=torch.float64)
    a = dense(g, 500)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*g, gr, 500), a.t() @ gr)
        torch.testing.assert_close(spmm(g, x), a @ x)
        torch.testing.assert_close(torch.ops.gcnprune.sddmm(g.indptr, g.indices, gr, x),
                                   ref.sddmm(g.indptr, g.indices, gr, x))
        sq = random_csr(500, 500, density=0.3, dtype=torch.float64, seed=10)
        torch.testing.assert_close(gcn_norm(sq).values, ref.gcn_norm(sq).values)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_spmm_transpose_structure_cache_sees_changes():
    # The transposed structure is cached per (indptr, indices); new values, in-place edits and new
    # tensors must all be honoured.
    g = random_csr(12, 10, density=0.4, dtype=torch.float64, seed=21, empty_rows=False)
    gr = torch.randn(12, 5, dtype=torch.float64)
    for _ in range(2):
        torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*g, gr, 10),
                                   dense(g, 10).t() @ gr)
    g = g._replace(values=torch.rand_like(g.values))
    torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*g, gr, 10), dense(g, 10).t() @ gr)
    g.indices[0] = (g.indices[0] + 3) % 10  # in place (duplicates are fine for A^T G)
    torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*g, gr, 10), dense(g, 10).t() @ gr)
    torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*g, gr, 11),
                               dense(g, 11).t() @ gr)
    for seed in range(3):
        other = random_csr(12, 10, density=0.4, dtype=torch.float64, seed=seed)
        torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*other, gr, 10),
                                   dense(other, 10).t() @ gr)


@pytest.mark.parametrize("native", [True, False])
def test_spmm_gradcheck(native, monkeypatch):
    if native and not native_available():
        pytest.skip("native library not built")
    if not native:
        with_reference(monkeypatch)
    g = random_csr(7, 6, dtype=torch.float64, seed=2)
    values = g.values.clone().requires_grad_()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)

    def fn(values, x):
        return spmm(CSRGraph(g.indptr, g.indices, values), x)

    assert torch.autograd.gradcheck(fn, (values, x))
    if native:
        assert torch.autograd.gradgradcheck(fn, (values, x))


@needs_native
def test_spmm_native_gradients_match_reference():
    g = random_csr(30, 25, dtype=torch.float32, seed=4)
    x = torch.randn(25, 33)
    grad = torch.randn(30, 33)
    grads = []
    for fn in (native_spmm, ref.spmm):
        v = g.values.clone().requires_grad_()
        xx = x.clone().requires_grad_()
        fn(CSRGraph(g.indptr, g.indices, v), xx).backward(grad)
        grads.append((v.grad, xx.grad))
    torch.testing.assert_close(grads[0], grads[1])


@needs_native
def test_opcheck_all_ops():
    g = random_csr(8, 6, dtype=torch.float32, seed=6)
    x = torch.randn(6, 4)
    gr = torch.randn(8, 4)
    square = random_csr(7, 7, seed=7)
    ops = torch.ops.gcnprune
    cases = [
        (ops.spmm, (g.indptr, g.indices, g.values, x)),
        (ops.spmm, (g.indptr, g.indices, g.values.clone().requires_grad_(),
                    x.clone().requires_grad_())),
        (ops.spmm_transpose, (g.indptr, g.indices, g.values, gr, 6)),
        (ops.spmm_transpose, (g.indptr, g.indices, g.values.clone().requires_grad_(),
                              gr.clone().requires_grad_(), 6)),
        (ops.sddmm, (g.indptr, g.indices, gr, x)),
        (ops.sddmm, (g.indptr, g.indices, gr.clone().requires_grad_(), x.clone().requires_grad_())),
        (ops.gcn_norm, (*square, False)),
        (ops.gcn_norm, (*square, True)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


# ------------------------------------------------------------------------------------------------
# gcn_norm


def dense_gcn_norm(graph, add_self_loops=True):
    n = graph.num_rows
    a = dense(graph, n)
    if add_self_loops:
        a = a + torch.eye(n, dtype=a.dtype)
    deg = a.sum(1)
    s = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    return s[:, None] * a * s[None, :]


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_norm_matches_dense_formula(impl, add_self_loops):
    if impl == "native" and not native_available():
        pytest.skip("native library not built")
    g = random_csr(15, 15, dtype=torch.float64, seed=11)
    assert ((ref.row_ids(g.indptr) == g.indices).sum() > 0)  # some stored diagonal entries (+1)
    assert (g.indptr.diff() == 0).any()  # and empty rows (self loop only)
    fn = gcn_norm if impl == "native" else ref.gcn_norm
    out = fn(g, add_self_loops=add_self_loops)
    torch.testing.assert_close(out.to_dense(), dense_gcn_norm(g, add_self_loops))
    assert out.indptr.dtype == out.indices.dtype == torch.int64
    expected_nnz = g.nnz + (15 - int((ref.row_ids(g.indptr) == g.indices).sum())
                            if add_self_loops else 0)
    assert out.nnz == expected_nnz
    rows = ref.row_ids(out.indptr)
    for r in range(15):  # columns stay sorted within every row
        cols = out.indices[rows == r]
        assert torch.all(cols[1:] > cols[:-1])


@needs_native
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_norm_native_matches_reference(dtype, add_self_loops):
    g = random_csr(40, 40, density=0.2, dtype=dtype, seed=12)
    out = gcn_norm(g, add_self_loops)
    expected = ref.gcn_norm(g, add_self_loops)
    assert torch.equal(out.indptr, expected.indptr) and torch.equal(out.indices, expected.indices)
    assert out.values.dtype == dtype
    torch.testing.assert_close(out.values, expected.values, **tol(dtype))


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_gcn_norm_zero_degree_rows_are_finite(impl):
    if impl == "native" and not native_available():
        pytest.skip("native library not built")
    fn = gcn_norm if impl == "native" else ref.gcn_norm
    # Row 1 has weights summing to 0, row 2 is empty; no self loops: their scale must be 0.
    g = CSRGraph(torch.tensor([0, 1, 3, 3]), torch.tensor([1, 0, 2]),
                 torch.tensor([2.0, 1.0, -1.0]))
    out = fn(g, add_self_loops=False)
    assert torch.isfinite(out.values).all()
    torch.testing.assert_close(out.values, torch.tensor([0.0, 0.0, 0.0]))
    empty = CSRGraph(torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                     torch.zeros(0))
    assert fn(empty).nnz == 0
    isolated = CSRGraph(torch.zeros(4, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                        torch.zeros(0))
    out = fn(isolated)  # self loops only: the identity
    torch.testing.assert_close(out.to_dense(), torch.eye(3))


def test_gcn_norm_regular_graph_and_unsorted_rows():
    # A ring: 2-regular, unit weights -> every entry 1 / 3 after self loops.
    n = 6
    cols = torch.stack([(torch.arange(n) - 1) % n, (torch.arange(n) + 1) % n], 1).sort(1).values
    g = CSRGraph(torch.arange(0, 2 * n + 1, 2), cols.flatten(), torch.ones(2 * n))
    for fn in ([gcn_norm, ref.gcn_norm] if native_available() else [ref.gcn_norm]):
        out = fn(g)
        torch.testing.assert_close(out.values, torch.full((3 * n,), 1.0 / 3))
        torch.testing.assert_close(out.to_dense().sum(1), torch.ones(n))
    # Unsorted rows: native and reference place the self loop the same way (before the first
    # larger column), and the matrix is still right.
    unsorted = CSRGraph(torch.tensor([0, 2, 4]), torch.tensor([1, 0, 1, 0]),
                        torch.tensor([1.0, 2.0, 3.0, 4.0]))
    expected = ref.gcn_norm(unsorted)
    torch.testing.assert_close(expected.to_dense(), dense_gcn_norm(unsorted).float())
    if native_available():
        out = gcn_norm(unsorted)
        assert torch.equal(out.indices, expected.indices)
        torch.testing.assert_close(out.values, expected.values)


def test_gcn_norm_differentiable_in_values():
    g = random_csr(6, 6, dtype=torch.float64, seed=13)
    values = g.values.clone().requires_grad_()

    def fn(values):
        return gcn_norm(CSRGraph(g.indptr, g.indices, values)).values

    assert torch.autograd.gradcheck(fn, (values,))


# ------------------------------------------------------------------------------------------------
# Properties


@st.composite
def csr_graphs(draw, square=False):
    num_rows = draw(st.integers(0, 9))
    num_cols = num_rows if square else draw(st.integers(0, 9))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    seed = draw(st.integers(0, 2**16))
    return random_csr(num_rows, num_cols, density, torch.float64, seed,
                      empty_rows=draw(st.booleans())), num_cols


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=csr_graphs(), d=st.integers(0, 20))
def test_property_spmm_equals_dense(graph, d):
    g, num_cols = graph
    x = torch.randn(num_cols, d, dtype=torch.float64)
    expected = dense(g, num_cols) @ x
    torch.testing.assert_close(ref.spmm(g, x), expected)
    torch.testing.assert_close(spmm(g, x), expected)
    if native_available():
        gr = torch.randn(g.num_rows, d, dtype=torch.float64)
        torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*g, gr, num_cols),
                                   dense(g, num_cols).t() @ gr)
        torch.testing.assert_close(torch.ops.gcnprune.sddmm(g.indptr, g.indices, gr, x),
                                   ref.sddmm(g.indptr, g.indices, gr, x))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=csr_graphs(square=True), add_self_loops=st.booleans())
def test_property_gcn_norm(graph, add_self_loops):
    g, _ = graph
    a = dense(g, g.num_rows)
    sym = (a + a.t()).to_sparse_csr()
    sym = CSRGraph(sym.crow_indices(), sym.col_indices(), sym.values())
    out = gcn_norm(sym, add_self_loops)
    m = out.to_dense()
    torch.testing.assert_close(m, m.t())  # symmetric in -> symmetric out
    torch.testing.assert_close(m, dense_gcn_norm(sym, add_self_loops))
    assert torch.isfinite(out.values).all()
    torch.testing.assert_close(out.values, ref.gcn_norm(sym, add_self_loops).values)


def block_diagonal(blocks: list[CSRGraph]) -> CSRGraph:
    indptrs, indices, values = [torch.zeros(1, dtype=torch.int64)], [], []
    node_offset = edge_offset = 0
    for b in blocks:
        indptrs.append(b.indptr[1:] + edge_offset)
        indices.append(b.indices + node_offset)
        values.append(b.values)
        node_offset += b.num_rows
        edge_offset += b.nnz
    return CSRGraph(torch.cat(indptrs), torch.cat(indices), torch.cat(values))


def test_block_diagonal_graph_equals_per_block_results():
    sizes = [5, 1, 0, 8, 3]
    blocks = [random_csr(n, n, density=0.4, dtype=torch.float64, seed=n) for n in sizes]
    batch = block_diagonal(blocks)
    x = torch.randn(sum(sizes), 6, dtype=torch.float64)
    per_block = torch.cat([spmm(b, xb) for b, xb in zip(blocks, x.split(sizes))])
    torch.testing.assert_close(spmm(batch, x), per_block)
    normed = gcn_norm(batch)
    expected = block_diagonal([gcn_norm(b) for b in blocks])
    assert torch.equal(normed.indptr, expected.indptr)
    assert torch.equal(normed.indices, expected.indices)
    torch.testing.assert_close(normed.values, expected.values)


# ------------------------------------------------------------------------------------------------
# Errors


def _g():
    return random_csr(4, 4, density=0.5, seed=1, empty_rows=False)


@pytest.mark.parametrize("native", [True, False])
def test_argument_errors(native, monkeypatch):
    if native and not native_available():
        pytest.skip("native library not built")
    if not native:
        with_reference(monkeypatch)
    g, x = _g(), torch.randn(4, 3)
    bad_cases = [
        (TypeError, "graph must be a CSRGraph", lambda: spmm("graph", x)),
        (TypeError, "indptr must be int64", lambda: spmm(g._replace(indptr=g.indptr.int()), x)),
        (TypeError, "indices must be int64",
         lambda: spmm(g._replace(indices=g.indices.int()), x)),
        (ValueError, "indices must be 1-D",
         lambda: spmm(g._replace(indices=g.indices[None]), x)),
        (ValueError, "indptr must start at 0",
         lambda: spmm(g._replace(indptr=g.indptr + 1), x)),
        (ValueError, r"indptr\[-1\] must equal nnz",
         lambda: spmm(g._replace(indptr=torch.cat([g.indptr[:-1], g.indptr[-1:] - 1])), x)),
        (ValueError, "non-decreasing",
         lambda: spmm(g._replace(indptr=torch.tensor([0, 3, 1, 4, g.nnz])), x)),
        (ValueError, "indices must lie in",
         lambda: spmm(g._replace(indices=g.indices.clone().fill_(9)), x)),
        (ValueError, "indices must lie in",
         lambda: spmm(g._replace(indices=g.indices.clone().fill_(-1)), x)),
        (ValueError, "values must be 1-D with nnz", lambda: spmm(g._replace(values=g.values[1:]), x)),
        (TypeError, "values must be float", lambda: spmm(g._replace(values=g.values.long()), x)),
        (TypeError, "x must be float", lambda: spmm(g, x.long())),
        (TypeError, "x must be a torch.Tensor", lambda: spmm(g, [[1.0]])),
        (ValueError, "x must be 2-D", lambda: spmm(g, x[0])),
        (ValueError, "indices must lie in", lambda: spmm(g, x[:2])),  # x has too few rows
        (ValueError, "x is on meta", lambda: spmm(g, x.to("meta"))),
        (ValueError, "share one device", lambda: spmm(g._replace(values=g.values.to("meta")), x)),
        (ValueError, "square", lambda: gcn_norm(random_csr(3, 5, density=1.0))),
        (TypeError, "add_self_loops must be a bool", lambda: gcn_norm(g, add_self_loops=1)),
    ]
    for exc, match, fn in bad_cases:
        with pytest.raises(exc, match=match):
            fn()


@needs_native
def test_native_ops_reject_bad_input_directly():
    g, x = _g(), torch.randn(4, 3)
    ops = torch.ops.gcnprune
    with pytest.raises(ValueError, match="indices must lie in"):
        ops.spmm(g.indptr, g.indices.clone().fill_(7), g.values, x)
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.spmm(torch.tensor([0, 3, 1, 4, g.nnz]), g.indices, g.values, x)
    with pytest.raises(TypeError, match="same dtype"):
        ops.spmm(*g, x.double())
    with pytest.raises(ValueError, match="indices must lie in"):
        ops.spmm_transpose(*g, x, 2)
    with pytest.raises(ValueError, match="indices must lie in"):
        ops.sddmm(g.indptr, g.indices, x, x[:2])
    with pytest.raises(ValueError, match="indices must lie in"):
        ops.gcn_norm(torch.tensor([0, 1]), torch.tensor([3]), torch.ones(1), True)


# ------------------------------------------------------------------------------------------------
# CUDA


@needs_cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("d", [0, 1, 5, 32, 64, 131])
def test_cuda_ops_match_cpu(dtype, d):
    g = random_csr(50, 37, dtype=dtype, seed=d)
    gc = g.to("cuda")
    x = torch.randn(37, d, dtype=torch.float64).to(dtype)
    gr = torch.randn(50, d, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(spmm(gc, x.cuda()).cpu(), ref.spmm(g, x), **tol(dtype))
    torch.testing.assert_close(torch.ops.gcnprune.spmm_transpose(*gc, gr.cuda(), 37).cpu(),
                               ref.spmm_transpose(g, gr, 37), **tol(dtype))
    torch.testing.assert_close(torch.ops.gcnprune.sddmm(gc.indptr, gc.indices, gr.cuda(),
                                                        x.cuda()).cpu(),
                               ref.sddmm(g.indptr, g.indices, gr, x), **tol(dtype))
    sq = random_csr(30, 30, dtype=dtype, seed=d + 1)
    out = gcn_norm(sq.to("cuda"))
    expected = ref.gcn_norm(sq)
    assert torch.equal(out.indices.cpu(), expected.indices)
    torch.testing.assert_close(out.values.cpu(), expected.values, **tol(dtype))


@needs_cuda
def test_cuda_gradcheck_and_opcheck():
    g = random_csr(9, 7, dtype=torch.float64, seed=3).to("cuda")
    values = g.values.clone().requires_grad_()
    x = torch.randn(7, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, xx: spmm(CSRGraph(g.indptr, g.indices, v), xx), (values, x))
    torch.library.opcheck(torch.ops.gcnprune.spmm, (g.indptr, g.indices, values, x))
    sq = random_csr(7, 7, seed=4).to("cuda")
    torch.library.opcheck(torch.ops.gcnprune.gcn_norm, (*sq, True))
    torch.library.opcheck(torch.ops.gcnprune.spmm_transpose,
                          (g.indptr, g.indices, values, torch.randn(9, 4, dtype=torch.float64,
                                                                     device="cuda"), 7))
