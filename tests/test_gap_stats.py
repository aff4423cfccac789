"""gap_stats / GapAccumulator: native kernels vs the plain-PyTorch reference, semantics of
degenerate inputs, streaming merge, argument errors, and the reference fallback path."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (DTYPES, SampleInput, copy_to, dtype_name, needs_native, randn, sample_ids,
                      tolerances)
from gcnprune_fast.ops import GapAccumulator, GapStats, gap_stats, native_available
from gcnprune_fast.ops import reference

pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared; threads: own test

FIELDS = GapStats._fields
LAYOUTS = ["nchw", "channels_last", "ncl", "nc", "slice", "transposed"]


def make_input(layout, dtype, n=5, c=19, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    # relu makes exact zeros (zero_frac), the offset makes mean != 0.
    base = (torch.randn(n, c, h, w, generator=g) + 0.3).relu() - 0.1
    base = base.to(dtype)
    if layout == "nchw":
        return base
    if layout == "channels_last":
        return base.to(memory_format=torch.channels_last)
    if layout == "ncl":
        return base.flatten(2)
    if layout == "nc":
        return base[:, :, 0, 0].contiguous()
    if layout == "slice":  # non-contiguous along every dim
        big = torch.randn(2 * n, 2 * c, h + 2, w + 3, generator=g).to(dtype)
        return big[::2, 1::2, 1:-1, 2:-1]
    if layout == "transposed":  # neither the spatial nor the channel stride is 1
        return base.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)[:, :, :, 1:]
    raise ValueError(layout)


def non_finite_input(layout):
    x = randn(4, 5, 6, 6, seed=6)
    x[1, 0, 2, 3] = float("nan")            # channel 0: NaN
    x[2, 1, 0, 0] = float("inf")            # channel 1: +inf
    x[0, 2, 1, 1], x[3, 2, 1, 1] = float("inf"), float("-inf")  # channel 2: +inf and -inf
    x[:, 3] = 0                             # channel 3: all zeros
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x


def _shape_name(shape):
    return "x".join(map(str, shape))


# besides every layout in float32 and every dtype in nchw
OPCHECK_EXTRA = {("ncl", torch.float64), ("nc", torch.bfloat16)}


def sample_inputs_gap_stats():
    """Every gap_stats input of the native-vs-reference, device, no-grad and opcheck tests:
    layouts x dtypes at two sizes, long planes and odd channel counts, degenerate shapes, a large
    offset (variance accuracy) and non-finite values.

    ``meta["nan"]``: some outputs are NaN (opcheck cannot compare those); ``meta["tol"]``: a
    tolerance other than the dtype's; ``meta["sweep"]``: one more size / dtype of a layout already
    sampled -- the numerical tests run it, opcheck (registration and fake kernel, not numerics)
    does not."""
    for n, c, h, w in [(5, 19, 6, 7), (6, 45, 9, 10)]:
        for layout in LAYOUTS:
            for dtype in DTYPES:
                sweep = n == 6 or not (dtype == torch.float32 or layout == "nchw" or
                                       (layout, dtype) in OPCHECK_EXTRA)
                yield SampleInput(f"{layout}-{dtype_name(dtype)}-{_shape_name((n, c, h, w))}",
                                  (make_input(layout, dtype, n, c, h, w),),
                                  meta={"sweep": sweep})
    # Planes longer than one chunk, channel counts that are not a multiple of the vector group,
    # each also with the channels innermost (stride 1 along C).
    for shape in [(3, 1, 5000), (2, 3, 70000), (1, 1, 1), (300, 3), (1, 40), (2, 37, 1, 1),
                  (65, 33, 3)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            name = f"long-{_shape_name(shape)}-{dtype_name(dtype)}"
            yield SampleInput(name, (x,), meta={"sweep": dtype != torch.float32})
            if x.dim() > 2:
                yield SampleInput(f"{name}-channels_minor",
                                  (x.transpose(1, -1).contiguous().transpose(1, -1),),
                                  meta={"sweep": True})
    # N = 0 and H*W = 0 give NaN statistics; C = 0, C = 1, N = 1, H*W = 1; constants (var 0).
    for shape, nan in [((0, 3, 2, 2), True), ((2, 3, 0), True), ((3, 0, 2, 2), False),
                       ((1, 1, 1, 1), False), ((4, 1, 3, 3), False), ((1, 5, 3, 3), False),
                       ((4, 5, 1, 1), False)]:
        yield SampleInput(f"degenerate-{_shape_name(shape)}", (randn(*shape, seed=2),),
                          meta={"nan": nan})
    yield SampleInput("constant-3x2x4x4", (torch.full((3, 2, 4, 4), 7.25),), meta={"sweep": True})
    yield SampleInput("constant-1x2x1x1", (torch.full((1, 2, 1, 1), 3.0),), meta={"sweep": True})
    # Mean 1000, variance 1: a float32 E[x^2] - E[x]^2 would lose everything here.
    x = 1000.0 + randn(64, 8, 16, 16, seed=3)
    for name, xx in [("nchw", x), ("channels_last", x.to(memory_format=torch.channels_last)),
                     ("ncl_slice", x.flatten(2)[:, :, :200])]:
        yield SampleInput(f"offset1000-{name}", (xx,),
                          meta={"tol": dict(rtol=2e-4, atol=1e-4), "sweep": name != "nchw"})
    for layout in ("nchw", "channels_last"):
        yield SampleInput(f"non_finite-{layout}", (non_finite_input(layout),), meta={"nan": True})


GAP_SAMPLES = list(sample_inputs_gap_stats())
OPCHECK_SAMPLES = [s for s in GAP_SAMPLES if not (s.meta.get("nan") or s.meta.get("sweep"))]


def assert_stats_close(actual: GapStats, expected: GapStats, **tol):
    assert isinstance(actual, GapStats)
    for name in FIELDS:
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype, name
        assert a.shape == e.shape, name
        torch.testing.assert_close(a, e, equal_nan=True, msg=lambda m: f"{name}: {m}", **tol)


def float64_oracle(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Independent float64 computation of every field."""
    xd = x.detach().double().reshape(x.shape[0], x.shape[1], -1)
    return {
        "gap": xd.mean(2),
        "mean": xd.mean((0, 2)),
        "var": xd.var((0, 2), correction=0),
        "abs_mean": xd.abs().mean((0, 2)),
        "zero_frac": (xd == 0).double().mean((0, 2)),
        "max": xd.amax((0, 2)),
    }


