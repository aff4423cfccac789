"""Sparse GCN propagation ops: gcn_norm, spmm (+ spmm_transpose, sddmm), native vs reference.

Every native op has one list of sample inputs (``sample_inputs_<op>``) feeding the
native-vs-reference test on every device, the gradient tests and opcheck; the tests after them
cover the public wrappers' semantics, properties and errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (DTYPES, SampleInput, dtype_name, gcnprune_op_names, native_cuda_built,
                      needs_native, randn, random_csr, tolerances)
from gcnprune_fast.ops import CSRGraph, gcn_norm, native_available, spmm
from gcnprune_fast.ops import _native
from gcnprune_fast.ops.reference import sparse as ref

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.usefixtures("one_thread")]


def dense(graph, num_cols, dtype=torch.float64):
    return CSRGraph(graph.indptr, graph.indices, graph.values.to(dtype)).to_dense(num_cols)


def native_spmm(graph, x):
    return torch.ops.gcnprune.spmm(graph.indptr, graph.indices, graph.values, x)


def with_reference(monkeypatch):
    monkeypatch.setattr(_native, "use_native", lambda *t: False)


def _no_edges(num_rows):
    return CSRGraph(torch.zeros(num_rows + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                    torch.zeros(0))


# ------------------------------------------------------------------------------------------------
# Sample inputs: one list per native op, argument tuples in the op's own order.
#
# meta["sweep"]: one more width / seed of a shape class already sampled. The numerical tests run
# every sample; opcheck (registration, fake kernel, autograd wiring -- not numerics) skips these.
# meta["grad"]: small float64 samples for gradcheck / gradgradcheck.

# (rows, cols, d values): the small grid, and a larger one with d around the vector widths
GRIDS = [(23, 17, (0, 1, 7, 8, 32, 67, 136)), (50, 37, (0, 1, 5, 32, 64, 131))]


def _sweep(d, ds, dtype, rows):
    """Sweep samples: the second grid (the widths around the CUDA vector paths), and in the first
    every width but its first d > 1 (and d = 0 in float32)."""
    if rows == GRIDS[1][0]:
        return True
    return not (d == next(w for w in ds if w > 1) or (d == 0 and dtype == torch.float32))


def _grad_samples(make_args):
    """Small float64 samples (a few dozen inputs) for gradcheck / gradgradcheck, marked
    ``meta["grad"]``: make_args(graph, rows, cols, d, seed) -> the op's arguments."""
    for rows, cols, d, seed in [(7, 6, 5, 2), (9, 7, 4, 3), (4, 5, 1, 4)]:
        g = random_csr(rows, cols, dtype=torch.float64, seed=seed)
        yield SampleInput(f"grad-{rows}x{cols}-d{d}-float64", make_args(g, rows, cols, d, seed),
                          meta={"grad": True})
    g = _no_edges(3)._replace(values=torch.zeros(0, dtype=torch.float64))
    yield SampleInput("grad-nnz0-float64", make_args(g, 3, 2, 2, 5), meta={"grad": True})


def sample_inputs_spmm():
    """(indptr, indices, values, x): every dtype over two graphs and many widths d (empty rows
    included), non-contiguous x, R = 0, nnz = 0, Ncol = 0."""
    for rows, cols, ds in GRIDS:
        for dtype in DTYPES:
            for d in ds:
                g = random_csr(rows, cols, dtype=dtype, seed=d)
                yield SampleInput(f"{rows}x{cols}-d{d}-{dtype_name(dtype)}",
                                  (*g, randn(cols, d, seed=100 + d, dtype=dtype)),
                                  meta={"sweep": _sweep(d, ds, dtype, rows)})
    for dtype in (torch.float32, torch.float64):
        g = random_csr(11, 20, dtype=dtype, seed=3)
        base = randn(40, 20, seed=3, dtype=dtype)
        for name, x in [("t", base.t()), ("t_step2", base.t()[:, ::2]),
                        ("step2_t_offset", base[::2].t()[:, 1:])]:
            assert not x.is_contiguous()
            yield SampleInput(f"11x20-x_{name}-{dtype_name(dtype)}", (*g, x),
                              meta={"sweep": dtype != torch.float32})
    yield SampleInput("R0", (*_no_edges(0), randn(5, 3)))
    yield SampleInput("nnz0", (*_no_edges(3), randn(2, 3)))
    yield SampleInput("Ncol0", (*_no_edges(3), randn(0, 3)))
    yield from _grad_samples(lambda g, rows, cols, d, seed: (*g, randn(cols, d, seed=seed,
                                                                        dtype=torch.float64)))


