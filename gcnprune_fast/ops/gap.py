"""Batched global-average-pool statistics of activations: :func:`gap_stats`, :class:`GapAccumulator`.

``gap_stats(x)`` makes one pass over an activation ``x`` ([N, C, H, W] contiguous or
channels_last, [N, C, L] or [N, C]; float32, float16, bfloat16 or float64) and returns a
:class:`GapStats`: the per-sample global average ``gap`` [N, C] and, per channel over all N*H*W
elements, ``mean``, ``var`` (population), ``abs_mean``, ``zero_frac`` and ``max`` [C].
Accumulation is float32 (float64 for float64 input), results are float32 (float64).

The statistics carry no gradient (they are computed under ``torch.no_grad`` from ``x.detach()``).

Dispatch: ``torch.ops.gcnprune.gap_stats`` (native CPU/CUDA kernels, one pass, numerically robust
variance from per-chunk two-pass moments merged with the parallel (Chan) formula) when the compiled
library is loaded, else :func:`gcnprune_fast.ops.reference.gap_stats` (several passes).
Degenerate inputs (N = 0, H*W = 0, NaN/inf) are described in the reference's docstring.
"""
from __future__ import annotations

import math

import torch

from gcnprune_fast.ops import _native
from gcnprune_fast.ops.reference import gap as _reference
from gcnprune_fast.ops.reference.gap import GapStats, accumulation_dtype, check_gap_input

__all__ = ["GapStats", "GapAccumulator", "gap_stats"]


def gap_stats(x: torch.Tensor) -> GapStats:
    """Per-sample GAP and per-channel moments of ``x`` in one pass.

    Args:
        x: activation [N, C, H, W] (contiguous, channels_last or any strides), [N, C, L] or
            [N, C]; float32, float16, bfloat16 or float64; CPU or CUDA.

    Returns:
        :class:`GapStats` ``(gap [N, C], mean [C], var [C], abs_mean [C], zero_frac [C], max [C])``,
        float32 (float64 for float64 input), on ``x.device``, without gradient. ``var`` is the
        population variance over the N*H*W elements of each channel.

    Raises:
        TypeError: ``x`` is not a tensor or has an unsupported dtype (e.g. an integer tensor).
        ValueError: ``x`` has a rank other than 2, 3 or 4.
    """
    check_gap_input(x)
    if _native.use_native(x):
        with torch.no_grad():
            return GapStats(*torch.ops.gcnprune.gap_stats(x.detach()))
    return _reference.gap_stats(x)


