"""CUDA cases the per-op test files do not reach (issue 14), run by scripts/gpu_check.sh.

- spmm / spmm_transpose / sddmm with rows longer than one warp (33 .. 3000 non-zeros), hub columns
  (many atomics on one output row), widths around the 16-byte vector paths, every dtype;
- gcn_norm without self loops and with unsorted rows (and stored diagonals) at a size with many
  thread blocks;
- gap_stats with NaN / +inf / -inf spread over many planes, NCHW, channels_last and [N, C, L],
  float32 and bfloat16, at a size with many blocks;
- bfloat16 knn_graph over more than one 4096-row tile and with segments, bfloat16
  cosine_similarity (the mirror kernel over many blocks);
- every one of the 11 CUDA kernels seen launching in the profiler;
- an end-to-end ``prune()`` on a CUDA model that must go through the native CUDA ops.

Each case runs on the CPU too (small sizes), so the checks themselves are exercised on machines
without a GPU; the CUDA cases skip there.
"""
from __future__ import annotations

import pytest
import torch
from conftest import REQUIRE_NATIVE, native_cuda_built, native_load_error, needs_cuda, \
    needs_cuda_device, needs_native

from gcnprune_fast.ops import (CSRGraph, cosine_similarity, gap_stats, gcn_norm, knn_graph,
                               reference, spmm)
from gcnprune_fast.ops.reference import graph as ref_graph
from gcnprune_fast.ops.reference import sparse as ref_sparse

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

# The markers and the ``device`` fixture are the shared ones of tests/conftest.py: the tests
# below take ``device`` ("cpu", and "cuda" marked needs_cuda). Under GCNPRUNE_REQUIRE_NATIVE=1
# (.ci/run, scripts/gpu_check.sh) a missing native library fails every test instead of skipping;
# a library built without CUDA kernels on a machine with a GPU fails
# test_cuda_kernels_built_when_a_gpu_is_there (conftest skips the CUDA cases then).
HALF = (torch.float16, torch.bfloat16)
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=5e-2, atol=8e-2)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# graphs with long rows


def long_row_graph(num_rows: int, num_cols: int, row_lengths, seed: int = 0,
                   hub: bool = False, dtype=torch.float64) -> CSRGraph:
    """CSR [num_rows, num_cols] whose row r has ``row_lengths[r % len]`` distinct sorted columns
    (0 allowed); with ``hub`` every non-empty row also stores column 0 (atomics pile up there in
    the transpose)."""
    g = _gen(seed)
    cols, lengths = [], []
    for r in range(num_rows):
        n = min(int(row_lengths[r % len(row_lengths)]), num_cols)
        c = torch.randperm(num_cols, generator=g)[:n]
        if hub and n:
            c[0] = 0
            c = c.unique()
        cols.append(c.sort().values)
        lengths.append(c.numel())
    indptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    indices = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
    values = (torch.rand(indices.numel(), generator=g, dtype=torch.float64) + 0.1).to(dtype)
    return CSRGraph(indptr, indices, values)


def dense64(graph: CSRGraph, num_cols: int) -> torch.Tensor:
    return CSRGraph(graph.indptr.cpu(), graph.indices.cpu(),
                    graph.values.detach().cpu().double()).to_dense(num_cols)


ROW_LENGTHS = [33, 0, 64, 31, 100, 1, 257, 32, 1000]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [1, 7, 8, 33, 136])
def test_spmm_long_rows_forward_and_backward(device, d, dtype):
    rows, cols = (90, 1200) if device == "cuda" else (18, 1200)
    g = long_row_graph(rows, cols, ROW_LENGTHS, seed=d, hub=True, dtype=dtype)
    assert int(g.indptr.diff().max()) > 32  # rows longer than one warp
    x = torch.randn(cols, d, generator=_gen(d), dtype=torch.float64).to(dtype)
    gd = CSRGraph(*(t.to(device) for t in g))
    values = gd.values.clone().requires_grad_()
    xd = x.clone().to(device).requires_grad_()
    out = spmm(CSRGraph(gd.indptr, gd.indices, values), xd)
    assert out.dtype == dtype and out.device.type == device
    a = dense64(g, cols)
    torch.testing.assert_close(out.detach().cpu().double(), a @ x.double(), **TOL[dtype])
    grad = torch.randn(rows, d, generator=_gen(100 + d), dtype=torch.float64).to(dtype)
    out.backward(grad.to(device))
    gx = a.t() @ grad.double()  # spmm_transpose (hub column 0: many atomics)
    torch.testing.assert_close(xd.grad.cpu().double(), gx, **TOL[dtype])
    rid = ref_sparse.row_ids(g.indptr)
    gv = (grad.double()[rid] * x.double()[g.indices]).sum(1)  # sddmm
    tol = TOL[dtype] if dtype not in HALF else dict(rtol=5e-2, atol=0.3)
    torch.testing.assert_close(values.grad.cpu().double(), gv, **tol)


