"""Benchmark: native knn_graph / cosine_similarity / kl_similarity vs the plain-PyTorch
reference, same run.

knn_graph: B = 512 features, k = 8, C in {1024, 8192, 32768, 65536} (quick: {1024, 4096}); the
reference builds the dense C x C cosine matrix, takes topk and symmetrizes to CSR. At C = 65536
the dense matrix alone is 16 GB, so the reference is skipped and only the native time is given.
knn_graph kl (similarity="kl", C up to 32768): two rows per shape, against its dense reference
(skipped from C = 32768: several dense C x C matrices) and against the native cosine knn_graph
of the same shape (ratio = cosine ms / kl ms: the price of the KL similarity, two GEMMs and an exp
per pair instead of one GEMM). kl_similarity likewise at C = 4096.
Peak memory is the process's peak resident set growth during the call (Linux /proc; "n/a"
elsewhere).

Run: ``python benchmarks/bench_knn_graph.py [--quick]`` (uses all intra-op threads torch has).
"""
from __future__ import annotations

import sys

import torch

from common import PeakRSS, bench_main, measure, row
from gcnprune_fast.ops import cosine_similarity, kl_similarity, knn_graph, native_available
from gcnprune_fast.ops.reference import graph as ref

B = 512
K = 8
REF_SKIP_C = 65536  # dense reference matrix: 65536^2 * 4 bytes = 16 GB
KL_MAX_C = 32768  # knn_graph kl rows up to this C
KL_REF_SKIP_C = 32768  # the kl reference holds ~5 dense C x C matrices (20 GB at 32768)


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
        if c <= KL_MAX_C:
            rows += _kl_knn_rows(f, c, reps, impl, cosine_ms=impl_ms)
        del f
    f = torch.randn(4096, B, generator=gen)
    impl_ms, _ = _time(lambda: cosine_similarity(f), 3)
    ref_ms, _ = _time(lambda: ref.cosine_similarity(f), 3)
    rows.append(row("cosine_similarity", f"C=4096 B={B}", impl_ms, "normalize + xn @ xn.T",
                    ref_ms, f"{impl}; symmetric half GEMM + mirror"))
    kl_ms, _ = _time(lambda: kl_similarity(f), 3)
    kl_ref_ms, _ = _time(lambda: ref.kl_similarity(f), 3)
    rows.append(row("kl_similarity", f"C=4096 B={B}", kl_ms,
                    "z-score + softmax + P Z^T + exp (dense)", kl_ref_ms,
                    f"{impl}; symmetric half of two GEMMs + mirror"))
    rows.append(row("kl_similarity", f"C=4096 B={B}", kl_ms, "native cosine_similarity",
                    impl_ms, "ratio < 1: KL slower than the cosine"))
    return rows


def _kl_knn_rows(f: torch.Tensor, c: int, reps: int, impl: str, cosine_ms: float) -> list[dict]:
    """knn_graph(similarity="kl") against its reference and against the cosine's time."""
    shape = f"C={c} B={B} k={K}"
    impl_ms, impl_mem = _time(lambda: knn_graph(f, K, similarity="kl"), reps)
    note = f"{impl}; peak mem {impl_mem}"
    if c >= KL_REF_SKIP_C:
        ref_ms = None
        note += "; reference skipped (~5 dense C x C matrices)"
    else:
        ref_ms, ref_mem = _time(lambda: ref.knn_graph(f, K, similarity="kl"), reps)
        note += f" (reference {ref_mem})"
    return [row("knn_graph kl", shape, impl_ms, "dense kl + topk + symmetrize", ref_ms, note),
            row("knn_graph kl", shape, impl_ms, "native knn_graph cosine", cosine_ms,
                "ratio < 1: KL slower than the cosine")]


if __name__ == "__main__":
    sys.exit(bench_main(table_rows, __doc__))
