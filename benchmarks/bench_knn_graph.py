"""Benchmark: native knn_graph / cosine_similarity vs the plain-PyTorch reference, same run.

knn_graph: B = 512 features, k = 8, C in {1024, 8192, 32768, 65536} (quick: {1024, 4096}); the
reference builds the dense C x C cosine matrix, takes topk and symmetrizes to CSR. At C = 65536
the dense matrix alone is 16 GB, so the reference is skipped and only the native time is given.
Peak memory is the process's peak resident set growth during the call (Linux /proc; "n/a"
elsewhere).

Run: ``python benchmarks/bench_knn_graph.py [--quick]`` (uses all intra-op threads torch has).
"""
from __future__ import annotations

import argparse
import gc
import time

import torch

from gcnprune_fast.ops import cosine_similarity, knn_graph, native_available
from gcnprune_fast.ops.reference import graph as ref

B = 512
K = 8
REF_SKIP_C = 65536  # dense reference matrix: 65536^2 * 4 bytes = 16 GB


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _time(fn, repeats: int) -> tuple[float, float | None]:
    """Best wall time in ms over ``repeats`` runs, and the peak RSS growth in MB."""
    gc.collect()
    best = float("inf")
    peak = None
    for _ in range(repeats):
        base = _rss_mb("VmRSS") if _reset_peak_rss() else None
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
        hwm = _rss_mb("VmHWM")
        if base is not None and hwm is not None:
            peak = max(peak or 0.0, hwm - base)
    return best, peak


def _mem(mb: float | None) -> str:
    return "n/a" if mb is None else (f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB")


def _row(op, shape, impl_ms, ref_name, ref_ms, note):
    return {"op": op, "shape": shape, "impl_ms": impl_ms, "ref_name": ref_name, "ref_ms": ref_ms,
            "ratio": (ref_ms / impl_ms) if (ref_ms is not None and impl_ms) else None,
            "note": note}


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
        note = f"{impl}; peak mem {_mem(impl_mem)}"
        if c >= REF_SKIP_C:
            ref_ms = None
            note += "; reference OOM (16 GB dense)"
        else:
            ref_ms, ref_mem = _time(lambda: ref.knn_graph(f, K), reps)
            note += f" (reference {_mem(ref_mem)})"
        rows.append(_row("knn_graph", f"C={c} B={B} k={K}", impl_ms,
                         "dense cosine + topk + symmetrize", ref_ms, note))
        del f
    f = torch.randn(4096, B, generator=gen)
    impl_ms, _ = _time(lambda: cosine_similarity(f), 3)
    ref_ms, _ = _time(lambda: ref.cosine_similarity(f), 3)
    rows.append(_row("cosine_similarity", f"C=4096 B={B}", impl_ms, "normalize + xn @ xn.T",
                     ref_ms, f"{impl}; symmetric half GEMM + mirror"))
    return rows


def _fmt(v):
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = table_rows(quick=args.quick)
    cols = ["op", "shape", "impl_ms", "ref_name", "ref_ms", "ratio", "note"]
    table = [[_fmt(r[col]) for col in cols] for r in rows]
    widths = [max(len(col), *(len(t[i]) for t in table)) for i, col in enumerate(cols)]
    print("  ".join(col.ljust(w) for col, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


if __name__ == "__main__":
    main()
