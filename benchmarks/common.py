"""What every benchmark shares: one timer, the row format of ``benchmarks/run.py`` and its table,
a peak-memory probe and the standalone command line of a ``bench_<family>.py`` module.

Rows are dicts with the keys of :data:`COLUMNS`: op, shape, impl_ms (ours), ref_name, ref_ms (the
peer / reference), ratio (= ref_ms / impl_ms, > 1 when ours is faster), note. Build them with
:func:`row`.

Importing this module also puts the repository root on ``sys.path`` (in-place builds run without
an install).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import platform
import statistics
import sys
import time
from typing import Callable, ContextManager, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

COLUMNS = ("op", "shape", "impl_ms", "ref_name", "ref_ms", "ratio", "note")


# ------------------------------------------------------------------------------------ the timer
@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call times in ms over the timed runs: median and min of the wall time, median of the
    process CPU time (all threads; with one thread the compute time, robust on a loaded machine)."""
    median_ms: float
    min_ms: float
    cpu_median_ms: float
    runs: int


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, repeats: int = 7, warmup: int = 1,
            device: Optional[str | torch.device] = None, inner: int = 1,
            budget_s: Optional[float] = None,
            around: Optional[Callable[[], ContextManager]] = None) -> Timing:
    """Times ``fn()``.

    Args:
        repeats: timed runs (the statistics are over these).
        warmup: untimed calls first (compilation, caches, allocator).
        device: the device ``fn`` works on; CUDA is synchronized before and after every run.
        inner: calls per timed run (for calls too short to time one by one); times are per call.
        budget_s: cap on the total timed seconds: a slow ``fn`` gets fewer runs (at least one)
            and, when its first call takes over a tenth of the budget, no further warm-up. The
            first warm-up call (made even with ``warmup=0``) gives the estimate.
        around: a context-manager factory entered around every timed run, outside the clock
            (e.g. :meth:`PeakRSS.run`).
    """
    gc.collect()
    first = None
    for i in range(max(warmup, 1 if budget_s is not None else 0)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - t0
            if budget_s is not None and first > 0.1 * budget_s:
                break
    if budget_s is not None:
        repeats = max(1, min(repeats, int(budget_s / max(first * inner, 1e-9))))
    around = around or contextlib.nullcontext
    wall, cpu = [], []
    for _ in range(repeats):
        with around():
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            wall.append((time.perf_counter() - t0) * 1e3 / inner)
            cpu.append((time.process_time() - c0) * 1e3 / inner)
    return Timing(statistics.median(wall), min(wall), statistics.median(cpu), repeats)


def time_ms(fn: Callable[[], object], **kwargs) -> float:
    """Median wall time of ``fn()`` in ms (:func:`measure`'s arguments)."""
    return measure(fn, **kwargs).median_ms


class PeakRSS:
    """Peak resident-set growth of this process during the timed runs (Linux /proc; None
    elsewhere): ``measure(fn, around=probe.run)``, then ``probe.peak_mb``."""

    def __init__(self):
        self.peak_mb: Optional[float] = None

    @staticmethod
    def _read_mb(field: str) -> Optional[float]:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    @contextlib.contextmanager
    def run(self):
        base = self._read_mb("VmRSS") if self._reset() else None
        yield
        hwm = self._read_mb("VmHWM")
        if base is not None and hwm is not None:
            self.peak_mb = max(self.peak_mb or 0.0, hwm - base)

    def __str__(self) -> str:
        mb = self.peak_mb
        return "n/a" if mb is None else (f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB")


# ------------------------------------------------------------------------------------------ rows
def row(op: str, shape: str, impl_ms: Optional[float], ref_name: str, ref_ms: Optional[float],
        note: str = "", **extra) -> dict:
    """One table row; ratio = ref_ms / impl_ms (None when either is missing)."""
    ratio = ref_ms / impl_ms if (ref_ms is not None and impl_ms) else None
    return dict(op=op, shape=shape, impl_ms=impl_ms, ref_name=ref_name, ref_ms=ref_ms,
                ratio=ratio, note=note, **extra)


def _fmt(v, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table with the :data:`COLUMNS`."""
    cells = [[_fmt(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row_[i]) for row_ in cells)) if cells else len(c)
              for i, c in enumerate(COLUMNS)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(cells_, widths)) + " |"
              for cells_ in cells]
    return "\n".join(lines)


def header(title: str) -> str:
    """One line naming the run's environment."""
    from gcnprune_fast.ops import native_available

    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"# {title}: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, native={native_available()}, cuda={cuda}")


def bench_main(table_rows: Callable[..., list], doc: Optional[str], argv=None) -> int:
    """Command line of a ``bench_<family>.py`` run on its own: ``[--quick]``, prints the table."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    args = parser.parse_args(argv)
    title = (doc or "benchmark").strip().splitlines()[0]
    print(header(title))
    print(format_table(table_rows(quick=args.quick)))
    return 0


# --------------------------------------------------------------------------------------- inputs
def random_graph(num_nodes: int, min_deg: int = 8, max_deg: int = 16, seed: int = 0,
                 device="cpu"):
    """CSRGraph with min_deg..max_deg distinct random neighbours per node (sorted columns, random
    float32 values), built on ``device``: the spmm / gcn_norm benchmark graph."""
    from gcnprune_fast.ops import CSRGraph

    gen = torch.Generator(device=device).manual_seed(seed)
    deg = torch.randint(min_deg, max_deg + 1, (num_nodes,), generator=gen, device=device)
    rows = torch.repeat_interleave(torch.arange(num_nodes, device=device), deg)
    cols = torch.randint(0, num_nodes, (rows.numel(),), generator=gen, device=device)
    key = torch.unique(rows * num_nodes + cols)  # sorted, duplicate-free
    rows, cols = key // num_nodes, key % num_nodes
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0)
    values = torch.rand(cols.numel(), generator=gen, device=device)
    return CSRGraph(indptr, cols, values)


def spmm_peers(graph, num_nodes: int) -> dict:
    """name -> propagate(values, x) for each available spmm peer (all differentiable):
    torch.sparse.mm on CSR, index_select + index_add_, and torch_geometric when it imports."""
    import warnings

    from gcnprune_fast.ops.reference import sparse as reference

    indptr, indices, _ = graph
    rows = reference.row_ids(indptr)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    def sparse_mm(values, x):
        a = torch.sparse_csr_tensor(indptr, indices, values, size=(num_nodes, x.size(0)))
        return torch.sparse.mm(a, x)

    def scatter(values, x):
        messages = x.index_select(0, indices) * values.unsqueeze(1)
        return torch.zeros(num_nodes, x.size(1), dtype=x.dtype,
                           device=x.device).index_add_(0, rows, messages)

    peers = {"torch.sparse.mm (CSR)": sparse_mm, "scatter (index_select+index_add_)": scatter}
    try:
        from torch_geometric.nn import MessagePassing

        class Propagate(MessagePassing):
            def __init__(self):
                super().__init__(aggr="add")

            def forward(self, x, edge_index, w):
                return self.propagate(edge_index, x=x, w=w, size=(x.size(0), num_nodes))

            def message(self, x_j, w):
                return w.unsqueeze(1) * x_j

        edge_index = torch.stack([indices, rows])  # source = column, target = row
        module = Propagate()
        peers["torch_geometric MessagePassing(add)"] = lambda values, x: module(x, edge_index, values)
    except Exception:  # not installed, or broken against this torch (the GPU machine's 2.11)
        pass
    return peers
