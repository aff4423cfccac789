"""kl_similarity and knn_graph(similarity="kl"): native kernels vs the plain-PyTorch reference,
a float64 oracle written from the definition, properties, degenerate inputs, tiling, errors,
opcheck, the GCNPRUNE_NATIVE=0 fallback.

Definition (gcnprune_fast/ops/reference/graph.py): z_i = zscore(f_i) over the B samples (0 for a
constant row), p_i = softmax(z_i), sim(i, j) = exp(-(KL(p_i||p_j) + KL(p_j||p_i)) / 2).
As in test_knn_graph.py, exact graph comparisons use float64 or inputs whose near-ties are far
apart; everything else is checked through properties that hold under either rounding.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (DTYPES, SampleInput, dtype_name, needs_native, randn, sample_ids,
                      tolerances)
from gcnprune_fast.ops import CSRGraph, cosine_similarity, kl_similarity, knn_graph
from gcnprune_fast.ops.reference import graph as ref

TILE = "GCNPRUNE_KNN_TILE"

# The machine is shared: one intra-op thread (conftest.one_thread) keeps tests cheap.
pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(f: torch.Tensor) -> torch.Tensor:
    """float64 KL similarity straight from the definition: z-score, log-softmax, the two KL
    divergences summed over the samples (no GEMM identity), exp(-d)."""
    x = f.double()
    c, b = x.shape
    if b == 0:
        return torch.ones(c, c, dtype=torch.float64)
    mu = x.mean(1, keepdim=True)
    sd = (x - mu).square().mean(1, keepdim=True).sqrt()
    const = (x.amax(1) == x.amin(1)).unsqueeze(1)
    z = ((x - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))).masked_fill(const, 0.0)
    lp = torch.log_softmax(z, 1)
    p = lp.exp()
    kl = (p[:, None, :] * (lp[:, None, :] - lp[None, :, :])).sum(-1)  # KL(p_i || p_j)
    return torch.exp(-0.5 * (kl + kl.T).clamp_min(0))


def _bounds(c, segments):
    if segments is None:
        return [(0, c)]
    o = segments.tolist()
    return list(zip(o[:-1], o[1:]))


def assert_kl_graph_properties(g: CSRGraph, f, k, segments=None, tol=1e-5):
    """Everything the knn_graph contract promises that does not depend on rounding of near-ties,
    with the similarity from the float64 oracle."""
    c = f.shape[0]
    assert g.indptr.dtype == torch.int64 and g.indices.dtype == torch.int64
    assert g.values.dtype == ref.compute_dtype(f.dtype)
    assert g.indptr.shape == (c + 1,) and int(g.indptr[0]) == 0
    assert int(g.indptr[-1]) == g.indices.numel() == g.values.numel()
    assert bool((g.indptr.diff() >= 0).all())
    assert bool((g.values >= 0).all() and (g.values <= 1).all()), "weights outside [0, 1]"
    sim = oracle(f)
    dense = torch.zeros(c, c, dtype=torch.bool)
    for lo, hi in _bounds(c, segments):
        n = hi - lo
        for i in range(lo, hi):
            cols = g.indices[g.indptr[i]:g.indptr[i + 1]]
            vals = g.values[g.indptr[i]:g.indptr[i + 1]].double()
            if cols.numel():
                assert bool((cols.diff() > 0).all()), f"row {i}: indices not strictly sorted"
                assert bool((cols >= lo).all() and (cols < hi).all()), f"row {i}: leaves segment"
                assert not bool((cols == i).any()), f"row {i}: self loop"
                torch.testing.assert_close(vals, sim[i, cols], atol=tol, rtol=tol)
            dense[i, cols] = True
            want = min(k, n - 1)
            assert cols.numel() >= want, f"row {i}: {cols.numel()} neighbours < {want}"
            if want > 0:
                others = torch.cat([sim[i, lo:i], sim[i, i + 1:hi]])
                kth = torch.topk(others, want).values[-1]
                assert int((sim[i, cols] >= kth - tol).sum()) >= want, f"row {i}: not top-{want}"
    assert torch.equal(dense, dense.T), "graph is not symmetric"
    a = g.to_dense()
    assert torch.equal(a, a.T), "edge weights are not symmetric"


# --- sample inputs ----------------------------------------------------------------------------

def _with_special_rows(f: torch.Tensor) -> torch.Tensor:
    f = f.clone()
    f[5] = 0  # zero row: uniform distribution
    f[9] = 2.5  # constant row: uniform distribution too (similarity 1 to row 5)
    f[11] = 3 * f[2] + 1  # affine copy of row 2: similarity 1 up to rounding
    return f


def sample_inputs_kl_similarity():
    """(f,) for the native-vs-reference, device and opcheck tests: every dtype with zero,
    constant and affinely duplicated rows over several tiles, a larger input at a tiny and a huge
    tile, huge magnitudes, one-hot rows (large z), a wide input whose softmax underflows, and
    C = 0, C = 1, B = 0, B = 1, all zeros. ``meta["sweep"]``: one more dtype / tile of a case
    already sampled -- the numerical tests run it, opcheck does not."""
    for dtype in DTYPES:
        f = _with_special_rows(randn(53, 7, seed=0) + 0.3).to(dtype)
        yield SampleInput(f"53x7-{dtype_name(dtype)}", (f,), env={TILE: "16"},
                          meta={"sweep": dtype not in (torch.float32, torch.bfloat16)})
    for dtype in (torch.float32, torch.float64, torch.float16):
        f = randn(300, 16, seed=4, dtype=dtype)
        for tile in ("7", "4096"):
            yield SampleInput(f"300x16-{dtype_name(dtype)}-tile{tile}", (f,), env={TILE: tile},
                              meta={"sweep": (dtype, tile) != (torch.float32, "7")})
    huge = torch.tensor([[3e38, -3e38, 1e30, 0.0], [1e-30, 2e-30, 0.0, 5e-31],
                         [-2e38, 1e38, 1e38, 3e38]])
    onehot = torch.eye(6, 64, dtype=torch.float64)
    spike = torch.zeros(5, 8000, dtype=torch.float64)
    spike[torch.arange(5), torch.tensor([0, 1, 1, 4000, 7999])] = 1.0  # z up to sqrt(B - 1)
    spike[4] += randn(8000, seed=7, dtype=torch.float64) * 1e-3
    for name, f in [("C0", randn(0, 3)), ("C1", randn(1, 3)), ("B0", randn(4, 0)),
                    ("B1", randn(4, 1)), ("zeros", torch.zeros(5, 4)), ("9x4", randn(9, 4)),
                    ("huge", huge), ("onehot-float64", onehot), ("spike-float32", spike.float()),
                    ("spike-float64", spike)]:
        yield SampleInput(name, (f,), meta={"sweep": name in ("9x4", "spike-float64")})


def sample_inputs_knn_graph_kl():
    """(f, k, segments, center, "kl") for the native-vs-reference, device and opcheck tests.
    ``meta["exact"]``: where native and reference must build the very same graph ("all": every
    device, "cpu": the CPU kernels; elsewhere only the graph properties are checked).
    ``meta["sweep"]``: as in sample_inputs_kl_similarity."""
    seg = torch.tensor([0, 3, 3, 4, 25, 40])  # sizes 3, 0, 1, 21, 15
    for dtype in DTYPES:
        f = randn(40, 9, seed=1, dtype=dtype)
        exact = "all" if dtype == torch.float64 else "cpu"
        for k in (0, 1, 4, 30):
            center = k == 1  # no effect with "kl"
            sweep = k != 4 and dtype != torch.float32
            yield SampleInput(f"40x9-{dtype_name(dtype)}-k{k}", (f, k, seg, center, "kl"),
                              env={TILE: "8"}, meta={"exact": exact, "sweep": sweep})
    seg = torch.tensor([0, 1, 1, 120, 300])
    for dtype in (torch.float32, torch.float64, torch.float16):
        f = randn(300, 16, seed=4, dtype=dtype)
        exact = "all" if dtype == torch.float64 else None
        for tile in ("7", "4096"):
            for k in (0, 3, 8, 200):
                sweep = (dtype, tile, k) != (torch.float32, "7", 8)
                yield SampleInput(f"300x16-{dtype_name(dtype)}-k{k}-tile{tile}",
                                  (f, k, seg, False, "kl"), env={TILE: tile},
                                  meta={"exact": exact, "sweep": sweep})
    f = _with_special_rows(randn(24, 6, seed=5, dtype=torch.float64))
    f[17] = -1.0  # three constant rows (5, 9, 17): similarity exactly 1 among them
    yield SampleInput("24x6-float64-constant-rows-k3", (f, 3, None, False, "kl"),
                      env={TILE: "5"}, meta={"exact": "all"})
    yield SampleInput("24x6-float32-constant-rows-k3", (f.float(), 3, None, True, "kl"),
                      meta={"exact": "cpu", "sweep": True})
    # C = 1, k = 0, C = 0, complete graph, B = 1 and B = 0 (every row constant: all
    # similarities 1, ties to the lowest indices), all-zero rows.
    for name, f, k in [("C1", randn(1, 3), 4), ("k0", randn(5, 3), 0), ("C0", randn(0, 3), 2),
                       ("complete", randn(6, 3), 10), ("B1", randn(4, 1), 1),
                       ("B0", randn(4, 0), 2), ("zeros", torch.zeros(6, 3), 2)]:
        yield SampleInput(f"degenerate-{name}", (f, k, None, False, "kl"),
                          meta={"exact": "all"})


KL_SAMPLES = list(sample_inputs_kl_similarity())
KNN_KL_SAMPLES = list(sample_inputs_knn_graph_kl())
KL_OPCHECK = [s for s in KL_SAMPLES if not s.meta.get("sweep")]
KNN_KL_OPCHECK = [s for s in KNN_KL_SAMPLES if not s.meta.get("sweep")]

# (No gradient tests of the native ops: they register no autograd kernel; inputs that require
# grad take the differentiable reference path, see test_differentiable_inputs_get_gradients.)


# --- native vs reference, on every device ------------------------------------------------------

@needs_native
@pytest.mark.parametrize("sample", KL_SAMPLES, ids=sample_ids(KL_SAMPLES))
def test_kl_similarity_matches_reference(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    (f,) = sample.to(device)
    out = torch.ops.gcnprune.kl_similarity(f)
    assert out.device == f.device
    out = out.cpu()
    want = ref.kl_similarity(*sample.args)
    assert out.dtype == want.dtype == ref.compute_dtype(f.dtype)
    torch.testing.assert_close(out, want, **tolerances(f.dtype, widened=True))
    assert torch.equal(out, out.T)
    assert bool((out.diagonal() == 1).all())
    assert bool((out >= 0).all() and (out <= 1).all())
    # the reference itself against the float64 oracle from the definition
    torch.testing.assert_close(want.double(), oracle(sample.args[0].to(want.dtype)),
                               **tolerances(want.dtype))


@needs_native
@pytest.mark.parametrize("sample", KNN_KL_SAMPLES, ids=sample_ids(KNN_KL_SAMPLES))
def test_knn_graph_kl_matches_reference(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    got = CSRGraph(*torch.ops.gcnprune.knn_graph(*sample.to(device)))
    assert all(t.device.type == device for t in got)
    got = got.to("cpu")
    f, k, segments, center, similarity = sample.args
    tol = 1e-5 if f.dtype in (torch.float32, torch.float64) else 1e-4
    assert_kl_graph_properties(got, f.to(ref.compute_dtype(f.dtype)), k, segments, tol=tol)
    exact = sample.meta.get("exact")
    if exact == "all" or (exact == "cpu" and device == "cpu"):
        want = ref.knn_graph(f, k, segments, center, similarity)
        assert torch.equal(got.indptr, want.indptr)
        assert torch.equal(got.indices, want.indices)
        torch.testing.assert_close(got.values, want.values)


@needs_native
@pytest.mark.parametrize("sample", KL_OPCHECK, ids=sample_ids(KL_OPCHECK))
def test_opcheck_kl_similarity(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    torch.library.opcheck(torch.ops.gcnprune.kl_similarity.default, sample.to(device))


@needs_native
@pytest.mark.parametrize("sample", KNN_KL_OPCHECK, ids=sample_ids(KNN_KL_OPCHECK))
def test_opcheck_knn_graph_kl(sample, device, monkeypatch):
    sample.apply_env(monkeypatch)
    torch.library.opcheck(torch.ops.gcnprune.knn_graph.default, sample.to(device))


# --- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["public", "reference"])
def test_kl_similarity_values(impl):
    fn = kl_similarity if impl == "public" else ref.kl_similarity
    f = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 7.0], [3.0, 3.0]], dtype=torch.float64)
    s = fn(f)
    # z = [-1, 1] vs [1, -1]: d = 2 tanh(1); an affine copy: d = 0; constant (uniform) vs
    # [-1, 1]: d = tanh(1) / 2.
    t = math.tanh(1.0)
    a, u = math.exp(-2 * t), math.exp(-t / 2)
    want = torch.tensor([[1, a, 1, u], [a, 1, a, u], [1, a, 1, u], [u, u, u, 1]],
                        dtype=torch.float64)
    torch.testing.assert_close(s, want)


def test_kl_similarity_huge_values_do_not_overflow():
    f = torch.tensor([[3e38, 1e38, -3e38], [3.0, 1.0, -3.0], [-3e38, -1e38, 3e38]])
    s = kl_similarity(f)
    assert bool(torch.isfinite(s).all())
    torch.testing.assert_close(s[0, 1], torch.tensor(1.0))  # same up to scale
    assert float(s[0, 2]) < 1


@pytest.mark.parametrize("impl", ["public", "reference"])
def test_kl_similarity_invariant_to_row_scale_and_offset(impl):
    fn = kl_similarity if impl == "public" else ref.kl_similarity
    f = torch.randn(20, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scale = torch.rand(20, 1, dtype=torch.float64) * 100 + 0.01
    offset = torch.randn(20, 1, dtype=torch.float64) * 50
    torch.testing.assert_close(fn(f * scale + offset), fn(f), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["public", "reference"])
def test_kl_similarity_degenerate(impl):
    fn = kl_similarity if impl == "public" else ref.kl_similarity
    assert fn(torch.randn(0, 4)).shape == (0, 0)
    assert fn(torch.randn(1, 4)).tolist() == [[1.0]]
    assert bool((fn(torch.randn(3, 0)) == 1).all())  # B = 0: all ones
    assert bool((fn(torch.randn(3, 1)) == 1).all())  # B = 1: every row constant
    assert bool((fn(torch.zeros(3, 5)) == 1).all())
    assert fn(torch.randn(4, 3, dtype=torch.float16)).dtype == torch.float32
    assert fn(torch.randn(4, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("impl", ["public", "reference"])
def test_knn_graph_kl_constant_rows_link_to_each_other(impl):
    fn = knn_graph if impl == "public" else ref.knn_graph
    f = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f[2], f[6] = 0.0, 4.0  # both uniform: similarity exactly 1
    g = fn(f, 1, None, False, "kl")
    for i, j in ((2, 6), (6, 2)):  # each one's pick (others may pick them too: the union)
        cols = g.indices[g.indptr[i]:g.indptr[i + 1]].tolist()
        assert j in cols
        assert float(g.values[g.indptr[i] + cols.index(j)]) == 1.0


def test_knn_graph_kl_center_has_no_effect():
    f = torch.randn(30, 8, generator=torch.Generator().manual_seed(3)) + 5
    a = knn_graph(f, 4, center=False, similarity="kl")
    b = knn_graph(f, 4, center=True, similarity="kl")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_knn_graph_kl_differs_from_cosine_but_default_is_cosine():
    f = torch.randn(40, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    f = f.exp()  # skewed, positive: the KL ranking differs from the cosine's
    default = knn_graph(f, 3, center=True)
    cos = knn_graph(f, 3, center=True, similarity="cosine")
    kl = knn_graph(f, 3, center=True, similarity="kl")
    assert all(torch.equal(x, y) for x, y in zip(default, cos))
    assert not torch.equal(kl.to_dense(), cos.to_dense())
    torch.testing.assert_close(kl.to_dense(), ref.knn_graph(f, 3, None, True, "kl").to_dense())


# --- tiling ------------------------------------------------------------------------------------

@needs_native
def test_knn_graph_kl_large_c_many_tiles(monkeypatch):
    """C = 1500 with tiles of 128 (a 12 x 12 tile grid, ragged last tile): in float64 the
    rounding differences are far below the gaps between neighbours, so the graphs match."""
    monkeypatch.setenv(TILE, "128")
    f = torch.randn(1500, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got, want = knn_graph(f, 8, similarity="kl"), ref.knn_graph(f, 8, similarity="kl")
    assert torch.equal(got.indptr, want.indptr)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.values, want.values)
    s = kl_similarity(f)
    torch.testing.assert_close(s, ref.kl_similarity(f))
    assert torch.equal(s, s.T)


@needs_native
@pytest.mark.parametrize("tile", ["1", "3", "64"])
def test_knn_graph_kl_independent_of_tile_size(tile, monkeypatch):
    f = torch.randn(70, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    monkeypatch.setenv(TILE, tile)
    got = knn_graph(f, 5, similarity="kl")
    got_sim = kl_similarity(f)
    monkeypatch.delenv(TILE)
    want = knn_graph(f, 5, similarity="kl")
    assert torch.equal(got.indices, want.indices) and torch.equal(got.indptr, want.indptr)
    torch.testing.assert_close(got.values, want.values)
    torch.testing.assert_close(got_sim, kl_similarity(f))


@needs_native
def test_native_kl_under_inference_mode_and_threads(monkeypatch):
    """The CPU kernels run GEMMs and exp on worker threads; inference mode must reach them."""
    monkeypatch.setenv(TILE, "16")
    torch.set_num_threads(2)
    f = torch.randn(100, 6, dtype=torch.float64)
    want = ref.knn_graph(f, 4, similarity="kl")
    with torch.inference_mode():
        got = knn_graph(f, 4, similarity="kl")
        sim = kl_similarity(f)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(sim, ref.kl_similarity(f))


# --- hypothesis properties --------------------------------------------------------------------

@st.composite
def kl_inputs(draw):
    sizes = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4))
    c = sum(sizes)
    b = draw(st.integers(0, 6))
    k = draw(st.integers(0, 10))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    # Small integers make constant rows, exact and affine duplicates and exact ties likely.
    f = torch.randint(-2, 3, (c, b), generator=gen).to(dtype)
    if draw(st.booleans()):
        f = f + 0.01 * torch.randn(c, b, generator=gen, dtype=dtype)
    if draw(st.booleans()):
        f = f * 10.0 ** draw(st.integers(-20, 20))
    offs = torch.tensor([0] + sizes).cumsum(0)
    segments = draw(st.sampled_from([None, offs])) if len(sizes) == 1 else offs
    tile = draw(st.sampled_from(["1", "4", "512"]))
    return f, k, segments, tile


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kl_inputs())
def test_kl_properties(args):
    f, k, segments, tile = args
    old = os.environ.get(TILE)
    os.environ[TILE] = tile
    try:
        g = knn_graph(f, k, segments, similarity="kl")
        s = kl_similarity(f)
    finally:
        if old is None:
            del os.environ[TILE]
        else:
            os.environ[TILE] = old
    assert_kl_graph_properties(g, f, k, segments)
    assert_kl_graph_properties(ref.knn_graph(f, k, segments, False, "kl"), f, k, segments)
    assert torch.equal(s, s.T), "not symmetric"
    assert bool((s.diagonal() == 1).all()), "self-similarity is not 1"
    assert bool((s >= 0).all() and (s <= 1).all()), "outside [0, 1]"
    torch.testing.assert_close(s.double(), oracle(f), rtol=1e-5, atol=1e-5)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["public", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("f, exc, match", [
    (torch.randn(3), ValueError, "f:"),
    (torch.randn(2, 3, 4), ValueError, "f:"),
    (torch.ones(3, 2, dtype=torch.int64), TypeError, "f:"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), ValueError, "f:"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), ValueError, "f:"),
    (torch.tensor([[1.0, 2.0], [float("-inf"), float("-inf")]]), ValueError, "f:"),
])
def test_bad_features(impl, f, exc, match):
    knn = knn_graph if impl == "public" else torch.ops.gcnprune.knn_graph
    kl = kl_similarity if impl == "public" else torch.ops.gcnprune.kl_similarity
    with pytest.raises(exc, match=match):
        knn(f, 1, None, False, "kl")
    with pytest.raises(exc, match=match):
        kl(f)


def test_reference_rejects_non_finite():
    with pytest.raises(ValueError, match="f:"):
        ref.kl_similarity(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="f:"):
        ref.knn_graph(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 1, similarity="kl")


@pytest.mark.parametrize("impl", ["public", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("similarity", ["euclidean", "KL", ""])
def test_bad_similarity_value(impl, similarity):
    fn = knn_graph if impl == "public" else torch.ops.gcnprune.knn_graph
    with pytest.raises(ValueError, match="similarity"):
        fn(torch.randn(4, 3), 2, None, False, similarity)


@pytest.mark.parametrize("similarity", [None, 1, True, ("kl",)])
def test_bad_similarity_type(similarity):
    with pytest.raises(TypeError, match="similarity"):
        knn_graph(torch.randn(4, 3), 2, similarity=similarity)


def test_kl_similarity_bad_type():
    with pytest.raises(TypeError, match="f:"):
        kl_similarity(torch.randn(4, 3).numpy())


# --- paths -------------------------------------------------------------------------------------

def test_differentiable_inputs_get_gradients():
    # The native kernels have no backward; inputs that require grad take the reference path.
    f = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    kl_similarity(f).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    f.grad = None
    knn_graph(f, 3, similarity="kl").values.sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    with torch.no_grad():
        assert not kl_similarity(f).requires_grad


def test_reference_fallback_with_native_disabled():
    """GCNPRUNE_NATIVE=0: the public ops run the reference (one logged warning), same results."""
    code = (
        "import torch\n"
        "from gcnprune_fast.ops import kl_similarity, knn_graph, native_available\n"
        "from gcnprune_fast.ops.reference import graph as ref\n"
        "assert not native_available()\n"
        "f = torch.randn(30, 7, dtype=torch.float64)\n"
        "s = kl_similarity(f)\n"
        "assert torch.equal(s, ref.kl_similarity(f)) and torch.equal(s, s.T)\n"
        "g = knn_graph(f, 3, torch.tensor([0, 10, 30]), True, 'kl')\n"
        "h = ref.knn_graph(f, 3, torch.tensor([0, 10, 30]), True, 'kl')\n"
        "assert all(torch.equal(a, b) for a, b in zip(g, h))\n"
        "try:\n"
        "    knn_graph(f, 3, similarity='euclidean')\n"
        "except ValueError as e:\n"
        "    assert 'similarity' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('REFERENCE_OK')\n"
    )
    env = dict(os.environ, GCNPRUNE_NATIVE="0", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "REFERENCE_OK" in proc.stdout
    assert proc.stderr.count("native kernels unavailable") == 1


@needs_native
def test_kl_similarity_registered_for_every_built_device():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has("gcnprune::kl_similarity", "CPU")
    from conftest import native_cuda_built
    if native_cuda_built():
        assert has("gcnprune::kl_similarity", "CUDA")


def test_kl_weights_compare_with_cosine_range():
    """Both similarities give graph weights in [0, 1]; the KL's are positive for every edge."""
    f = torch.randn(25, 9, generator=torch.Generator().manual_seed(5))
    kl = knn_graph(f, 4, similarity="kl").values
    cos = knn_graph(f, 4, center=True).values
    assert bool((kl > 0).all() and (kl <= 1).all())
    assert bool((cos >= 0).all() and (cos <= 1 + 1e-6).all())
    assert cosine_similarity(f).shape == kl_similarity(f).shape