def sample_inputs_spmm_transpose():
    """(indptr, indices, values, g, n_cols): every dtype over two graphs and several widths,
    n_cols beyond the largest column, R = 0, nnz = 0."""
    grids = [(19, 13, (1, 9, 40, 64), 5)] + [(r, c, ds, None) for r, c, ds in GRIDS[1:]]
    for rows, cols, ds, seed in grids:
        for dtype in DTYPES:
            for d in ds:
                g = random_csr(rows, cols, dtype=dtype, seed=d if seed is None else seed)
                yield SampleInput(f"{rows}x{cols}-d{d}-{dtype_name(dtype)}",
                                  (*g, randn(rows, d, seed=200 + d, dtype=dtype), cols),
                                  meta={"sweep": _sweep(d, ds, dtype, rows)})
    g = random_csr(12, 10, density=0.4, dtype=torch.float64, seed=21, empty_rows=False)
    yield SampleInput("12x10-n_cols11-float64", (*g, randn(12, 5, seed=21, dtype=torch.float64),
                                                 11))
    yield SampleInput("R0", (*_no_edges(0), randn(0, 3), 5))
    yield SampleInput("nnz0", (*_no_edges(3), randn(3, 2), 4))
    yield from _grad_samples(lambda g, rows, cols, d, seed: (*g, randn(rows, d, seed=seed,
                                                                        dtype=torch.float64), cols))


def sample_inputs_sddmm():
    """(indptr, indices, a, b): every dtype over two graphs and several widths, R = 0, nnz = 0."""
    grids = [(19, 13, (1, 9, 40, 64), 5)] + [(r, c, ds, None) for r, c, ds in GRIDS[1:]]
    for rows, cols, ds, seed in grids:
        for dtype in DTYPES:
            for d in ds:
                g = random_csr(rows, cols, dtype=dtype, seed=d if seed is None else seed)
                yield SampleInput(f"{rows}x{cols}-d{d}-{dtype_name(dtype)}",
                                  (g.indptr, g.indices, randn(rows, d, seed=300 + d, dtype=dtype),
                                   randn(cols, d, seed=400 + d, dtype=dtype)),
                                  meta={"sweep": _sweep(d, ds, dtype, rows)})
    g = _no_edges(0)
    yield SampleInput("R0", (g.indptr, g.indices, randn(0, 3), randn(4, 3)))
    g = _no_edges(3)
    yield SampleInput("nnz0", (g.indptr, g.indices, randn(3, 2), randn(4, 2)))
    yield from _grad_samples(lambda g, rows, cols, d, seed: (
        g.indptr, g.indices, randn(rows, d, seed=seed, dtype=torch.float64),
        randn(cols, d, seed=seed + 1, dtype=torch.float64)))


