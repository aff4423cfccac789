"""Benchmark of training in channels_last against the default memory format, through
``training.train`` itself (switch, steps and switch back): the basis of its default
(``training.channels_last_pays``: on the CPU only when every convolution's width is a multiple
of 16).

    python benchmarks/bench_channels_last.py            # resnet20 (whole and pruned to 50% FLOPs
                                                        # with round_to 1, 8, 16), resnet56,
                                                        # vgg16_bn, mobilenet_v2
    python benchmarks/bench_channels_last.py --quick    # resnet20 and a pruned copy, few steps

One row per model and precision (float32, bf16 autocast): impl_ms = ms per SGD step in
channels_last, ref_ms = the same in the default format, ratio = ref / impl (> 1: channels_last is
faster). Batch 128 of 32x32 images (random data: speed only), the torch threads of the process.
The two formats alternate run by run (the median of each), so load on a shared machine hits both.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from common import bench_main, row
from gcnprune_fast import training
from gcnprune_fast.models import get_model
from gcnprune_fast.training import channels_last_pays

BATCH, SIZE = 128, 32


def _pruned_resnet20(round_to: int) -> torch.nn.Module:
    """ResNet-20 with the l1-global-mean allocation at 50% FLOPs: the widths a fine-tune after
    pruning meets."""
    from gcnprune_fast.methods.allocation import Budget
    from gcnprune_fast.methods.search.rerank import criterion_candidates
    from gcnprune_fast.space import PruningSpace

    torch.manual_seed(0)
    space = PruningSpace(get_model("resnet20"), torch.randn(2, 3, SIZE, SIZE), round_to=round_to)
    candidates = dict(criterion_candidates(space, Budget.from_ratios(space, flops=0.5)))
    masks = candidates["l1-global-mean"]
    return space.prune(masks)


def _step_ms(model: torch.nn.Module, loader, steps: int, amp, channels_last: bool) -> float:
    t0 = time.perf_counter()
    training.train(model, loader, 1, lr=0.01, progress=False, max_steps_per_epoch=steps, amp=amp,
                   channels_last=channels_last)
    return (time.perf_counter() - t0) * 1e3 / steps


def table_rows(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run.py (keys op, shape, impl_ms, ref_name, ref_ms, ratio, note)."""
    builders = [("resnet20", lambda: get_model("resnet20")),
                ("resnet20 pruned to 50% FLOPs, round_to 1", lambda: _pruned_resnet20(1))]
    if not quick:
        builders += [(f"resnet20 pruned to 50% FLOPs, round_to {r}",
                      lambda r=r: _pruned_resnet20(r)) for r in (8, 16)]
        builders += [(name, lambda name=name: get_model(name))
                     for name in ("resnet56", "vgg16_bn", "mobilenet_v2")]
    steps, repeats = (2, 2) if quick else (4, 3)
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(BATCH, 3, SIZE, SIZE, generator=gen),
               torch.randint(0, 10, (BATCH,), generator=gen)) for _ in range(steps)]
    rows = []
    for name, build in builders:
        model = build()
        auto = "on" if channels_last_pays(model) else "off"
        for amp in (None, "bf16"):
            _step_ms(model, loader, 1, amp, True)  # warm-up of both formats' kernels
            _step_ms(model, loader, 1, amp, False)
            last, default = [], []
            for _ in range(repeats):
                last.append(_step_ms(model, loader, steps, amp, True))
                default.append(_step_ms(model, loader, steps, amp, False))
            rows.append(row(f"train step ({'bf16 autocast' if amp else 'float32'})",
                            f"{name}, batch {BATCH}, {SIZE}x{SIZE}",
                            statistics.median(last), "default memory format",
                            statistics.median(default),
                            f"channels_last; train() default {auto}; "
                            f"{repeats} alternating runs of {steps} steps, "
                            f"{torch.get_num_threads()} threads"))
    return rows


if __name__ == "__main__":
    sys.exit(bench_main(table_rows, __doc__))
