"""Cost-model throughput: analytic FLOPs/params evaluations per second on torchvision ResNet-50
(224x224) against counting on the pruned model with torch-pruning's ``count_ops_and_params``
(what a search would do without the analytic model: surgery is extra and not timed here).

    python benchmarks/bench_cost_model.py           # ResNet-50 at 224x224
    python benchmarks/bench_cost_model.py --quick   # ResNet-50 at 64x64, fewer repeats

``table_rows(quick)`` returns rows with keys op, shape, impl_ms, ref_name, ref_ms, ratio, note
(ratio = ref_ms / impl_ms); times are per cost evaluation. Target: >= 10,000 evaluations/s.
"""
from __future__ import annotations

import sys
import time

import torch
import torchvision

from common import bench_main, row, time_ms
from gcnprune_fast.space import PruningSpace


def table_rows(quick: bool = False) -> list[dict]:
    import torch_pruning as tp  # the reference counter

    size = 64 if quick else 224
    repeats = 3 if quick else 5
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    t0 = time.perf_counter()
    space = PruningSpace(model, x)
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    masks = []
    for g in space.groups:
        m = torch.rand(g.size, generator=gen) < 0.6
        m[0] = True
        masks.append(m)
    pruned = space.prune(masks)
    ref_ms = time_ms(lambda: tp.utils.count_ops_and_params(pruned, x), repeats=repeats)
    ref_flops, ref_params = tp.utils.count_ops_and_params(pruned, x)
    flops, params = space.cost(masks)
    err = max(abs(flops / ref_flops - 1), abs(params / ref_params - 1))
    G = space.num_groups
    counts = torch.tensor([int(m.sum()) for m in masks])
    batch = 4096
    batched = torch.stack([
        torch.randint(1, g.size + 1, (batch,), generator=gen) for g in space.groups], dim=1)
    shape = f"resnet50 {size}x{size} G={G}"
    rows = []
    for op, fn, per, inner in (
        ("cost(masks)", lambda: space.cost(masks), 1, 200),
        ("cost_from_counts [G]", lambda: space.cost_from_counts(counts), 1, 200),
        (f"cost_from_counts [{batch},G]", lambda: space.cost_from_counts(batched), batch, 5),
    ):
        impl_ms = time_ms(fn, repeats=repeats, inner=inner) / per
        rows.append(row(op, shape, impl_ms, "tp.count_ops_and_params(pruned)", ref_ms,
                        f"{1e3 / impl_ms:,.0f} evals/s; max rel err vs ref {err:.1e}; "
                        f"space build {build_s:.1f}s"))
    return rows


if __name__ == "__main__":
    sys.exit(bench_main(table_rows, __doc__))
