"""Benchmark: native knn_graph / cosine_similarity vs the plain-PyTorch reference, same run.

knn_graph: B = 512 features, k = 8, C in {1024, 8192, 32768, 65536} (quick: {1024, 4096}); the
reference builds the dense C x C cosine matrix, takes topk and symmetrizes to CSR. At C = 65536
the dense matrix alone is 16 GB, so the reference is skipped and only the native time is given.
Peak memory is the process's peak resident set growth during the call (Linux /proc; "n/a"
elsewhere).

Run: ``python benchmarks/bench_knn_graph.py [--quick]`` (uses all intra-op threads torch has).
"""
from __future__ import annotations

import sys

import torch

from common import PeakRSS, bench_main, measure, row
from gcnprune_fast.ops import cosine_similarity, knn_graph, native_available
from gcnprune_fast.ops.reference import graph as ref

B = 512
K = 8
REF_SKIP_C = 65536  # dense reference matrix: 65536^2 * 4 bytes = 16 GB


def _time(fn, repeats: int) -> tuple[float, PeakRSS]:
    """Best wall time in ms over ``repeats`` runs (no warm-up: the peak memory is the first
    run's too), and the peak RSS growth during them."""
    probe = PeakRSS()
    return measure(fn, repeats=repeats, warmup=0, around=probe.run).min_ms, probe


def table_rows(quick: bool = False) -> list[dict]:
    """Rows with keys op, shape, impl_ms, ref_name, ref_ms, ratio (= ref_ms / impl_ms), note."""
    impl = "native" if native_available() else "reference (native not built)"
    sizes = [1024, 4096] if quick else [1024, 8192, 32768, 65536]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for c in sizes:
        f = torch.randn(c, B, generator=gen)
        reps = 3 if c <= 8192 else 1
        impl_ms, impl_mem = _time(lambda: knn_graph(f, K), reps)
        note = f"{impl}; peak mem {impl_mem}"
        if c >= REF_SKIP_C:
            ref_ms = None
            note += "; reference OOM (16 GB dense)"
        else:
            ref_ms, ref_mem = _time(lambda: ref.knn_graph(f, K), reps)
            note += f" (reference {ref_mem})"
        rows.append(row("knn_graph", f"C={c} B={B} k={K}", impl_ms,
                        "dense cosine + topk + symmetrize", ref_ms, note))
        del f
    f = torch.randn(4096, B, generator=gen)
    impl_ms, _ = _time(lambda: cosine_similarity(f), 3)
    ref_ms, _ = _time(lambda: ref.cosine_similarity(f), 3)
    rows.append(row("cosine_similarity", f"C=4096 B={B}", impl_ms, "normalize + xn @ xn.T",
                    ref_ms, f"{impl}; symmetric half GEMM + mirror"))
    return rows


if __name__ == "__main__":
    sys.exit(bench_main(table_rows, __doc__))
