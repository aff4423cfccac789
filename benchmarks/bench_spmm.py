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

import sys

import torch

from common import format_table, header, random_graph, row, spmm_peers, time_ms
from gcnprune_fast.ops import CSRGraph, gcn_norm, native_available, spmm
from gcnprune_fast.ops.reference import sparse as reference


def _time(fn, repeats: int) -> float:
    """Median ms; slow functions get fewer runs (about 4 s each at most)."""
    return time_ms(fn, repeats=repeats, warmup=2, budget_s=4.0)


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

    peers = spmm_peers(graph, num_nodes)
    for d in (32, 64):
        gen = torch.Generator().manual_seed(d)
        x0 = torch.randn(num_nodes, d, generator=gen)
        grad_out = torch.randn(num_nodes, d, generator=gen)
        shape = f"N={num_nodes} nnz={nnz} d={d}"
        for mode in ("fwd", "fwd+bwd"):
            def timed(fn, mode=mode, x0=x0, grad_out=grad_out):
                if mode == "fwd":
                    with torch.no_grad():
                        return _time(lambda: fn(graph.values, x0), repeats)
                values = graph.values.clone().requires_grad_()
                x = x0.clone().requires_grad_()

                def step():
                    values.grad = x.grad = None
                    fn(values, x).backward(grad_out)
                return _time(step, repeats)

            impl_ms = timed(ours)
            for name, fn in peers.items():
                try:
                    ref_ms, note = timed(fn), impl_note
                except RuntimeError as exc:  # e.g. torch.sparse.mm's backward allocating N x N
                    ref_ms = None
                    note = f"{impl_note}; peer failed: {str(exc).splitlines()[0][:120]}"
                rows.append(row(f"spmm {mode}", shape, impl_ms, name, ref_ms, note))

    shape = f"N={num_nodes} nnz={nnz}"
    impl_ms = _time(lambda: gcn_norm(graph), repeats)
    ref_ms = _time(lambda: reference.gcn_norm(graph), repeats)
    rows.append(row("gcn_norm", shape, impl_ms, "reference (torch)", ref_ms, impl_note))
    try:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm

        edge_index = torch.stack([reference.row_ids(graph.indptr), graph.indices])
        ref_ms = _time(lambda: pyg_gcn_norm(edge_index, graph.values, num_nodes,
                                            add_self_loops=True), repeats)
        rows.append(row("gcn_norm", shape, impl_ms, "torch_geometric gcn_norm (COO)", ref_ms,
                        impl_note))
    except ImportError:
        pass
    return rows


if __name__ == "__main__":
    print(header("spmm / gcn_norm"))
    quick = "--quick" in sys.argv
    rows = table_rows(quick=quick)
    if not quick:  # torch.sparse.mm's backward needs a dense N x N buffer at 100k nodes
        rows += [r for r in table_rows(num_nodes=20_000) if r["op"] == "spmm fwd+bwd"
                 and r["ref_name"].startswith("torch.sparse.mm")]
    print(format_table(rows))