@needs_native
def test_spmm_one_very_long_row_and_strided_x(device):
    g = long_row_graph(3, 5000, [3000, 0, 40], seed=7, dtype=torch.float32)
    base = torch.randn(5000, 80, generator=_gen(7))
    x = base[:, ::2]  # non-contiguous
    out = spmm(CSRGraph(*(t.to(device) for t in g)), x.to(device))
    torch.testing.assert_close(out.cpu().double(), dense64(g, 5000) @ x.double(), rtol=1e-4,
                               atol=1e-3)


# ------------------------------------------------------------------------------------------------
# gcn_norm: no self loops, unsorted rows, stored diagonals


def unsorted_graph(n: int, seed: int, dtype=torch.float32) -> CSRGraph:
    """Random square graph, rows shuffled (unsorted), some rows storing their diagonal entry, some
    empty, some long (> 32 entries)."""
    g = _gen(seed)
    lengths = torch.randint(0, 12, (n,), generator=g)
    lengths[::7] = 0
    lengths[3::11] = 60
    cols, counts = [], []
    for r in range(n):
        c = torch.randperm(n, generator=g)[: int(lengths[r])]
        if r % 5 == 0 and c.numel():
            c[-1] = r  # stored diagonal, not in first place
            c = c.unique()
            c = c[torch.randperm(c.numel(), generator=g)]
        cols.append(c)
        counts.append(c.numel())
    indptr = torch.zeros(n + 1, dtype=torch.int64)
    indptr[1:] = torch.tensor(counts).cumsum(0)
    indices = torch.cat(cols)
    values = (torch.rand(indices.numel(), generator=g, dtype=torch.float64) + 0.05).to(dtype)
    return CSRGraph(indptr, indices, values)


