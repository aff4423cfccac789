"""Benchmark of gap_stats (all six outputs, one pass) against the plain-PyTorch reference
(several passes) and against one ``x.sum()`` over the same tensor (the bandwidth reference).

    python benchmarks/bench_gap_stats.py            # [256, C, 16, 16], C in 64..4096
    python benchmarks/bench_gap_stats.py --quick    # C in {64, 256}

Targets (issue #2, 2-core CPU): gap_stats <= 1.3x the time of x.sum(), and >= 3x faster than the
reference. The note column gives the effective bandwidth (bytes of x read once / time) and
impl / sum.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcnprune_fast.ops import gap_stats, native_available, reference  # noqa: E402
from gcnprune_fast.ops._native import native_cuda_available  # noqa: E402

BATCH, HW = 256, 16


def _median_ms(fn, repeats: int, device: str) -> float:
    """Median wall time of fn() in ms (after one warm-up call), synchronizing CUDA."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _rows_for(x: torch.Tensor, layout: str, device: str, repeats: int, ref_repeats: int) -> list:
    nbytes = x.numel() * x.element_size()
    impl_ms = _median_ms(lambda: gap_stats(x), repeats, device)
    sum_ms = _median_ms(lambda: x.sum(), repeats, device)
    ref_ms = _median_ms(lambda: reference.gap_stats(x), ref_repeats, device)
    shape = f"[{', '.join(map(str, x.shape))}] {layout} {str(x.dtype).replace('torch.', '')}"
    impl_name = "native" if native_available() and (device == "cpu" or native_cuda_available()) \
        else "reference(fallback)"
    return [{
        "op": f"gap_stats ({device}, {impl_name})",
        "shape": shape,
        "impl_ms": impl_ms,
        "ref_name": "reference.gap_stats",
        "ref_ms": ref_ms,
        "ratio": ref_ms / impl_ms,
        "note": (f"{nbytes / impl_ms / 1e6:.1f} GB/s; x.sum() {sum_ms:.3f} ms "
                 f"({nbytes / sum_ms / 1e6:.1f} GB/s); impl/sum = {impl_ms / sum_ms:.2f}x "
                 f"(target <= 1.3x)"),
    }]


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    args = parser.parse_args(argv)
    print(f"# gap_stats: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native={native_available()}")
    cols = ["op", "shape", "impl_ms", "ref_name", "ref_ms", "ratio", "note"]
    print(" | ".join(cols))
    for r in table_rows(quick=args.quick):
        print(" | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