def sample_inputs_gcn_norm():
    """(indptr, indices, values, add_self_loops): every dtype over random square graphs (some
    stored diagonal entries, empty rows), rows whose weights sum to 0, R = 0, isolated nodes, a
    ring, unsorted rows."""
    for dtype in DTYPES:
        for add_self_loops in (True, False):
            g = random_csr(40, 40, density=0.2, dtype=dtype, seed=12)
            yield SampleInput(f"40x40-{dtype_name(dtype)}-self_loops={add_self_loops}",
                              (*g, add_self_loops))
        for seed in (1, 2, 6, 33, 65, 132):
            g = random_csr(30, 30, dtype=dtype, seed=seed)
            yield SampleInput(f"30x30-seed{seed}-{dtype_name(dtype)}", (*g, True),
                              meta={"sweep": True})
    for add_self_loops in (True, False):
        yield SampleInput(f"7x7-self_loops={add_self_loops}", (*random_csr(7, 7, seed=7),
                                                               add_self_loops))
        # row 1's weights sum to 0, row 2 is empty
        zero_degree = CSRGraph(torch.tensor([0, 1, 3, 3]), torch.tensor([1, 0, 2]),
                               torch.tensor([2.0, 1.0, -1.0]))
        yield SampleInput(f"zero_degree-self_loops={add_self_loops}",
                          (*zero_degree, add_self_loops))
        yield SampleInput(f"R0-self_loops={add_self_loops}", (*_no_edges(0), add_self_loops))
        yield SampleInput(f"isolated-self_loops={add_self_loops}", (*_no_edges(3), add_self_loops))
        n = 6
        cols = torch.stack([(torch.arange(n) - 1) % n, (torch.arange(n) + 1) % n], 1)
        ring = CSRGraph(torch.arange(0, 2 * n + 1, 2), cols.sort(1).values.flatten(),
                        torch.ones(2 * n))
        yield SampleInput(f"ring-self_loops={add_self_loops}", (*ring, add_self_loops))
        unsorted = CSRGraph(torch.tensor([0, 2, 4]), torch.tensor([1, 0, 1, 0]),
                            torch.tensor([1.0, 2.0, 3.0, 4.0]))
        yield SampleInput(f"unsorted-self_loops={add_self_loops}", (*unsorted, add_self_loops))
        g = random_csr(6, 6, dtype=torch.float64, seed=13)
        yield SampleInput(f"grad-6x6-float64-self_loops={add_self_loops}", (*g, add_self_loops),
                          meta={"grad": True})


SAMPLES = {
    "spmm": list(sample_inputs_spmm()),
    "spmm_transpose": list(sample_inputs_spmm_transpose()),
    "sddmm": list(sample_inputs_sddmm()),
    "gcn_norm": list(sample_inputs_gcn_norm()),
}
DIFFERENTIABLE = ("spmm", "spmm_transpose", "sddmm")


def _cases(ops, keep=lambda s: True):
    return [pytest.param(op, s, id=f"{op}-{s.name}") for op in ops for s in SAMPLES[op] if keep(s)]


def _grad(s: SampleInput) -> bool:
    return s.meta.get("grad", False)


# The plain-PyTorch reference of each native op, with the native op's signature.
REFERENCE = {
    "spmm": lambda indptr, indices, values, x: ref.spmm(CSRGraph(indptr, indices, values), x),
    "spmm_transpose": lambda indptr, indices, values, g, n_cols: ref.spmm_transpose(
        CSRGraph(indptr, indices, values), g, n_cols),
    "sddmm": ref.sddmm,
    "gcn_norm": lambda indptr, indices, values, add_self_loops: tuple(
        ref.gcn_norm(CSRGraph(indptr, indices, values), add_self_loops)),
}


def dense_formula(op, *args):
    """The op's result from dense float64 matrices."""
    if op == "spmm":
        indptr, indices, values, x = args
        return dense(CSRGraph(indptr, indices, values), x.shape[0]) @ x.double()
    if op == "spmm_transpose":
        indptr, indices, values, g, n_cols = args
        return dense(CSRGraph(indptr, indices, values), n_cols).t() @ g.double()
    indptr, indices, a, b = args  # sddmm
    return (a.double() @ b.double().t())[ref.row_ids(indptr), indices]


# ------------------------------------------------------------------------------------------------
# Native vs reference (every sample, every device), gradients, opcheck


