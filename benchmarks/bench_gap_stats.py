"""Benchmark of gap_stats (all six outputs, one pass) against the plain-PyTorch reference
(several passes) and against one ``x.sum()`` over the same tensor (the bandwidth reference).

    python benchmarks/bench_gap_stats.py            # [256, C, 16, 16], C in 64..4096
    python benchmarks/bench_gap_stats.py --quick    # C in {64, 256}

Targets (issue #2, 2-core CPU): gap_stats <= 1.3x the time of x.sum(), and >= 3x faster than the
reference. The note column gives the effective bandwidth (bytes of x read once / time) and
impl / sum.
"""
from __future__ import annotations

import gc
import sys

import torch

from common import bench_main, measure, row
from gcnprune_fast.ops import gap_stats, native_available, reference
from gcnprune_fast.ops._native import native_cuda_available

BATCH, HW = 256, 16


def _rows_for(x: torch.Tensor, layout: str, device: str, repeats: int, ref_repeats: int) -> list:
    nbytes = x.numel() * x.element_size()
    impl_ms = measure(lambda: gap_stats(x), repeats=repeats, device=device).median_ms
    sum_ms = measure(lambda: x.sum(), repeats=repeats, device=device).median_ms
    ref_ms = measure(lambda: reference.gap_stats(x), repeats=ref_repeats, device=device).median_ms
    shape = f"[{', '.join(map(str, x.shape))}] {layout} {str(x.dtype).replace('torch.', '')}"
    impl_name = "native" if native_available() and (device == "cpu" or native_cuda_available()) \
        else "reference(fallback)"
    return [row(f"gap_stats ({device}, {impl_name})", shape, impl_ms, "reference.gap_stats",
                ref_ms, f"{nbytes / impl_ms / 1e6:.1f} GB/s; x.sum() {sum_ms:.3f} ms "
                        f"({nbytes / sum_ms / 1e6:.1f} GB/s); impl/sum = {impl_ms / sum_ms:.2f}x "
                        f"(target <= 1.3x)")]


def table_rows(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run.py: keys op, shape, impl_ms, ref_name, ref_ms, ratio
    (= ref_ms / impl_ms), note (GB/s and the comparison with one x.sum())."""
    channels = [64, 256] if quick else [64, 256, 1024, 4096]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for c in channels:
            gen = torch.Generator().manual_seed(0)
            big = c * BATCH * HW * HW >= 2**26
            repeats = 5 if big else 15
            ref_repeats = 3 if big else 7
            x = torch.randn(BATCH, c, HW, HW, generator=gen).relu_().to(device)
            rows += _rows_for(x, "contiguous", device, repeats, ref_repeats)
            x = x.to(memory_format=torch.channels_last)
            gc.collect()
            rows += _rows_for(x, "channels_last", device, repeats, ref_repeats)
            del x
            gc.collect()
    return rows


if __name__ == "__main__":
    sys.exit(bench_main(table_rows, __doc__))
