"""The native ops on a chosen device (CUDA by default) at large shapes, against their peers.

    python benchmarks/bench_cuda_ops.py                        # CUDA, the large shapes
    python benchmarks/bench_cuda_ops.py --device cpu --quick   # toy shapes (the CPU check)
    python benchmarks/bench_cuda_ops.py --only spmm --jsonl out.jsonl --json rows.json

What is measured (median of CUDA-event timed runs after warm-up; wall clock on the CPU):

- the device's copy bandwidth (a device-to-device copy, bytes read + written), the ceiling the
  memory-bound ops are compared with, next to the datasheet figure (``--peak-gbps``, 4800 GB/s for
  an H200);
- ``gap_stats``: effective GB/s (bytes of x read once / time), as % of the datasheet and of the
  measured copy bandwidth; against the plain-PyTorch reference and one ``x.sum()``;
- ``knn_graph`` (C up to 65536, B = 512, k = 8, float32 and bfloat16, one segment and a
  pipeline-like batch of segments) and ``cosine_similarity`` against the dense reference
  (cosine GEMM + topk + symmetrize);
- ``spmm`` forward and forward + backward at 1M nodes (8-16 neighbours each) against
  ``torch.sparse.mm`` (CSR), scatter propagation (index_select + index_add_) and torch_geometric's
  MessagePassing when installed; against a dense matmul at 16k nodes; ``gcn_norm`` against the
  reference and torch_geometric's ``gcn_norm``.

Rows have run.py's keys (op, shape, impl_ms, ref_name, ref_ms, ratio = ref_ms / impl_ms, note) plus
``device`` and, where it applies, ``gbps`` / ``pct_peak``. ``--jsonl`` appends every row to a file
as soon as it is measured (a run cut short keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Callable, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from common import format_table, measure, random_graph, row, spmm_peers  # noqa: E402  (benchmarks/common.py: the timer)
from gcnprune_fast.ops import (CSRGraph, cosine_similarity, gap_stats, gcn_norm,  # noqa: E402
                               knn_graph, native_available, spmm)
from gcnprune_fast.ops import reference  # noqa: E402
from gcnprune_fast.ops._native import native_cuda_available  # noqa: E402
from gcnprune_fast.ops.reference import graph as ref_graph  # noqa: E402
from gcnprune_fast.ops.reference import sparse as ref_sparse  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
H200_GBPS = 4800.0
FAMILIES = ("bandwidth", "gap_stats", "knn_graph", "spmm")
_BUDGET_S = 2.0  # seconds of repeats per timed function (0.3 with --quick)


# ------------------------------------------------------------------------------------------------
# timing


def time_ms(fn: Callable[[], object], device: str, repeats: int = 10, warmup: int = 2,
            budget_s: Optional[float] = None) -> float:
    """Median time of one fn() call in ms, by ``benchmarks/common.measure`` (device synchronized
    around every timed run); calls under a millisecond are batched ``inner`` to a run so that the
    synchronization does not count. Slow functions get fewer repeats (about ``budget_s`` in all;
    over the budget, the first call is the figure)."""
    budget_s = _BUDGET_S if budget_s is None else budget_s
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if first > budget_s:  # too slow to repeat: the first call is the figure
        return first * 1e3
    inner = max(1, min(20, int(1e-3 / max(first, 1e-6)))) if device.startswith("cuda") else 1
    return measure(fn, repeats=repeats, warmup=max(warmup - 1, 0), device=device, inner=inner,
                   budget_s=budget_s).median_ms


def _try_ms(fn, device, **kw):
    """(ms, None) or (None, first line of the error) -- peers may run out of memory or refuse."""
    try:
        return time_ms(fn, device, **kw), None
    except (RuntimeError, NotImplementedError, MemoryError) as exc:  # includes CUDA OOM
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        return None, str(exc).strip().splitlines()[0][:140]


class Rows:
    """Collects rows; appends each to the JSON-lines file at once and prints it."""

    def __init__(self, device: str, jsonl: Optional[str], peak_gbps: float):
        self.rows: List[dict] = []
        self.device, self.jsonl, self.peak_gbps = device, jsonl, peak_gbps
        self.copy_gbps: Optional[float] = None

    def add(self, op, shape, impl_ms, ref_name=None, ref_ms=None, note="", **extra) -> dict:
        row_ = row(op, shape, impl_ms, ref_name, ref_ms, note, device=self.device, **extra)
        self.rows.append(row_)
        if self.jsonl:
            with open(self.jsonl, "a") as fh:
                fh.write(json.dumps(dict(stage="bench_ops", **row_)) + "\n")
        ratio = f"{row_['ratio']:.2f}x" if row_["ratio"] else "-"
        ref = f"{ref_ms:.3f}" if ref_ms is not None else "-"
        print(f"  {op:<22} {shape:<34} {impl_ms if impl_ms is None else round(impl_ms, 3)!s:>10} ms"
              f" | {ref_name or '-'}: {ref} ms ({ratio}) {note}", flush=True)
        return row_

    def bandwidth_note(self, nbytes: int, ms: float) -> tuple:
        gbps = nbytes / ms / 1e6
        parts = [f"{gbps:.0f} GB/s"]
        pct = None
        if self.device.startswith("cuda"):
            pct = 100.0 * gbps / self.peak_gbps
            parts.append(f"{pct:.0f}% of {self.peak_gbps:.0f} GB/s datasheet")
        if self.copy_gbps:
            parts.append(f"{100.0 * gbps / self.copy_gbps:.0f}% of measured copy")
        return gbps, pct, ", ".join(parts)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# families


def bench_bandwidth(out: Rows, quick: bool) -> None:
    dev = out.device
    n = (1 << 24 if quick else 1 << 28) if dev.startswith("cuda") else (1 << 22 if quick else 1 << 25)
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), dev, repeats=20)
    nbytes = 2 * src.numel() * 4
    out.copy_gbps = nbytes / ms / 1e6
    gbps, pct, _ = out.bandwidth_note(nbytes, ms)
    out.add("copy (read + write)", f"{nbytes / 2**30:.2f} GiB moved", ms,
            note=f"{gbps:.0f} GB/s" + (f" = {pct:.0f}% of datasheet" if pct else ""),
            gbps=gbps, pct_peak=pct)
    del src, dst


def bench_gap_stats(out: Rows, quick: bool) -> None:
    dev = out.device
    cuda = dev.startswith("cuda")
    if cuda:
        shapes = [(64, 256, 16, 16)] if quick else [(256, 1024, 28, 28), (512, 2048, 7, 7)]
    else:
        shapes = [(16, 64, 16, 16)] if quick else [(256, 256, 16, 16)]
    dtypes = [torch.float32, torch.bfloat16]
    g = torch.Generator(device=dev).manual_seed(0)
    for shape in shapes:
        for dtype in dtypes:
            base = torch.randn(*shape, device=dev, generator=g).relu_().to(dtype)
            for layout in ("contiguous", "channels_last"):
                x = base if layout == "contiguous" else base.contiguous(
                    memory_format=torch.channels_last)
                nbytes = x.numel() * x.element_size()
                ms = time_ms(lambda: gap_stats(x), dev)
                sum_ms = time_ms(lambda: x.sum(), dev)
                ref_ms, err = _try_ms(lambda: reference.gap_stats(x), dev, repeats=5)
                gbps, pct, note = out.bandwidth_note(nbytes, ms)
                note += f"; x.sum() {sum_ms:.3f} ms, impl/sum {ms / sum_ms:.2f}x"
                if err:
                    note += f"; reference failed: {err}"
                out.add("gap_stats", f"{list(shape)} {layout} {str(dtype)[6:]}", ms,
                        "reference.gap_stats", ref_ms, note, gbps=gbps, pct_peak=pct,
                        sum_ms=sum_ms)
                del x
            del base
            if cuda:
                torch.cuda.empty_cache()


def _segments(total: int, device) -> torch.Tensor:
    """Pipeline-like group sizes (128..2048 channels) summing to about ``total``."""
    sizes, cycle, i = [], [256, 512, 1024, 512, 2048, 128, 1024], 0
    while sum(sizes) < total:
        sizes.append(cycle[i % len(cycle)])
        i += 1
    return torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0).to(device)


def bench_knn_graph(out: Rows, quick: bool) -> None:
    dev = out.device
    cuda = dev.startswith("cuda")
    b, k = (512, 8) if not (quick and not cuda) else (32, 8)
    if cuda:
        sizes = [4096, 16384] if quick else [4096, 16384, 65536]
    else:
        sizes = [256, 1024] if quick else [1024, 4096]
    g = torch.Generator(device=dev).manual_seed(1)
    for c in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            if dtype == torch.bfloat16 and c != sizes[-1]:
                continue
            f = torch.randn(c, b, device=dev, generator=g).to(dtype)
            flops = 2.0 * c * c * b
            ms = time_ms(lambda: knn_graph(f, k), dev, repeats=5)
            ref_ms, err = _try_ms(lambda: ref_graph.knn_graph(f, k), dev, repeats=3)
            note = f"{flops / ms / 1e9:.1f} TFLOP/s of similarity GEMM"
            if err:
                note += f"; reference failed: {err}"
            out.add("knn_graph", f"C={c} B={b} k={k} {str(dtype)[6:]}", ms,
                    "dense cosine + topk + symmetrize", ref_ms, note)
            del f
            if cuda:
                torch.cuda.empty_cache()
    # the pipeline's call: one batched call over many groups, centered
    total = 36416 if (cuda and not quick) else sizes[-1]
    seg = _segments(total, dev)
    c = int(seg[-1])
    f = torch.randn(c, b, device=dev, generator=g)
    ms = time_ms(lambda: knn_graph(f, k, seg, center=True), dev, repeats=5)
    ref_ms, err = _try_ms(lambda: ref_graph.knn_graph(f, k, seg, True), dev, repeats=3)
    out.add("knn_graph segments", f"C={c} in {seg.numel() - 1} groups B={b}", ms,
            "reference per segment", ref_ms, err or "")
    c = sizes[1] if len(sizes) > 1 else sizes[0]
    f = torch.randn(c, b, device=dev, generator=g)
    ms = time_ms(lambda: cosine_similarity(f), dev)
    ref_ms, err = _try_ms(lambda: ref_graph.cosine_similarity(f), dev)
    out.add("cosine_similarity", f"C={c} B={b} float32", ms, "normalize + xn @ xn.T", ref_ms,
            err or "")


def bench_spmm(out: Rows, quick: bool) -> None:
    dev = out.device
    cuda = dev.startswith("cuda")
    n = (100_000 if quick else 1_000_000) if cuda else (4_000 if quick else 100_000)
    graph = random_graph(n, device=dev)
    nnz = graph.nnz
    peers = spmm_peers(graph, n)

    def ours(values, x):
        return spmm(CSRGraph(graph.indptr, graph.indices, values), x)

    for d in ((32,) if quick else (32, 64)):
        g = torch.Generator(device=dev).manual_seed(d)
        x0 = torch.randn(n, d, device=dev, generator=g)
        grad_out = torch.randn(n, d, device=dev, generator=g)
        for mode in ("fwd", "fwd+bwd"):
            def timed(fn, mode=mode, x0=x0, grad_out=grad_out):
                if mode == "fwd":
                    def step():
                        with torch.no_grad():
                            fn(graph.values, x0)
                    return _try_ms(step, dev, repeats=10)
                values = graph.values.clone().requires_grad_()
                x = x0.clone().requires_grad_()

                def step():
                    values.grad = x.grad = None
                    fn(values, x).backward(grad_out)
                return _try_ms(step, dev, repeats=10)

            ms, err = timed(ours)
            if err:
                out.add(f"spmm {mode}", f"N={n} nnz={nnz} d={d}", None, note=f"FAILED: {err}")
                continue
            extra, note = {}, ""
            if mode == "fwd":
                # indptr + (index, value) per edge + the gathered x rows + the output
                nbytes = 8 * (n + 1) + 12 * nnz + 4 * d * nnz + 4 * d * n
                gbps, pct, note = out.bandwidth_note(nbytes, ms)
                note = "bytes with every gathered x row: " + note
                extra = dict(gbps=gbps, pct_peak=pct)
            for name, fn in peers.items():
                ref_ms, err = timed(fn)
                out.add(f"spmm {mode}", f"N={n} nnz={nnz} d={d}", ms, name, ref_ms,
                        (note + (f"; peer failed: {err}" if err else "")).strip("; "), **extra)
        del x0, grad_out
    # against a dense matmul where the dense matrix fits
    nd = 16384 if cuda and not quick else 1024
    small = random_graph(nd, seed=1, device=dev)
    dense = small.to("cpu").to_dense(nd).to(dev)
    x = torch.randn(nd, 64, device=dev)
    ms = time_ms(lambda: spmm(small, x), dev)
    ref_ms = time_ms(lambda: dense @ x, dev)
    out.add("spmm fwd", f"N={nd} nnz={small.nnz} d=64", ms, "dense A @ x (float32)", ref_ms)
    del dense
    # gcn_norm
    ms = time_ms(lambda: gcn_norm(graph), dev, repeats=10)
    ref_ms, err = _try_ms(lambda: ref_sparse.gcn_norm(graph), dev, repeats=5)
    out.add("gcn_norm", f"N={n} nnz={nnz}", ms, "reference (torch)", ref_ms, err or "")
    try:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm

        edge_index = torch.stack([ref_sparse.row_ids(graph.indptr), graph.indices])
        ref_ms, err = _try_ms(lambda: pyg_gcn_norm(edge_index, graph.values, n,
                                                   add_self_loops=True), dev, repeats=5)
        out.add("gcn_norm", f"N={n} nnz={nnz}", ms, "torch_geometric gcn_norm (COO)", ref_ms,
                err or "")
    except Exception as exc:  # noqa: BLE001 -- not installed or broken: note it and go on
        print(f"  (torch_geometric gcn_norm unavailable: {str(exc).splitlines()[0][:100]})")


# ------------------------------------------------------------------------------------------------


def table_rows(quick: bool = False, device: Optional[str] = None, only=None,
               jsonl: Optional[str] = None, peak_gbps: float = H200_GBPS) -> List[dict]:
    """Rows with run.py's keys (+ device, gbps, pct_peak); default device: CUDA when present."""
    global _BUDGET_S
    _BUDGET_S = 0.3 if quick else 2.0
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Rows(device, jsonl, peak_gbps)
    for family in only or FAMILIES:
        t0 = time.perf_counter()
        print(f"[bench_cuda_ops] {family} on {device}", flush=True)
        {"bandwidth": bench_bandwidth, "gap_stats": bench_gap_stats,
         "knn_graph": bench_knn_graph, "spmm": bench_spmm}[family](out, quick)
        _sync(device)
        print(f"[bench_cuda_ops] {family}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out.rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--quick", action="store_true", help="toy shapes")
    parser.add_argument("--only", nargs="*", choices=FAMILIES)
    parser.add_argument("--json", help="write all rows to this JSON file at the end")
    parser.add_argument("--jsonl", help="append each row to this JSON-lines file as measured")
    parser.add_argument("--peak-gbps", type=float, default=H200_GBPS,
                        help="datasheet memory bandwidth in GB/s (H200: 4800)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not native_cuda_available():
        print("WARNING: the native CUDA kernels are not loaded; CUDA rows time the reference "
              "fallback", flush=True)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"# bench_cuda_ops: torch {torch.__version__}, device {name}, native="
          f"{native_available()}, native cuda={native_cuda_available()}", flush=True)
    rows = table_rows(args.quick, device, args.only, args.jsonl, args.peak_gbps)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