# ------------------------------------------------------------------------------------ native
@needs_native
@pytest.mark.parametrize("sample", GAP_SAMPLES, ids=sample_ids(GAP_SAMPLES))
def test_native_matches_reference(sample, device):
    (x,) = sample.to(device)
    out = GapStats(*torch.ops.gcnprune.gap_stats(x))
    assert all(t.device == x.device for t in out)
    expected = reference.gap_stats(*sample.args)
    tol = sample.meta.get("tol") or tolerances(x.dtype, widened=True)
    assert_stats_close(GapStats(*(t.cpu() for t in out)), expected, **tol)


@needs_native
@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=sample_ids(OPCHECK_SAMPLES))
def test_opcheck(sample, device):
    torch.library.opcheck(torch.ops.gcnprune.gap_stats.default, sample.to(device))


@pytest.mark.parametrize("sample", GAP_SAMPLES, ids=sample_ids(GAP_SAMPLES))
def test_outputs_carry_no_grad(sample, device):
    (x,) = sample.to(device, requires_grad=True)
    stats = gap_stats(x)
    assert not any(t.requires_grad for t in stats)
    assert all(t.device == x.device for t in stats)
    assert x.grad is None


@needs_native
def test_native_threads_do_not_change_results():
    x = make_input("channels_last", torch.float32, n=9, c=3, h=5, w=5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gap_stats(x)
        torch.set_num_threads(max(2, old))
        many = gap_stats(x)
    finally:
        torch.set_num_threads(old)
    assert_stats_close(one, many, rtol=1e-6, atol=1e-6)


@needs_native
def test_large_offset_variance_is_accurate(device):
    x = 1000.0 + randn(64, 8, 16, 16, seed=3)
    true_var = x.double().var(dim=(0, 2, 3), correction=0)
    for xx in (x, x.to(memory_format=torch.channels_last), x.flatten(2)[:, :, :200]):
        expected = xx.double().reshape(64, 8, -1).var(dim=(0, 2), correction=0)
        got = torch.ops.gcnprune.gap_stats(xx.to(device))[2]
        torch.testing.assert_close(got.double().cpu(), expected, rtol=2e-4, atol=0)
    # (a float32 E[x^2] - E[x]^2 would lose everything here: x^2 ~ 1e6, eps * 1e6 ~ 0.1)
    torch.testing.assert_close(gap_stats(x.to(device)).var.double().cpu(), true_var, rtol=2e-4,
                               atol=0)


# --------------------------------------------------------------------- public function semantics
@pytest.mark.parametrize("layout", LAYOUTS)
def test_public_gap_stats_matches_float64_oracle(layout, device):
    x = make_input(layout, torch.float32, seed=4)
    stats = gap_stats(copy_to(x, device))
    oracle = float64_oracle(x)
    for name in FIELDS:
        assert getattr(stats, name).dtype == torch.float32
        torch.testing.assert_close(getattr(stats, name).double().cpu(), oracle[name], rtol=1e-5,
                                   atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_float64_in_float64_out_and_half_in_float_out():
    x = make_input("nchw", torch.float64)
    assert all(t.dtype == torch.float64 for t in gap_stats(x))
    for dt in (torch.float16, torch.bfloat16):
        assert all(t.dtype == torch.float32 for t in gap_stats(x.to(dt)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5), c=st.integers(1, 20), h=st.integers(1, 6), w=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES), layout=st.sampled_from(["nchw", "channels_last", "ncl", "nc"]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_oracle(n, c, h, w, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * 3).round() / 2  # many exact zeros, ties in max
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "ncl":
        x = x.flatten(2)
    elif layout == "nc":
        x = x[:, :, 0, 0]
    stats = gap_stats(x)
    oracle = float64_oracle(x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype != torch.float64 else dict(rtol=1e-10, atol=1e-10)
    for name in FIELDS:
        got = getattr(stats, name)
        assert got.shape == oracle[name].shape
        torch.testing.assert_close(got.double(), oracle[name], msg=lambda m: f"{name}: {m}", **tol)
    assert (stats.var >= 0).all() and (stats.zero_frac >= 0).all() and (stats.zero_frac <= 1).all()
    torch.testing.assert_close(stats.gap.double().mean(0), stats.mean.double(), **tol)
    if native_available():
        assert_stats_close(GapStats(*torch.ops.gcnprune.gap_stats(x)), reference.gap_stats(x),
                           **tolerances(dtype))


def test_degenerate_shapes(device):
    # C = 1, N = 1, H*W = 1
    for shape in [(4, 1, 3, 3), (1, 5, 3, 3), (4, 5, 1, 1), (1, 1, 1, 1)]:
        x = torch.randn(*shape)
        stats = gap_stats(x.to(device))
        oracle = float64_oracle(x)
        for name in FIELDS:
            torch.testing.assert_close(getattr(stats, name).double().cpu(), oracle[name],
                                       rtol=1e-5, atol=1e-6)
    single = gap_stats(torch.full((1, 2, 1, 1), 3.0, device=device))
    assert single.var.tolist() == [0.0, 0.0] and single.max.tolist() == [3.0, 3.0]
    constant = gap_stats(torch.full((3, 2, 4, 4), 7.25, device=device))
    assert constant.var.tolist() == [0.0, 0.0]


def test_empty_batch_gives_empty_gap_and_nan_stats(device):
    stats = gap_stats(torch.randn(0, 4, 3, 3, device=device))
    assert stats.gap.shape == (0, 4)
    for name in FIELDS[1:]:
        v = getattr(stats, name)
        assert v.shape == (4,) and torch.isnan(v).all(), name
    no_positions = gap_stats(torch.randn(2, 3, 0, device=device))
    assert no_positions.gap.shape == (2, 3) and torch.isnan(no_positions.gap).all()
    assert torch.isnan(no_positions.var).all()
    no_channels = gap_stats(torch.randn(2, 0, 3, 3, device=device))
    assert no_channels.gap.shape == (2, 0) and no_channels.mean.shape == (0,)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_non_finite_values(layout, device):
    x = non_finite_input(layout)
    s = gap_stats(copy_to(x, device))
    s = GapStats(*(t.cpu() for t in s))
    assert torch.isnan(s.gap[1, 0]) and torch.isfinite(s.gap[0, 0])
    assert all(torch.isnan(getattr(s, f)[0]) for f in ("mean", "var", "abs_mean", "max"))
    assert torch.isfinite(s.zero_frac[0])
    assert s.mean[1] == float("inf") and torch.isnan(s.var[1]) and s.max[1] == float("inf")
    assert s.abs_mean[1] == float("inf") and s.gap[2, 1] == float("inf")
    assert torch.isnan(s.mean[2]) and s.max[2] == float("inf") and s.abs_mean[2] == float("inf")
    assert s.zero_frac[3] == 1.0 and s.var[3] == 0 and s.max[3] == 0 and s.mean[3] == 0
    torch.testing.assert_close(s.mean[4], x[:, 4].mean(), rtol=1e-5, atol=1e-6)
    assert_stats_close(s, reference.gap_stats(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,err,match", [
    (torch.zeros(2, 3, 4, 4, dtype=torch.int64), TypeError, "`x`.*dtype"),
    (torch.zeros(2, 3, dtype=torch.bool), TypeError, "`x`"),
    (torch.zeros(2, 3, dtype=torch.complex64), TypeError, "`x`"),
    (torch.zeros(5), ValueError, "`x`.*shape"),
    (torch.zeros(1, 2, 3, 4, 5), ValueError, "`x`.*5 dims"),
    ([[1.0, 2.0]], TypeError, "`x`.*torch.Tensor"),
])
def test_bad_input_errors(bad, err, match):
    with pytest.raises(err, match=match):
        gap_stats(bad)
    with pytest.raises(err, match=match):
        GapAccumulator().update(bad)


# --------------------------------------------------------------------------------- accumulator
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc"])
def test_accumulator_equals_concatenation(layout):
    x = make_input(layout, torch.float32, n=23, c=7, seed=5)
    acc = GapAccumulator()
    for part in torch.split(x, [1, 5, 9, 8]):
        acc.update(part)
    assert acc.count == acc.num_samples == 23
    assert acc.num_elements == x[:, 0].numel()
    assert_stats_close(acc.result(), gap_stats(x), rtol=1e-5, atol=1e-5)


def test_accumulator_sample_cap_and_float64():
    x = 500.0 + torch.randn(20, 6, 4, 4, dtype=torch.float64)
    acc = GapAccumulator(max_samples=7)
    for part in torch.split(x, 3):
        acc.update(part)
    res = acc.result()
    full = gap_stats(x)
    assert res.gap.shape == (7, 6) and res.gap.dtype == torch.float64
    torch.testing.assert_close(res.gap, full.gap[:7])
    for name in FIELDS[1:]:
        torch.testing.assert_close(getattr(res, name), getattr(full, name), rtol=1e-10,
                                   atol=1e-10)
    zero_cap = GapAccumulator(max_samples=0).update(x).result()
    assert zero_cap.gap.shape == (0, 6)
    torch.testing.assert_close(zero_cap.var, full.var, rtol=1e-10, atol=1e-10)


def test_accumulator_mixed_spatial_sizes_and_non_finite():
    a, b = torch.randn(4, 3, 5, 5), torch.randn(6, 3, 2, 2)
    a[0, 1, 0, 0] = float("nan")
    res = GapAccumulator().update(a).update(b).result()
    flat = torch.cat([a.transpose(0, 1).reshape(3, -1), b.transpose(0, 1).reshape(3, -1)], 1)
    expected_var = flat.double().var(1, correction=0)
    torch.testing.assert_close(res.var.double(), expected_var, rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    assert torch.isnan(res.max[1]) and torch.isfinite(res.max[0])
    torch.testing.assert_close(res.max[2], flat[2].max())
    torch.testing.assert_close(res.zero_frac.double(), (flat == 0).double().mean(1))
    assert res.gap.shape == (10, 3)


def test_accumulator_empty_batches_and_errors():
    acc = GapAccumulator()
    with pytest.raises(RuntimeError, match="no batch"):
        acc.result()
    acc.update(torch.randn(0, 4, 2, 2))
    res = acc.result()
    assert acc.count == 0 and res.gap.shape == (0, 4) and torch.isnan(res.mean).all()
    acc.update(torch.randn(3, 4, 2, 2))
    assert acc.count == 3 and torch.isfinite(acc.result().mean).all()
    with pytest.raises(ValueError, match="`x` has 5 channels"):
        acc.update(torch.randn(2, 5, 2, 2))
    with pytest.raises(ValueError, match="max_samples"):
        GapAccumulator(max_samples=-1)
    with pytest.raises(TypeError, match="max_samples"):
        GapAccumulator(max_samples=2.5)
    acc.reset()
    assert acc.count == 0 and acc.num_channels is None


# ---------------------------------------------------------------------------- reference path
def test_reference_path_when_native_disabled():
    code = (
        "import torch\n"
        "from gcnprune_fast.ops import gap_stats, native_available, reference, GapAccumulator\n"
        "assert not native_available()\n"
        "x = torch.randn(6, 5, 4, 4).to(memory_format=torch.channels_last)\n"
        "s = gap_stats(x)\n"
        "xd = x.double()\n"
        "torch.testing.assert_close(s.var.double(), xd.var((0, 2, 3), correction=0), "
        "rtol=1e-5, atol=1e-6)\n"
        "torch.testing.assert_close(s.gap.double(), xd.mean((2, 3)), rtol=1e-5, atol=1e-6)\n"
        "r = GapAccumulator().update(x[:2]).update(x[2:]).result()\n"
        "torch.testing.assert_close(r.var, s.var, rtol=1e-5, atol=1e-6)\n"
        "print('REFERENCE_OK')\n"
    )
    env = dict(os.environ, GCNPRUNE_NATIVE="0", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "REFERENCE_OK" in proc.stdout
    assert "native kernels unavailable" in proc.stderr  # the one logged warning
    assert proc.stderr.count("native kernels unavailable") == 1