@needs_native
@pytest.mark.parametrize("add_self_loops", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gcn_norm_unsorted_rows(device, dtype, add_self_loops):
    n = 3000 if device == "cuda" else 300
    g = unsorted_graph(n, seed=n + int(add_self_loops), dtype=dtype)
    rows = ref_sparse.row_ids(g.indptr)
    assert any(bool((g.indices[g.indptr[r]:g.indptr[r + 1]].diff() < 0).any()) for r in range(n))
    assert bool((rows == g.indices).any())
    out = gcn_norm(CSRGraph(*(t.to(device) for t in g)), add_self_loops=add_self_loops)
    assert all(t.device.type == device for t in out)
    out = out.to("cpu")
    want = ref_sparse.gcn_norm(g, add_self_loops)
    assert torch.equal(out.indptr, want.indptr)
    assert torch.equal(out.indices, want.indices)
    torch.testing.assert_close(out.values, want.values, **TOL[dtype])
    assert torch.isfinite(out.values.float()).all()
    # and the matrix is D^-1/2 (A [+ I]) D^-1/2
    a = dense64(g, n) + (torch.eye(n, dtype=torch.float64) if add_self_loops else 0)
    deg = a.sum(1)
    s = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    torch.testing.assert_close(dense64(out, n), s[:, None] * a * s[None, :], **TOL[dtype])


# ------------------------------------------------------------------------------------------------
# gap_stats with NaN / inf


def non_finite_activation(n, c, h, w, seed, dtype, layout) -> torch.Tensor:
    g = _gen(seed)
    x = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) + 0.2).relu()
    flat = x.view(n, c, -1)
    for ch in range(0, c, 7):  # NaN in a random plane of every 7th channel
        flat[int(torch.randint(n, (1,), generator=g)), ch, int(torch.randint(h * w, (1,), generator=g))] = float("nan")
    for ch in range(1, c, 7):
        flat[int(torch.randint(n, (1,), generator=g)), ch, 0] = float("inf")
    for ch in range(2, c, 7):
        flat[0, ch, 1] = float("inf")
        flat[n - 1, ch, 2] = float("-inf")
    for ch in range(3, c, 7):
        flat[:, ch] = float("-inf")
    for ch in range(4, c, 7):
        flat[:, ch] = 0.0
    x = x.to(dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "ncl":
        return x.flatten(2)
    return x


@needs_native
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "ncl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gap_stats_non_finite_many_blocks(device, dtype, layout):
    shape = (48, 150, 9, 11) if device == "cuda" else (6, 30, 5, 7)
    x = non_finite_activation(*shape, seed=3, dtype=dtype, layout=layout)
    got = gap_stats(x.to(device))
    want = reference.gap_stats(x.float())  # float32 reference on the same rounded values
    for name, a, b in zip(got._fields, got, want):
        assert a.device.type == device and a.dtype == torch.float32, name
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")
    c = shape[1]
    assert torch.isnan(got.mean[0::7].cpu()).all() and torch.isnan(got.max[0::7].cpu()).all()
    assert (got.max[1::7].cpu() == float("inf")).all()
    assert (got.mean[3::7].cpu() == float("-inf")).all() and c > 3
    assert (got.zero_frac[4::7].cpu() == 1).all()


# ------------------------------------------------------------------------------------------------
# bfloat16 knn_graph / cosine_similarity


def check_knn(g: CSRGraph, f: torch.Tensor, k: int, segments=None, tol=2e-2) -> None:
    """Vectorized graph properties: CSR sorted per row, no self loops, inside segments,
    symmetric structure and weights, weights = max(cos, 0), every row has its top-k."""
    c = f.shape[0]
    g = g.to("cpu")
    assert g.indptr.shape == (c + 1,) and int(g.indptr[-1]) == g.indices.numel()
    rows = ref_sparse.row_ids(g.indptr)
    assert not bool((rows == g.indices).any()), "self loop"
    key = rows * c + g.indices
    assert bool((key.diff() > 0).all()), "columns not strictly sorted within rows"
    seg_id = torch.zeros(c, dtype=torch.int64)
    bounds = [(0, c)] if segments is None else list(zip(segments.tolist()[:-1],
                                                          segments.tolist()[1:]))
    for s, (lo, hi) in enumerate(bounds):
        seg_id[lo:hi] = s
    assert bool((seg_id[rows] == seg_id[g.indices]).all()), "edge leaves its segment"
    t_key = (g.indices * c + rows).sort()
    assert torch.equal(t_key.values, key), "structure not symmetric"
    assert torch.equal(g.values[t_key.indices], g.values), "weights not symmetric"
    xn = ref_graph.normalized_rows(f.double().cpu(), False)
    sim = (xn[rows] * xn[g.indices]).sum(1)
    torch.testing.assert_close(g.values.double(), sim.clamp_min(0), atol=tol, rtol=0)
    deg = g.indptr.diff()
    for lo, hi in bounds:
        want = min(k, hi - lo - 1)
        if want <= 0:
            continue
        assert bool((deg[lo:hi] >= want).all()), "row with fewer than k neighbours"
        s = xn[lo:hi] @ xn[lo:hi].t()
        s.fill_diagonal_(-float("inf"))
        kth = s.topk(want, dim=1).values[:, -1]
        a = torch.full((hi - lo, hi - lo), -float("inf"), dtype=torch.float64)
        r = rows[g.indptr[lo]:g.indptr[hi]] - lo
        a[r, g.indices[g.indptr[lo]:g.indptr[hi]] - lo] = s[r, g.indices[g.indptr[lo]:g.indptr[hi]] - lo]
        good = (a >= kth[:, None] - tol).sum(1)
        assert bool((good >= want).all()), "row misses its top-k"


@needs_native
def test_knn_graph_bf16_several_tiles_and_segments(device, monkeypatch):
    c, b, k = (5000, 64, 8) if device == "cuda" else (300, 32, 8)
    if device == "cpu":
        monkeypatch.setenv("GCNPRUNE_KNN_TILE", "128")  # several tiles on the CPU as well
    f = torch.randn(c, b, generator=_gen(11)).to(torch.bfloat16)
    g = knn_graph(f.to(device), k)
    assert g.values.dtype == torch.float32 and g.indptr.device.type == device
    check_knn(g, f, k)
    segments = torch.tensor([0, 1, 1, c // 3, c // 3 + 40, c], dtype=torch.int64)
    g = knn_graph(f.to(device), k, segments.to(device), center=False)
    check_knn(g, f, k, segments)


@needs_native
def test_cosine_similarity_bf16_mirror(device):
    c = 3000 if device == "cuda" else 200
    f = torch.randn(c, 48, generator=_gen(5)).to(torch.bfloat16)
    f[7] = 0
    s = cosine_similarity(f.to(device)).cpu()
    assert s.dtype == torch.float32 and torch.equal(s, s.t())
    torch.testing.assert_close(s.double(), ref_graph.cosine_similarity(f.double()), atol=1e-2,
                               rtol=0)
    assert bool((s[7] == 0).all())


# ------------------------------------------------------------------------------------------------
# every CUDA kernel launched

KERNELS = ["plane_stats_contiguous_kernel", "plane_stats_channels_kernel", "channel_merge_kernel",
           "tile_topk_kernel", "mirror_upper_kernel", "spmm_kernel", "spmm_transpose_kernel",
           "sddmm_kernel", "gcn_norm_plan_kernel", "gcn_norm_fill_kernel",
           "gcn_norm_scale_kernel"]


def exercise_every_op(device: str) -> None:
    """One small call of every native op family on ``device`` (also the sanitizer's workload)."""
    x = torch.randn(4, 40, 6, 7, device=device)
    gap_stats(x)
    gap_stats(x.contiguous(memory_format=torch.channels_last))
    f = torch.randn(70, 16, device=device)
    cosine_similarity(f)
    raw = knn_graph(f, 5, center=True)
    for loops in (True, False):
        gcn_norm(raw, add_self_loops=loops)
    g = gcn_norm(raw)
    xv = torch.randn(70, 8, device=device, requires_grad=True)
    v = g.values.clone().requires_grad_()
    spmm(CSRGraph(g.indptr, g.indices, v), xv).square().sum().backward()
    spmm(g, torch.randn(70, 3, device=device))  # scalar (non-vector) path
    # half precision, rows longer than a warp, a hub column (atomics in the transpose)
    gap_stats(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    knn_graph(f.to(torch.bfloat16), 5)
    lg = CSRGraph(*(t.to(device) for t in long_row_graph(6, 300, [100, 0, 40], seed=1, hub=True,
                                                          dtype=torch.bfloat16)))
    xb = torch.randn(300, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
    vb = lg.values.clone().requires_grad_()
    spmm(CSRGraph(lg.indptr, lg.indices, vb), xb).float().sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()


@needs_cuda_device
def test_cuda_kernels_built_when_a_gpu_is_there():
    """With a GPU and GCNPRUNE_REQUIRE_NATIVE=1 a GPU run must not pass by skipping its CUDA
    cases: the native library must be there and hold the CUDA kernels."""
    if not REQUIRE_NATIVE:
        pytest.skip("GCNPRUNE_REQUIRE_NATIVE is not set")
    assert not native_load_error(), native_load_error()
    assert native_cuda_built(), "the native library was built without CUDA kernels"


@needs_cuda
def test_every_cuda_kernel_launches():
    exercise_every_op("cuda")  # warm-up (module load, cuBLAS handles)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        exercise_every_op("cuda")
    names = " ".join([e.name for e in prof.events()]
                     + [k.name for e in prof.events() for k in getattr(e, "kernels", [])])
    missing = [k for k in KERNELS if k not in names]
    assert not missing, f"CUDA kernels never launched: {missing}"


@needs_native
def test_every_op_runs_on_cpu():
    exercise_every_op("cpu")


# ------------------------------------------------------------------------------------------------
# prune() end to end on CUDA


@needs_native
def test_prune_end_to_end_uses_native_ops(device):
    from torch.utils._python_dispatch import TorchDispatchMode

    import gcnprune_fast
    from gcnprune_fast.models import get_model

    seen: set = set()

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "gcnprune":
                devs = {a.device.type for a in args if isinstance(a, torch.Tensor)}
                seen.update((func.__name__.split(".")[0], d) for d in devs)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = get_model("simple_cnn").to(device)
    g = _gen(0)
    batches = [(torch.randn(32, 3, 16, 16, generator=g).to(device),
                torch.randint(0, 10, (32,), generator=g).to(device)) for _ in range(3)]
    with Spy():
        result = gcnprune_fast.prune(model, batches, flops=0.5, progress=False, episodes=6,
                                     episodes_per_update=3, feature_samples=64,
                                     reward_samples=32, bn_batches=2)
    assert next(result.model.parameters()).device.type == device
    assert result.report["flops_ratio"] <= 0.5 + 1e-9
    out = result.model(batches[0][0])
    assert out.shape == (32, 10) and torch.isfinite(out).all()
    assert ("gap_stats", device) in seen, sorted(seen)  # features on the model's device
    assert {op for op, _ in seen} >= {"gap_stats", "knn_graph", "gcn_norm", "spmm"}, sorted(seen)
