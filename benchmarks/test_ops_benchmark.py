"""pytest-benchmark view of the native ops against their references (small shapes).

    python -m pytest benchmarks/test_ops_benchmark.py --benchmark-group-by=param:shape

Each op is timed native and reference in the same run (group them to read the ratio); the full
table with ratios and large shapes is `python benchmarks/run.py`. Timing is pytest-benchmark's
here (benchmarks/common.py's timer serves run.py); the inputs are the same builders. Not part of
the test suite (timings are never asserted).
"""
import pytest
import torch

import gcnprune_fast.ops as ops
from common import random_graph
from gcnprune_fast.ops import reference

IMPLS = {"native": ops, "reference": reference}
pytestmark = pytest.mark.skipif(not ops.native_available(), reason="native library not built")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", [(64, 256, 16, 16)])
def test_gap_stats(benchmark, impl, shape):
    x = torch.randn(shape)
    benchmark.group = f"gap_stats {shape}"
    benchmark(IMPLS[impl].gap_stats, x)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", [(4096, 512)])
def test_knn_graph(benchmark, impl, shape):
    f = torch.randn(shape)
    benchmark.group = f"knn_graph {shape} k=8"
    benchmark(IMPLS[impl].knn_graph, f, 8)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", [(20000, 12, 64)])
def test_spmm_forward_backward(benchmark, impl, shape):
    n, deg, d = shape
    graph = random_graph(n, deg, deg)  # the graph of bench_spmm.py, deg neighbours per node
    graph = graph._replace(values=graph.values.requires_grad_())
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def step():
        IMPLS[impl].spmm(graph, x).sum().backward()

    benchmark.group = f"spmm fwd+bwd {shape}"
    benchmark(step)
