"""Benchmark of the sparse GCN propagation ops (``spmm``, ``gcn_norm``) against their peers.

Graph: N nodes (100k; 20k with ``--quick``), each with 8-16 distinct random neighbours, float32.
``spmm`` (through the public wrapper, argument checks included) is timed forward and forward +
backward (gradients wrt x and the edge values) against, in the same run:

- ``torch.sparse.mm`` with a CSR tensor (``torch.sparse_csr_tensor``, values requiring grad);
- scatter propagation in plain torch (``index_select`` * w, ``index_add_``): what
  torch-geometric's MessagePassing does without torch-scatter;
- torch-geometric's MessagePassing (aggr="add") when installed.

``gcn_norm`` is timed against the plain-PyTorch reference and torch-geometric's ``gcn_norm``.

    python benchmarks/bench_spmm.py [--quick]

Times are medians over repeats, in milliseconds, with the process's torch thread count.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
import warnings

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from gcnprune_fast.ops import CSRGraph, gcn_norm, native_available, spmm  # noqa: E402
from gcnprune_fast.ops.reference import sparse as reference  # noqa: E402


def random_graph(num_nodes: int, min_deg: int = 8, max_deg: int = 16, seed: int = 0) -> CSRGraph:
    """CSR graph with min_deg..max_deg distinct random neighbours per node (sorted columns)."""
    gen = torch.Generator().manual_seed(seed)
    deg = torch.randint(min_deg, max_deg + 1, (num_nodes,), generator=gen)
    rows = torch.repeat_interleave(torch.arange(num_nodes), deg)
    cols = torch.randint(0, num_nodes, (rows.numel(),), generator=gen)
    key = torch.unique(rows * num_nodes + cols)  # sorted, duplicate-free
    rows, cols = key // num_nodes, key % num_nodes
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0)
    values = torch.rand(cols.numel(), generator=gen)
    return CSRGraph(indptr, cols, values)


def time_ms(fn, repeats: int, warmup: int = 2, budget_s: float = 4.0) -> float:
    """Median wall time of fn() in ms; slow functions get fewer runs (within about budget_s)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1 if first < 0.2 else 0):
        fn()
    repeats = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peers(graph: CSRGraph, num_nodes: int):
    """name -> propagate(values, x) for each available peer (all differentiable)."""
    indptr, indices, _ = graph
    rows = reference.row_ids(indptr)

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    def sparse_mm(values, x):
        a = torch.sparse_csr_tensor(indptr, indices, values, size=(num_nodes, x.size(0)))
        return torch.sparse.mm(a, x)

    def scatter(values, x):
        messages = x.index_select(0, indices) * values.unsqueeze(1)
        return torch.zeros(num_nodes, x.size(1), dtype=x.dtype).index_add_(0, rows, messages)

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
    except ImportError:
        pass
    return peers


def table_rows(quick: bool = False, num_nodes: int | None = None) -> list[dict]:
    """Benchmark rows (keys op, shape, impl_ms, ref_name, ref_ms, ratio, note); N = 100k nodes
    (20k with quick, or num_nodes)."""
    num_nodes = num_nodes or (20_000 if quick else 100_000)
    repeats = 5 if quick else 7
    graph = random_graph(num_nodes)
    nnz = graph.nnz
    impl_note = "native" if native_available() else "reference (native unavailable)"
    rows = []

    def ours(values, x):
        return spmm(CSRGraph(graph.indptr, graph.indices, values), x)

    peers = _peers(graph, num_nodes)
    for d in (32, 64):
        gen = torch.Generator().manual_seed(d)
        x0 = torch.randn(num_nodes, d, generator=gen)
        grad_out = torch.randn(num_nodes, d, generator=gen)
        shape = f"N={num_nodes} nnz={nnz} d={d}"
        for mode in ("fwd", "fwd+bwd"):
            def timed(fn, mode=mode, x0=x0, grad_out=grad_out):
                if mode == "fwd":
                    with torch.no_grad():
                        return time_ms(lambda: fn(graph.values, x0), repeats)
                values = graph.values.clone().requires_grad_()
                x = x0.clone().requires_grad_()

                def step():
                    values.grad = x.grad = None
                    fn(values, x).backward(grad_out)
                return time_ms(step, repeats)

            impl_ms = timed(ours)
            for name, fn in peers.items():
                try:
                    ref_ms = timed(fn)
                    ratio, note = ref_ms / impl_ms, impl_note
                except RuntimeError as exc:  # e.g. torch.sparse.mm's backward allocating N x N
                    ref_ms = ratio = None
                    note = f"{impl_note}; peer failed: {str(exc).splitlines()[0][:120]}"
                rows.append(dict(op=f"spmm {mode}", shape=shape, impl_ms=impl_ms, ref_name=name,
                                 ref_ms=ref_ms, ratio=ratio, note=note))

    shape = f"N={num_nodes} nnz={nnz}"
    impl_ms = time_ms(lambda: gcn_norm(graph), repeats)
    ref_ms = time_ms(lambda: reference.gcn_norm(graph), repeats)
    rows.append(dict(op="gcn_norm", shape=shape, impl_ms=impl_ms, ref_name="reference (torch)",
                     ref_ms=ref_ms, ratio=ref_ms / impl_ms, note=impl_note))
    try:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm

        edge_index = torch.stack([reference.row_ids(graph.indptr), graph.indices])
        ref_ms = time_ms(lambda: pyg_gcn_norm(edge_index, graph.values, num_nodes,
                                              add_self_loops=True), repeats)
        rows.append(dict(op="gcn_norm", shape=shape, impl_ms=impl_ms,
                         ref_name="torch_geometric gcn_norm (COO)", ref_ms=ref_ms,
                         ratio=ref_ms / impl_ms, note=impl_note))
    except ImportError:
        pass
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import format_table

    print(f"# spmm / gcn_norm, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native={native_available()}")
    quick = "--quick" in sys.argv
    rows = table_rows(quick=quick)
    if not quick:  # torch.sparse.mm's backward needs a dense N x N buffer at 100k nodes
        rows += [r for r in table_rows(num_nodes=20_000) if r["op"] == "spmm fwd+bwd"
                 and r["ref_name"].startswith("torch.sparse.mm")]
    print(format_table(rows))