@needs_native
@pytest.mark.parametrize("op, sample", _cases(DIFFERENTIABLE))
def test_native_matches_reference(op, sample, device):
    args = sample.to(device)
    out = getattr(torch.ops.gcnprune, op)(*args)
    assert out.device == args[2].device
    out = out.cpu()
    expected = REFERENCE[op](*sample.args)
    assert out.shape == expected.shape and out.dtype == expected.dtype == sample.args[2].dtype
    tol = tolerances(out.dtype)
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(out.double(), dense_formula(op, *sample.args), **tol)
    if op == "spmm":  # the public wrapper runs the same kernel
        indptr, indices, values, x = args
        torch.testing.assert_close(spmm(CSRGraph(indptr, indices, values), x).cpu(), out,
                                   rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("op, sample", _cases(["gcn_norm"]))
def test_native_gcn_norm_matches_reference(op, sample, device):
    args = sample.to(device)
    out = CSRGraph(*torch.ops.gcnprune.gcn_norm(*args))
    assert all(t.device == args[2].device for t in out)
    out = out.to("cpu")
    expected = CSRGraph(*REFERENCE[op](*sample.args))
    assert torch.equal(out.indptr, expected.indptr) and torch.equal(out.indices, expected.indices)
    dtype = sample.args[2].dtype
    assert out.indptr.dtype == out.indices.dtype == torch.int64 and out.values.dtype == dtype
    assert torch.isfinite(out.values).all()
    torch.testing.assert_close(out.values, expected.values, **tolerances(dtype))
    indptr, indices, values, add_self_loops = sample.args
    torch.testing.assert_close(
        out.to_dense().double(), dense_gcn_norm(CSRGraph(indptr, indices, values), add_self_loops),
        **tolerances(dtype))
    # the public wrapper runs the same kernel
    public = gcn_norm(CSRGraph(*args[:3]), add_self_loops).to("cpu")
    assert torch.equal(public.indices, out.indices)
    torch.testing.assert_close(public.values, out.values, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("op, sample", _cases(DIFFERENTIABLE))
def test_native_gradients_match_reference(op, sample, device):
    args = sample.to(device, requires_grad=True)
    out = getattr(torch.ops.gcnprune, op)(*args)
    grad = randn(*out.shape, seed=7, dtype=out.dtype)
    out.backward(grad.to(device))
    ref_args = sample.to("cpu", requires_grad=True)
    REFERENCE[op](*ref_args).backward(grad)
    for a, r in zip(args, ref_args):
        if isinstance(r, torch.Tensor) and r.requires_grad:
            torch.testing.assert_close(a.grad.cpu(), r.grad, **tolerances(r.dtype))


@pytest.mark.parametrize("impl", [pytest.param("native", marks=needs_native), "reference"])
@pytest.mark.parametrize("op, sample", _cases(DIFFERENTIABLE, _grad))
def test_gradcheck(op, sample, impl, device):
    fn = getattr(torch.ops.gcnprune, op) if impl == "native" else REFERENCE[op]
    args = sample.to(device, requires_grad=True)
    assert torch.autograd.gradcheck(fn, args)
    if impl == "native":
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("impl", [pytest.param("native", marks=needs_native), "reference"])
@pytest.mark.parametrize("sample", [s for s in SAMPLES["spmm"] if _grad(s)],
                         ids=lambda s: s.name)
def test_public_spmm_gradcheck(sample, impl, device, monkeypatch):
    if impl == "reference":
        with_reference(monkeypatch)
    indptr, indices, values, x = sample.to(device, requires_grad=True)

    def fn(values, x):
        return spmm(CSRGraph(indptr, indices, values), x)

    assert torch.autograd.gradcheck(fn, (values, x))


@pytest.mark.parametrize("sample", [s for s in SAMPLES["gcn_norm"] if _grad(s)],
                         ids=lambda s: s.name)
def test_gcn_norm_gradcheck_in_values(sample, device):
    indptr, indices, values, add_self_loops = sample.to(device, requires_grad=True)

    def fn(values):
        return gcn_norm(CSRGraph(indptr, indices, values), add_self_loops).values

    assert torch.autograd.gradcheck(fn, (values,))


# gcn_norm has no autograd formula (the public gcn_norm differentiates through the reference).
def _opcheck_grad_variants(op, s):
    """requires_grad settings opcheck runs a sample with: inputs requiring grad only where the op
    has an autograd formula and in float32 / float64; the gradient samples only that way."""
    if op not in DIFFERENTIABLE or s.args[2].dtype not in (torch.float32, torch.float64):
        return (False,)
    return (True,) if s.meta.get("grad") else (False, True)


OPCHECK_CASES = [
    pytest.param(op, s, requires_grad,
                 id=f"{op}-{s.name}{'-requires_grad' if requires_grad else ''}")
    for op in SAMPLES for s in SAMPLES[op] if not s.meta.get("sweep")
    for requires_grad in _opcheck_grad_variants(op, s)]


@needs_native
@pytest.mark.parametrize("op, sample, requires_grad", OPCHECK_CASES)
def test_opcheck(op, sample, requires_grad, device):
    torch.library.opcheck(getattr(torch.ops.gcnprune, op).default,
                          sample.to(device, requires_grad=requires_grad))


@needs_native
def test_native_build_registers_every_op_for_its_devices():
    """Every torch.ops.gcnprune op has a CPU kernel, and a CUDA kernel when the library was
    built with CUDA (checked without a GPU: a build that forgot to register one fails here)."""
    names = gcnprune_op_names()
    assert {f"gcnprune::{op}" for op in SAMPLES} <= set(names)
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert [n for n in names if not has(n, "CPU")] == []
    if not native_cuda_built():
        pytest.skip("native library built without CUDA kernels (GCNPRUNE_CUDA=0 or no toolkit)")
    assert [n for n in names if not has(n, "CUDA")] == []


# ------------------------------------------------------------------------------------------------
# spmm: public wrapper


@needs_native
def test_spmm_promotes_mixed_dtypes():
    g = random_csr(5, 4, dtype=torch.float32)
    x = torch.randn(4, 3, dtype=torch.float16)
    out = spmm(g, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dense(g, 4, torch.float32) @ x.float())


def test_spmm_reference_matches_dense():
    g = random_csr(9, 6, dtype=torch.float64, seed=1)
    x = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(ref.spmm(g, x), dense(g, 6) @ x)


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False])
def test_spmm_degenerate_shapes(native, monkeypatch):
    if not native:
        with_reference(monkeypatch)
    assert spmm(_no_edges(0), torch.randn(5, 3)).shape == (0, 3)  # R = 0
    no_edges = _no_edges(3)
    assert torch.equal(spmm(no_edges, torch.randn(2, 3)), torch.zeros(3, 3))  # nnz = 0
    assert torch.equal(spmm(no_edges, torch.randn(0, 3)), torch.zeros(3, 3))  # Ncol = 0
    g = random_csr(4, 4)
    assert spmm(g, torch.randn(4, 0)).shape == (4, 0)  # d = 0


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


# ------------------------------------------------------------------------------------------------
# gcn_norm: public wrapper


def dense_gcn_norm(graph, add_self_loops=True):
    n = graph.num_rows
    a = dense(graph, n)
    if add_self_loops:
        a = a + torch.eye(n, dtype=a.dtype)
    deg = a.sum(1)
    s = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    return s[:, None] * a * s[None, :]


@pytest.mark.parametrize("impl", [pytest.param("native", marks=needs_native), "reference"])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gcn_norm_matches_dense_formula(impl, add_self_loops):
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


@pytest.mark.parametrize("impl", [pytest.param("native", marks=needs_native), "reference"])
def test_gcn_norm_zero_degree_rows_are_finite(impl):
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


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_native), False])
def test_argument_errors(native, monkeypatch):
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