# --- channel-gcn option ------------------------------------------------------------------------

def test_build_channel_graph_similarity_option():
    from gcnprune_fast.features import ChannelFeatures
    from gcnprune_fast.methods.channel_gcn import ChannelGCNOptions, build_channel_graph
    from gcnprune_fast.ops import gcn_norm

    assert ChannelGCNOptions().similarity == "cosine"
    gen = torch.Generator().manual_seed(6)
    gap = [torch.rand(12, 20, generator=gen), torch.rand(7, 20, generator=gen)]
    feats = ChannelFeatures(gap=gap, mean=[], var=[], abs_mean=[], zero_frac=[], max=[],
                            num_samples=20)
    offsets = torch.tensor([0, 12, 19])
    f = torch.cat(gap)
    for similarity, want in [("cosine", knn_graph(f, 3, offsets, center=True)),
                             ("kl", knn_graph(f, 3, offsets, similarity="kl"))]:
        raw, norm = build_channel_graph(feats, offsets, 3, similarity=similarity)
        assert all(torch.equal(a, b) for a, b in zip(raw, want))
        assert all(torch.equal(a, b) for a, b in zip(norm, gcn_norm(want)))
    default, _ = build_channel_graph(feats, offsets, 3)
    assert all(torch.equal(a, b) for a, b in zip(default, knn_graph(f, 3, offsets, center=True)))


def test_prune_channel_gcn_with_kl_similarity():
    import gcnprune_fast
    from gcnprune_fast.models import get_model
    from helpers import random_batches

    torch.manual_seed(0)
    model = get_model("simple_cnn")
    res = gcnprune_fast.prune(model, random_batches(n=32), method="channel-gcn", flops=0.6,
                              progress=False, bn_batches=1, episodes=2, episodes_per_update=2,
                              reward_samples=16, feature_samples=16, similarity="kl")
    assert res.report["flops_ratio"] <= 0.6
    with pytest.raises(ValueError, match="similarity"):
        gcnprune_fast.prune(model, random_batches(n=32), method="channel-gcn", flops=0.6,
                            progress=False, similarity="euclidean")