class GapAccumulator:
    """Streams :func:`gap_stats` over many batches of one activation.

    Moments are merged exactly with the parallel-variance (Chan et al.) formula in float64, maxima
    and zero counts too, so ``result()`` equals ``gap_stats`` of the concatenated batches up to
    rounding. The per-sample GAP rows are kept for the first ``max_samples`` samples (all when
    ``max_samples`` is None, none when it is 0).

    Example::

        acc = GapAccumulator(max_samples=512)
        for batch in activations:          # each [n_i, C, H, W]
            acc.update(batch)
        stats = acc.result()               # gap [min(512, sum n_i), C], moments [C]

    Batches may differ in N and in spatial size, not in C or device.
    """

    def __init__(self, max_samples: int | None = None):
        if max_samples is not None:
            if isinstance(max_samples, bool) or not isinstance(max_samples, int):
                raise TypeError(f"GapAccumulator: `max_samples` must be an int or None, got "
                                f"{type(max_samples).__name__}")
            if max_samples < 0:
                raise ValueError(f"GapAccumulator: `max_samples` must be >= 0, got {max_samples}")
        self.max_samples = max_samples
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._num_samples = 0
        self._num_elements = 0  # elements per channel seen so far (N * H * W summed over batches)
        self._channels: int | None = None
        self._device: torch.device | None = None
        self._out_dtype = torch.float32
        self._gap_rows: list[torch.Tensor] = []
        self._kept_rows = 0
        # float64 running state [C]
        self._sum = self._run_mean = self._m2 = self._abs_sum = self._zeros = self._max = None

    @property
    def count(self) -> int:
        """Number of samples (rows N summed over the updates) seen so far."""
        return self._num_samples

    num_samples = count

    @property
    def num_elements(self) -> int:
        """Number of elements per channel seen so far (sum of N * H * W)."""
        return self._num_elements

    @property
    def num_channels(self) -> int | None:
        """C of the accumulated activation, None before the first update."""
        return self._channels

    def update(self, x: torch.Tensor) -> "GapAccumulator":
        """Add a batch ``x`` ([N, C, ...], see :func:`gap_stats`); returns ``self``."""
        check_gap_input(x)
        c = x.shape[1]
        if self._channels is None:
            self._channels, self._device = c, x.device
            zeros = torch.zeros(c, dtype=torch.float64, device=x.device)
            self._sum, self._run_mean, self._m2 = zeros.clone(), zeros.clone(), zeros.clone()
            self._abs_sum, self._zeros = zeros.clone(), zeros.clone()
            self._max = torch.full((c,), float("-inf"), dtype=torch.float64, device=x.device)
        elif c != self._channels:
            raise ValueError(f"GapAccumulator.update: `x` has {c} channels (shape "
                             f"{tuple(x.shape)}) but earlier batches had {self._channels}")
        elif x.device != self._device:
            raise ValueError(f"GapAccumulator.update: `x` is on {x.device} but earlier batches "
                             f"were on {self._device}")
        if accumulation_dtype(x.dtype) == torch.float64:
            self._out_dtype = torch.float64
        n = x.shape[0]
        count_b = n * math.prod(x.shape[2:])
        if count_b == 0:
            if n > 0:  # zero spatial positions: NaN GAP rows, no elements to merge
                self._keep_rows(torch.full((n, c), float("nan"), dtype=torch.float64,
                                           device=x.device))
            self._num_samples += n
            return self

        stats = gap_stats(x)
        mean_b = stats.mean.double()
        count_a = self._num_elements
        total = count_a + count_b
        delta = mean_b - self._run_mean
        self._m2 += stats.var.double() * count_b + delta * delta * (count_a * count_b / total)
        self._run_mean += delta * (count_b / total)
        self._sum += mean_b * count_b
        self._abs_sum += stats.abs_mean.double() * count_b
        self._zeros += stats.zero_frac.double() * count_b
        # torch.maximum propagates NaN like gap_stats' max does
        self._max = torch.maximum(self._max, stats.max.double())
        self._num_elements = total
        self._num_samples += n
        self._keep_rows(stats.gap)
        return self

    def all_reduce(self, num_channels: int | None = None, device=None) -> "GapAccumulator":
        """Merge the moments of this accumulator with those of the same accumulator on every
        other rank of torch.distributed's default process group (a collective: every rank calls
        it, in the same order); afterwards every rank's :meth:`result` holds the moments of all
        the batches seen by all ranks. Exact: the parallel (Chan) variance formula over two
        all-reduces (counts and sums, then the centred second moments around the global mean),
        maxima by a max-reduce. GAP rows are not exchanged (each rank keeps its own).

        ``num_channels`` is needed on a rank that saw no batch; ``device`` is where the
        collectives run (default: the CUDA device for NCCL, else the CPU). A no-op without an
        initialized process group. Returns ``self``."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if dist.get_backend() == "nccl" else torch.device("cpu"))
        c = self._channels if self._channels is not None else num_channels
        if c is None:
            raise ValueError("GapAccumulator.all_reduce: this rank saw no batch; pass num_channels")
        f64 = dict(dtype=torch.float64, device=device)
        if self._channels is None:
            n, mean, m2 = 0, torch.zeros(c, **f64), torch.zeros(c, **f64)
            total_sum, abs_sum, zeros = (torch.zeros(c, **f64) for _ in range(3))
            mx = torch.full((c,), float("-inf"), **f64)
        else:
            n, mean, m2 = self._num_elements, self._run_mean.to(device), self._m2.to(device)
            total_sum = self._sum.to(device)
            abs_sum, zeros, mx = self._abs_sum.to(device), self._zeros.to(device), self._max.to(device)
        # 1) element and sample counts, sums (the global mean), |x| sums, zero counts
        head = torch.tensor([float(n), float(self._num_samples),
                             1.0 if self._out_dtype == torch.float64 else 0.0], **f64)
        packed = torch.cat([head, total_sum, abs_sum, zeros])
        dist.all_reduce(packed)
        total, samples = int(packed[0].item()), int(packed[1].item())
        sums = packed[3:3 + c]
        g_mean = sums / total if total > 0 else torch.zeros(c, **f64)
        # 2) centred second moments: M2 = sum_r [M2_r + n_r (mean_r - mean)^2]
        second = m2 + (mean - g_mean) ** 2 * n if n > 0 else torch.zeros(c, **f64)
        dist.all_reduce(second)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        out_dev = self._device if self._device is not None else torch.device(device)
        self._channels, self._device = c, out_dev
        self._num_elements, self._num_samples = total, samples
        self._run_mean, self._m2 = g_mean.to(out_dev), second.to(out_dev)
        self._sum = sums.to(out_dev)
        self._abs_sum = packed[3 + c:3 + 2 * c].to(out_dev)
        self._zeros = packed[3 + 2 * c:].to(out_dev)
        self._max = mx.to(out_dev)
        if packed[2].item() > 0:
            self._out_dtype = torch.float64
        return self

    def _keep_rows(self, gap: torch.Tensor) -> None:
        room = gap.shape[0] if self.max_samples is None else self.max_samples - self._kept_rows
        if room <= 0:
            return
        rows = gap[:room]
        if rows.shape[0] < gap.shape[0]:
            rows = rows.clone()  # do not keep the whole batch's GAP alive through a view
        self._gap_rows.append(rows)
        self._kept_rows += rows.shape[0]

    def result(self) -> GapStats:
        """GapStats of everything seen so far: ``gap`` [min(count, max_samples), C] and the
        per-channel moments [C] (NaN when no element was seen), float32 (float64 if any batch
        was float64).

        Raises:
            RuntimeError: no batch was ever passed to :meth:`update` (C is unknown).
        """
        if self._channels is None:
            raise RuntimeError("GapAccumulator.result: no batch was added (call update(x) first)")
        dt, c = self._out_dtype, self._channels
        if self._gap_rows:
            gap = torch.cat([g.to(dt) for g in self._gap_rows], dim=0)
        else:
            gap = torch.empty((0, c), dtype=dt, device=self._device)
        if self._num_elements == 0:
            nan = torch.full((c,), float("nan"), dtype=dt, device=self._device)
            return GapStats(gap, nan, nan.clone(), nan.clone(), nan.clone(), nan.clone())
        count = float(self._num_elements)
        return GapStats(
            gap,
            (self._sum / count).to(dt),
            (self._m2 / count).clamp_min(0).to(dt),
            (self._abs_sum / count).to(dt),
            (self._zeros / count).to(dt),
            self._max.to(dt),
        )

    def __repr__(self) -> str:
        return (f"GapAccumulator(channels={self._channels}, count={self._num_samples}, "
                f"kept_rows={self._kept_rows}, max_samples={self.max_samples})")


def _register_fake() -> None:
    @torch.library.register_fake("gcnprune::gap_stats")
    def _gap_stats_fake(x):
        torch._check(x.dim() in (2, 3, 4), lambda: f"gap_stats: x must be 2-, 3- or 4-D, got "
                     f"{x.dim()}-D")
        acc = accumulation_dtype(x.dtype)
        n, c = x.shape[0], x.shape[1]
        gap = x.new_empty((n, c), dtype=acc)
        return (gap,) + tuple(x.new_empty((c,), dtype=acc) for _ in range(5))


if _native.native_available():
    _register_fake()
