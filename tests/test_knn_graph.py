"""cosine_similarity and knn_graph: native kernels vs the plain-PyTorch reference, graph properties,
degenerate inputs, tiling, errors, opcheck.

Native and reference compute similarities with different rounding (tiled GEMMs vs one GEMM), so
near-ties may pick different neighbours. Exact comparisons therefore use float64 or small random
inputs where ties are far apart; everything else is checked through properties that hold under
either rounding.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (DTYPES, SampleInput, dtype_name, needs_cuda_device, needs_native, randn,
                      sample_ids)
from gcnprune_fast.ops import CSRGraph, cosine_similarity, knn_graph
from gcnprune_fast.ops.reference import graph as ref

TILE = "GCNPRUNE_KNN_TILE"


# The machine is shared: one intra-op thread (conftest.one_thread) keeps tests cheap.
pytestmark = pytest.mark.usefixtures("one_thread")


def _bounds(c, segments):
    if segments is None:
        return [(0, c)]
    o = segments.tolist()
    return list(zip(o[:-1], o[1:]))


def assert_graph_properties(g: CSRGraph, f, k, segments=None, center=False, tol=1e-5):
    """Everything the spec promises that does not depend on rounding of near-ties."""
    c = f.shape[0]
    assert g.indptr.dtype == torch.int64 and g.indices.dtype == torch.int64
    assert g.values.dtype == ref.compute_dtype(f.dtype)
    assert g.indptr.shape == (c + 1,) and int(g.indptr[0]) == 0
    assert int(g.indptr[-1]) == g.indices.numel() == g.values.numel()
    assert bool((g.indptr.diff() >= 0).all())
    sim = ref.cosine_similarity(f.double(), center)
    # Rounding error grows with a row's conditioning, |f_i| / |f_i - mean| under centering: a
    # near-constant row (0.01-noise on integers) loses most of its bits to the cancellation in
    # float32. Each edge's tolerance widens by that factor for its two rows (negligible in
    # float64). Rows that are exactly zero after centering (zero or constant rows) are handled
    # exactly by the spec and keep the plain tolerance.
    fd = f.double()
    centered_norm = (fd - fd.mean(1, keepdim=True) if center and fd.shape[1] else fd).norm(dim=1)
    cond = torch.where(centered_norm == 0, torch.zeros_like(centered_norm),
                       fd.norm(dim=1) / centered_norm)
    slack = 8 * torch.finfo(ref.compute_dtype(f.dtype)).eps * cond
    dense = torch.zeros(c, c, dtype=torch.bool)
    for lo, hi in _bounds(c, segments):
        n = hi - lo
        for i in range(lo, hi):
            cols = g.indices[g.indptr[i]:g.indptr[i + 1]]
            vals = g.values[g.indptr[i]:g.indptr[i + 1]].double()
            if cols.numel():
                assert bool((cols.diff() > 0).all()), f"row {i}: indices not strictly sorted"
                inside = bool((cols >= lo).all() and (cols < hi).all())
                assert inside, f"row {i}: edge leaves segment"
                assert not bool((cols == i).any()), f"row {i}: self loop"
                err = (vals - sim[i, cols].clamp_min(0)).abs()
                assert bool((err <= tol + slack[i] + slack[cols]).all()), \
                    f"row {i}: weights {vals.tolist()} vs cosine {sim[i, cols].tolist()}"
            dense[i, cols] = True
            want = min(k, n - 1)
            assert cols.numel() >= want, f"row {i}: {cols.numel()} neighbours < {want}"
            if want > 0:
                # At least `want` neighbours are as similar as the row's want-th best candidate.
                others = torch.cat([sim[i, lo:i], sim[i, i + 1:hi]])
                kth = torch.topk(others, want).values[-1]
                row_tol = tol + slack[i] + slack[lo:hi].max()
                assert int((sim[i, cols] >= kth - row_tol).sum()) >= want, \
                    f"row {i}: not top-{want}"
    assert torch.equal(dense, dense.T), "graph is not symmetric"
    a = g.to_dense()
    assert torch.equal(a, a.T), "edge weights are not symmetric"


# --- sample inputs ----------------------------------------------------------------------------

def sample_inputs_cosine_similarity():
    """(f, center) for the native-vs-reference, device and opcheck tests: every dtype with a zero
    row and a constant row (zero after centering) over several tiles, a larger input at a tiny and
    a huge tile, and C = 0, C = 1, B = 0, B = 1, all-zero inputs. ``meta["sweep"]``: see
    sample_inputs_knn_graph."""
    for dtype in DTYPES:
        f = (randn(53, 7, seed=0) + 0.3).to(dtype)
        f[5] = 0  # zero row
        f[9] = 2.5  # constant row (zero after centering)
        for center in (False, True):
            yield SampleInput(f"53x7-{dtype_name(dtype)}-center={center}", (f, center),
                              env={TILE: "16"})
    for dtype in (torch.float32, torch.float64, torch.float16):
        f = randn(300, 16, seed=4, dtype=dtype)
        for tile in ("7", "4096"):
            yield SampleInput(f"300x16-{dtype_name(dtype)}-tile{tile}", (f, False),
                              env={TILE: tile}, meta={"sweep": (dtype, tile) != (torch.float32, "7")})
    for name, f in [("C0", randn(0, 3)), ("C1", randn(1, 3)), ("B0", randn(4, 0)),
                    ("B1", randn(4, 1)), ("zeros", torch.zeros(5, 4)), ("9x4", randn(9, 4))]:
        for center in (False, True):
            yield SampleInput(f"{name}-center={center}", (f, center),
                              meta={"sweep": center and name != "9x4"})


def sample_inputs_knn_graph():
    """(f, k, segments, center) for the native-vs-reference, device and opcheck tests.
    ``meta["exact"]``: where native and reference must build the very same graph ("all": every
    device, "cpu": the CPU kernels; elsewhere near-ties may round differently, and only the graph
    properties are checked). ``meta["sweep"]``: one more k / dtype / tile of a case already
    sampled -- the numerical tests run it, opcheck (schema, fake kernel, not numerics) does not."""
    seg = torch.tensor([0, 3, 3, 4, 25, 40])  # sizes 3, 0, 1, 21, 15
    for dtype in DTYPES:
        f = randn(40, 9, seed=1, dtype=dtype)
        exact = "all" if dtype == torch.float64 else "cpu"
        for center in (False, True):
            for k in (0, 1, 4, 30):
                sweep = k != 4 and not (dtype == torch.float32 and not center)
                yield SampleInput(f"40x9-{dtype_name(dtype)}-k{k}-center={center}",
                                  (f, k, seg, center), env={TILE: "8"},
                                  meta={"exact": exact, "sweep": sweep})
    seg = torch.tensor([0, 1, 1, 120, 300])
    for dtype in (torch.float32, torch.float64, torch.float16):
        f = randn(300, 16, seed=4, dtype=dtype)
        exact = "all" if dtype == torch.float64 else None
        for tile in ("7", "4096"):
            for k in (0, 3, 8, 200):
                sweep = (dtype, tile, k) != (torch.float32, "7", 8)
                yield SampleInput(f"300x16-{dtype_name(dtype)}-k{k}-tile{tile}-center",
                                  (f, k, seg, True), env={TILE: tile},
                                  meta={"exact": exact, "sweep": sweep})
    f = randn(12, 4, seed=5, dtype=torch.float64)
    yield SampleInput("12x4-float64-k3-segments", (f, 3, torch.tensor([0, 5, 5, 12]), False),
                      meta={"exact": "all"})
    yield SampleInput("12x4-float32-k20-center", (f.float(), 20, None, True),
                      meta={"exact": "cpu"})
    yield SampleInput("12x4-float32-k3", (f.float(), 3, None, False), meta={"exact": "cpu"})
    # C = 1, k = 0, C = 0, k >= C - 1 (complete graph), B = 1 (similarities +-1, ties), B = 0
    # and all-zero rows (similarity 0 everywhere: ties broken to the lowest indices).
    for name, f, k, exact in [("C1", randn(1, 3), 4, "all"), ("k0", randn(5, 3), 0, "all"),
                              ("C0", randn(0, 3), 2, "all"), ("complete", randn(6, 3), 10, "all"),
                              ("B1", randn(4, 1), 1, "cpu"), ("B0", randn(4, 0), 2, "all")]:
        yield SampleInput(f"degenerate-{name}", (f, k, None, False), meta={"exact": exact})
    for dtype in (torch.float32, torch.float64, torch.float16):
        yield SampleInput(f"zeros-{dtype_name(dtype)}", (torch.zeros(6, 3, dtype=dtype), 2, None,
                                                         False),
                          meta={"exact": "all", "sweep": dtype != torch.float32})


COSINE_SAMPLES = list(sample_inputs_cosine_similarity())
KNN_SAMPLES = list(sample_inputs_knn_graph())
COSINE_OPCHECK = [s for s in COSINE_SAMPLES if not s.meta.get("sweep")]
KNN_OPCHECK = [s for s in KNN_SAMPLES if not s.meta.get("sweep")]

# (No gradient tests: neither op is differentiable; the native ops register no autograd kernel.)


# --- native vs reference, on every device ------------------------------------------------------

@needs_native
@pytest.mark.parametrize("sample", COSINE_SAMPLES, ids=sample_ids(COSINE_SAMPLES))
def test_cosine_similarity_matches_reference(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    f, center = sample.to(device)
    out = torch.ops.gcnprune.cosine_similarity(f, center)
    assert out.device == f.device
    out = out.cpu()
    want = ref.cosine_similarity(*sample.args)
    assert out.dtype == want.dtype == ref.compute_dtype(f.dtype)
    torch.testing.assert_close(out, want)
    assert torch.equal(out, out.T)
    # rows of zero norm (after centering) are similar to nothing, themselves included
    g = sample.args[0].double()
    if center and g.numel():
        g = g - g.mean(1, keepdim=True)
    assert bool((out[g.norm(dim=1) == 0] == 0).all())


@needs_native
@pytest.mark.parametrize("sample", KNN_SAMPLES, ids=sample_ids(KNN_SAMPLES))
def test_knn_graph_matches_reference(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    got = CSRGraph(*torch.ops.gcnprune.knn_graph(*sample.to(device)))
    assert all(t.device.type == device for t in got)
    got = got.to("cpu")
    f, k, segments, center = sample.args
    assert_graph_properties(got, f, k, segments, center)
    exact = sample.meta.get("exact")
    if exact == "all" or (exact == "cpu" and device == "cpu"):
        want = ref.knn_graph(f, k, segments, center)
        assert torch.equal(got.indptr, want.indptr)
        assert torch.equal(got.indices, want.indices)
        torch.testing.assert_close(got.values, want.values)


@needs_native
@pytest.mark.parametrize("sample", COSINE_OPCHECK, ids=sample_ids(COSINE_OPCHECK))
def test_opcheck_cosine_similarity(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    torch.library.opcheck(torch.ops.gcnprune.cosine_similarity.default, sample.to(device))


@needs_native
@pytest.mark.parametrize("sample", KNN_OPCHECK, ids=sample_ids(KNN_OPCHECK))
def test_opcheck_knn_graph(sample, device, monkeypatch):
    # All default checks, test_aot_dispatch_dynamic included: the fake kernel gives nnz as an
    # unbacked size (it depends on ties and on the union of i->j and j->i).
    sample.apply_env(monkeypatch)
    torch.library.opcheck(torch.ops.gcnprune.knn_graph.default, sample.to(device))


def test_cosine_similarity_values():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    s = cosine_similarity(f)
    r = 2 ** -0.5
    want = torch.tensor([[1, 0, r, 0], [0, 1, r, 0], [r, r, 1, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(s, want)
    torch.testing.assert_close(ref.cosine_similarity(f), want)
    # center: rows [1, 2, 3] and [3, 2, 1] are perfectly anti-correlated
    g = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    want_g = torch.tensor([[1.0, -1], [-1, 1]])
    torch.testing.assert_close(cosine_similarity(g, center=True), want_g)


def test_cosine_similarity_huge_values_do_not_overflow():
    f = torch.tensor([[3e30, 4e30], [4e30, 3e30]])
    torch.testing.assert_close(cosine_similarity(f), torch.tensor([[1.0, 0.96], [0.96, 1.0]]))


# --- knn_graph: exact agreement where ties are impossible --------------------------------------

@needs_native
def test_knn_graph_large_c_many_tiles(monkeypatch):
    """C = 3000 with tiles of 256 (12 x 12 tile grid, ragged last tile): float64 makes rounding
    differences (1e-16) far smaller than the gaps between neighbours, so the graphs match
    exactly."""
    monkeypatch.setenv("GCNPRUNE_KNN_TILE", "256")
    torch.manual_seed(0)
    f = torch.randn(3000, 24, dtype=torch.float64)
    got = knn_graph(f, 8)
    want = ref.knn_graph(f, 8)
    assert torch.equal(got.indptr, want.indptr)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.values, want.values)
    # float32: rounding may flip a rare near-tie; the graphs still agree almost everywhere.
    got32, want32 = knn_graph(f.float(), 8), ref.knn_graph(f.float(), 8)
    a, b = got32.to_dense() > 0, want32.to_dense() > 0
    assert (a != b).sum().item() <= 0.001 * a.sum().item()


@needs_native
@pytest.mark.parametrize("tile", ["1", "3", "64"])
def test_knn_graph_independent_of_tile_size(tile, monkeypatch):
    torch.manual_seed(2)
    f = torch.randn(70, 5, dtype=torch.float64)
    monkeypatch.setenv("GCNPRUNE_KNN_TILE", tile)
    got = knn_graph(f, 5)
    monkeypatch.delenv("GCNPRUNE_KNN_TILE")
    want = knn_graph(f, 5)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.indptr, want.indptr)
    torch.testing.assert_close(got.values, want.values)  # GEMM shapes change the rounding


def test_knn_graph_small_example():
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    g = knn_graph(f, 1)
    # picks: 0->1, 1->0, 2->1 (0.11 beats 0), 3->2 (0 beats -0.994 and -1); then the union
    assert g.indptr.tolist() == [0, 1, 3, 5, 6]
    assert g.indices.tolist() == [1, 0, 2, 1, 3, 2]
    s01 = 0.9 / (0.81 + 0.01) ** 0.5
    s12 = 0.1 / (0.81 + 0.01) ** 0.5
    torch.testing.assert_close(g.values, torch.tensor([s01, s01, s12, s12, 0.0, 0.0]))


def test_knn_graph_block_diagonal_equals_separate_graphs():
    torch.manual_seed(3)
    f = torch.randn(30, 4, dtype=torch.float64)
    seg = torch.tensor([0, 12, 12, 30])
    g = knn_graph(f, 3, seg).to_dense()
    a = knn_graph(f[:12], 3).to_dense()
    b = knn_graph(f[12:], 3).to_dense()
    assert torch.equal(g, torch.block_diag(a, b))


# --- degenerate inputs ------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["public", "reference"])
def test_knn_graph_degenerate_cases(impl):
    fn = knn_graph if impl == "public" else ref.knn_graph
    empty = fn(torch.randn(1, 3), 4)  # C = 1
    assert empty.indptr.tolist() == [0, 0] and empty.nnz == 0
    assert fn(torch.randn(5, 3), 0).nnz == 0  # k = 0
    assert fn(torch.randn(0, 3), 2).indptr.tolist() == [0]  # C = 0
    full = fn(torch.randn(6, 3), 10)  # k >= C - 1: complete graph
    assert full.indptr.tolist() == [0, 5, 10, 15, 20, 25, 30]
    one = fn(torch.randn(4, 1), 1)  # B = 1: similarities are +-1
    assert set(one.values.tolist()) <= {0.0, 1.0}
    nob = fn(torch.randn(4, 0), 2)  # B = 0: all rows zero norm -> lowest indices, weight 0
    assert nob.values.abs().sum() == 0 and nob.indptr[-1] > 0


@pytest.mark.parametrize("impl", ["public", "reference"])
def test_knn_graph_zero_rows_tie_break_to_lower_index(impl):
    fn = knn_graph if impl == "public" else ref.knn_graph
    f = torch.randn(8, 3, dtype=torch.float64)
    f[5] = 0
    g = fn(f, 2)
    row5 = g.indices[g.indptr[5]:g.indptr[6]].tolist()
    assert {0, 1} <= set(row5)  # similarity 0 to everyone: the two lowest other indices
    assert g.values[g.indptr[5]:g.indptr[6]].abs().sum() == 0
    z = fn(torch.zeros(5, 4), 2)  # all rows zero: every row picks the two lowest other rows
    assert z.to_dense().ne(0).sum() == 0
    lowest_two = {0: [1, 2], 1: [0, 2]}
    picks = {(i, j) for i in range(5) for j in lowest_two.get(i, [0, 1])}
    edges = {(i, int(j)) for i in range(5) for j in z.indices[z.indptr[i]:z.indptr[i + 1]]}
    assert edges == picks | {(j, i) for i, j in picks}


def test_knn_graph_constant_rows_centered():
    f = torch.randn(6, 5)
    f[2] = 0.1  # constant row: zero after centering -> similarity 0 everywhere
    g = knn_graph(f, 5, center=True)
    assert g.values[g.indptr[2]:g.indptr[3]].abs().sum() == 0


# --- hypothesis properties --------------------------------------------------------------------

@st.composite
def knn_inputs(draw):
    sizes = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4))
    c = sum(sizes)
    b = draw(st.integers(1, 5))
    k = draw(st.integers(0, 10))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    # Small integers make exact duplicates, opposite rows and exact ties likely.
    f = torch.randint(-2, 3, (c, b), generator=gen).to(dtype)
    if draw(st.booleans()):
        f = f + 0.01 * torch.randn(c, b, generator=gen, dtype=dtype)
    offs = torch.tensor([0] + sizes).cumsum(0)
    segments = draw(st.sampled_from([None, offs])) if len(sizes) == 1 else offs
    center = draw(st.booleans())
    tile = draw(st.sampled_from(["1", "4", "512"]))
    return f, k, segments, center, tile


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(knn_inputs())
def test_knn_graph_properties(args):
    f, k, segments, center, tile = args
    import os
    old = os.environ.get("GCNPRUNE_KNN_TILE")
    os.environ["GCNPRUNE_KNN_TILE"] = tile
    try:
        g = knn_graph(f, k, segments, center)
    finally:
        if old is None:
            del os.environ["GCNPRUNE_KNN_TILE"]
        else:
            os.environ["GCNPRUNE_KNN_TILE"] = old
    assert_graph_properties(g, f, k, segments, center)
    assert_graph_properties(ref.knn_graph(f, k, segments, center), f, k, segments, center)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["public", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("f, exc, match", [
    (torch.randn(3), ValueError, "f:"),
    (torch.randn(2, 3, 4), ValueError, "f:"),
    (torch.ones(3, 2, dtype=torch.int64), TypeError, "f:"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, "f:"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError, "f:"),
])
def test_bad_features(impl, f, exc, match):
    knn = knn_graph if impl == "public" else torch.ops.gcnprune.knn_graph
    cos = cosine_similarity if impl == "public" else torch.ops.gcnprune.cosine_similarity
    with pytest.raises(exc, match=match):
        knn(f, 2)
    with pytest.raises(exc, match=match):
        cos(f)


def test_reference_rejects_non_finite():
    with pytest.raises(ValueError, match="f:"):
        ref.knn_graph(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)


@pytest.mark.parametrize("impl", ["public", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("segments, exc, match", [
    (torch.tensor([0, 2, 4], dtype=torch.int32), TypeError, "segments"),
    (torch.tensor([[0, 4]]), ValueError, "segments"),
    (torch.tensor([1, 4]), ValueError, "start at 0"),
    (torch.tensor([0, 3, 2, 4]), ValueError, "non-decreasing"),
    (torch.tensor([0, 3]), ValueError, "end at C"),
    (torch.tensor([0, 5]), ValueError, "end at C"),
])
def test_bad_segments(impl, segments, exc, match):
    fn = knn_graph if impl == "public" else torch.ops.gcnprune.knn_graph
    with pytest.raises(exc, match=match):
        fn(torch.randn(4, 3), 2, segments)


def test_bad_k_and_center():
    f = torch.randn(4, 3)
    with pytest.raises(ValueError, match="k:"):
        knn_graph(f, -1)
    with pytest.raises(TypeError, match="k:"):
        knn_graph(f, 2.0)
    with pytest.raises(TypeError, match="center"):
        knn_graph(f, 2, center=1)
    with pytest.raises(TypeError, match="f:"):
        knn_graph(f.numpy(), 2)


@needs_native
def test_native_bad_k():
    with pytest.raises(ValueError, match="k:"):
        torch.ops.gcnprune.knn_graph(torch.randn(4, 3), -1)


@needs_cuda_device
def test_segments_device_mismatch():
    with pytest.raises(ValueError, match="segments"):
        knn_graph(torch.randn(4, 3, device="cuda"), 2, torch.tensor([0, 4]))


@needs_native
def test_native_under_inference_mode_and_threads(monkeypatch):
    """The CPU kernels run GEMMs on worker threads; inference mode must reach them."""
    monkeypatch.setenv("GCNPRUNE_KNN_TILE", "16")
    torch.set_num_threads(2)
    f = torch.randn(100, 6, dtype=torch.float64)
    want = ref.knn_graph(f, 4)
    with torch.inference_mode():
        got = knn_graph(f, 4)
        cos = cosine_similarity(f)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(cos, ref.cosine_similarity(f))


def test_differentiable_inputs_get_gradients():
    # The native kernels have no backward; inputs that require grad take the reference path, so
    # gradients are real (not None) whichever path is active.
    f = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    cosine_similarity(f, center=True).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    f.grad = None
    knn_graph(f, 3).values.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    with torch.no_grad():  # no grad mode: the native path, no graph
        assert not cosine_similarity(f).requires_grad
