"""Plain-PyTorch reference of :func:`gcnprune_fast.ops.gap_stats`.

It defines the semantics the native kernels are tested against (and is the fallback when the
compiled library is unavailable). It makes several passes over ``x``; the native kernels make one.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class GapStats(NamedTuple):
    """Global-average-pool statistics of an activation ``x`` [N, C, *spatial].

    gap       [N, C]  per-sample global average over the spatial positions
    mean      [C]     per-channel mean over all N*H*W elements
    var       [C]     per-channel population variance (divides by N*H*W)
    abs_mean  [C]     per-channel mean of |x|
    zero_frac [C]     per-channel fraction of elements exactly equal to 0 (in [0, 1])
    max       [C]     per-channel maximum

    All float32 (float64 when ``x`` is float64); they carry no gradient.
    """

    gap: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    abs_mean: torch.Tensor
    zero_frac: torch.Tensor
    max: torch.Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for float32/float16/bfloat16 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_gap_input(x, name: str = "x") -> None:
    """Raise a clear TypeError/ValueError unless ``x`` is a [N, C], [N, C, L] or [N, C, H, W]
    tensor of a supported floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gap_stats: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"gap_stats: `{name}` must have dtype float32, float16, bfloat16 or float64, got "
            f"{x.dtype}")
    if x.dim() not in (2, 3, 4):
        raise ValueError(
            f"gap_stats: `{name}` must have shape [N, C], [N, C, L] or [N, C, H, W], got "
            f"{x.dim()} dims with shape {tuple(x.shape)}")


def gap_stats(x: torch.Tensor) -> GapStats:
    """Reference GAP statistics of ``x`` ([N, C], [N, C, L] or [N, C, H, W]; any layout).

    Several passes, accumulation in float32 (float64 for float64 input). Semantics of the
    degenerate cases, shared with the native kernels:

    - N = 0: ``gap`` is empty [0, C] and every per-channel statistic is NaN (no elements).
    - H*W = 0 (or L = 0): ``gap`` is NaN [N, C] and every per-channel statistic is NaN.
    - NaN in channel c: ``mean``, ``var``, ``abs_mean`` and ``max`` of c are NaN, and so is
      ``gap[n, c]`` for the samples n that hold a NaN; ``zero_frac`` stays finite.
    - +-inf: ``mean``/``gap``/``abs_mean``/``max`` follow IEEE sums (inf, or NaN for +inf and
      -inf together) and ``var`` of that channel is NaN.
    """
    check_gap_input(x)
    acc = accumulation_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    spatial = math.prod(x.shape[2:])
    with torch.no_grad():
        xf = x.detach().reshape(n, c, spatial).to(acc)
        count = n * xf.shape[2]
        gap = xf.mean(dim=2)
        if count == 0 or c == 0:
            nan = torch.full((c,), float("nan"), dtype=acc, device=x.device)
            return GapStats(gap, nan, nan.clone(), nan.clone(), nan.clone(), nan.clone())
        mean = xf.sum(dim=(0, 2)) / count
        var = xf.var(dim=(0, 2), correction=0)
        abs_mean = xf.abs().sum(dim=(0, 2)) / count
        zero_frac = (xf == 0).sum(dim=(0, 2)).to(acc) / count
        maximum = xf.amax(dim=(0, 2))
    return GapStats(gap, mean, var, abs_mean, zero_frac, maximum)
