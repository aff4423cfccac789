"""Shared test setup of the op tests: markers for the native / CUDA ops, the device parameter,
dtypes and tolerances, sample inputs, and the random CSR graph builder. (Model-level builders --
random batches, a pruning space -- live in tests/helpers.py.)

Test modules import the plain names from here (``from conftest import DTYPES, random_csr``; pytest
puts tests/ on sys.path) and get the ``device`` and ``one_thread`` fixtures without importing.

Markers (registered below):

- ``@pytest.mark.needs_native``: the test needs the compiled ``torch.ops.gcnprune.*`` ops. It is
  skipped when they are not loaded -- unless ``GCNPRUNE_REQUIRE_NATIVE=1`` is set (CI does), where
  it errors instead, naming why the library did not load.
- ``@pytest.mark.needs_cuda``: the native ops with CUDA kernels and a visible CUDA device (implies
  ``needs_native``).
- ``@pytest.mark.needs_cuda_device``: a CUDA device only (public ops may fall back to the
  reference).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import pytest
import torch

from gcnprune_fast.ops import CSRGraph, _native, native_available

# ------------------------------------------------------------------------------ native library
REQUIRE_NATIVE = os.environ.get("GCNPRUNE_REQUIRE_NATIVE", "").strip().lower() in (
    "1", "true", "yes", "on")

needs_native = pytest.mark.needs_native
needs_cuda = pytest.mark.needs_cuda
needs_cuda_device = pytest.mark.needs_cuda_device


def native_load_error() -> str:
    """Why the native library is not loaded ("" when it is)."""
    return "" if native_available() else (getattr(_native, "_REASON", "") or "unknown reason")


def native_cuda_built() -> bool:
    """True when the loaded native library was compiled with CUDA kernels (device or not)."""
    return native_available() and bool(getattr(_native, "_WITH_CUDA", False))


def gcnprune_op_names() -> list[str]:
    """Qualified names ("gcnprune::spmm", ...) of every op the native library registered."""
    native_available()  # loads the library
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("gcnprune::"))


def require_native() -> None:
    """Skips the calling test when the native ops are not loaded; under GCNPRUNE_REQUIRE_NATIVE=1
    fails it instead (a CI build that silently lost its kernels must not pass)."""
    if native_available():
        return
    if REQUIRE_NATIVE:
        pytest.fail(f"GCNPRUNE_REQUIRE_NATIVE=1 but the native gcnprune ops are unavailable: "
                    f"{native_load_error()}", pytrace=False)
    pytest.skip(f"native gcnprune ops unavailable: {native_load_error()}")


def require_cuda(native: bool = True) -> None:
    if native:
        require_native()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if native and not native_cuda_built():
        pytest.skip("native library built without CUDA kernels")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_native: needs the compiled torch.ops.gcnprune ops "
                            "(errors instead of skipping under GCNPRUNE_REQUIRE_NATIVE=1)")
    config.addinivalue_line("markers",
                            "needs_cuda: needs the native CUDA kernels and a CUDA device")
    config.addinivalue_line("markers", "needs_cuda_device: needs a CUDA device")


def pytest_report_header(config):
    return (f"gcnprune_fast native ops: {native_available()}"
            f"{'' if native_available() else ' (' + native_load_error() + ')'}, "
            f"CUDA kernels: {native_cuda_built()}, CUDA device: {torch.cuda.is_available()}, "
            f"GCNPRUNE_REQUIRE_NATIVE={int(REQUIRE_NATIVE)}")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_cuda"):
        require_cuda(native=True)
    elif item.get_closest_marker("needs_native"):
        require_native()
    if item.get_closest_marker("needs_cuda_device"):
        require_cuda(native=False)


# ------------------------------------------------------------------------- devices and dtypes
# The device parameter: every device test runs on the CPU and, when the native CUDA kernels and
# a device are there, on CUDA (otherwise the CUDA case shows up as skipped).
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (the machine is shared; the kernels still run their
    parallel code paths, with one worker). Tests of the threading set their own count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = (torch.float16, torch.bfloat16)

# Tolerances for comparing a kernel with its reference, by the dtype the results are rounded to.
TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=8e-2),
}
# fp16/bf16 inputs whose results are computed and returned in float32 (widened exactly, so only
# the summation order differs from the reference).
WIDENED_TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def tolerances(dtype: torch.dtype, widened: bool = False) -> dict:
    """rtol/atol for torch.testing.assert_close of results computed from ``dtype`` inputs;
    ``widened``: half inputs whose results are float32."""
    if widened and dtype in HALF_DTYPES:
        return dict(WIDENED_TOLERANCE)
    return dict(TOLERANCES[dtype])


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------ sample inputs
@dataclasses.dataclass(frozen=True)
class SampleInput:
    """One argument tuple for an op (built on the CPU), a name for test ids and messages, the
    environment variables the op reads for it (e.g. GCNPRUNE_KNN_TILE) and free-form notes for
    the tests (``meta``)."""
    name: str
    args: tuple
    env: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def to(self, device: str | torch.device = "cpu", requires_grad: bool = False) -> tuple:
        """Fresh copies of the arguments on ``device`` with the same sizes, strides and storage
        offsets (non-contiguous samples stay non-contiguous); floating-point tensors get
        ``requires_grad`` when asked."""
        return tuple(copy_to(a, device, requires_grad) for a in self.args)

    def apply_env(self, monkeypatch) -> None:
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)

    def __str__(self) -> str:
        return self.name


def copy_to(a: Any, device: str | torch.device, requires_grad: bool = False) -> Any:
    """A copy of tensor ``a`` on ``device`` with the same sizes, strides and storage offset
    (``Tensor.to`` makes non-dense views contiguous); anything else is returned as is."""
    if not isinstance(a, torch.Tensor):
        return a
    flat = torch.empty(0, dtype=a.dtype).set_(a.untyped_storage())
    out = flat.to(device, copy=True).as_strided(a.shape, a.stride(), a.storage_offset())
    if requires_grad and a.is_floating_point():
        out.requires_grad_()
    return out


def sample_ids(samples: Iterable[SampleInput]) -> list[str]:
    return [s.name for s in samples]


# ----------------------------------------------------------------------------------- builders
def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded normal samples, drawn in float64 and rounded to ``dtype`` (leaves the global RNG
    alone, so sample lists can be built at collection time)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def random_csr(num_rows: int, num_cols: int, density: float = 0.3, dtype=torch.float32,
               seed: int = 0, empty_rows: bool = True, device="cpu") -> CSRGraph:
    """Sorted, duplicate-free random CSR [num_rows, num_cols] with positive values; with
    ``empty_rows`` every third row is emptied on purpose."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_rows, num_cols, generator=gen) < density
    if empty_rows and num_rows > 2:
        mask[::3] = False
    rows, cols = mask.nonzero(as_tuple=True)
    indptr = torch.zeros(num_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_rows), 0)
    values = (torch.rand(cols.numel(), generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    return CSRGraph(indptr, cols.contiguous(), values).to(device)
