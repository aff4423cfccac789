"""Latency budget (issue 12): how well the latency model predicts deployed latency, the speed-up a
``latency=0.5`` budget buys, and what a latency budget is worth against a FLOPs budget.

Part 1 (default): for each model (ResNet-56, VGG-16-BN, MobileNetV2, CIFAR 32x32), thread count
and batch size, the latency table is measured (or read from the cache), then the original and
pruned models (filter-L1 scores, global allocation) are exported as deployed (BN folded,
TorchScript, frozen) and timed by ``gcnprune_run`` in a fresh process (or torch in-process when
the runner is not built; the ``timed_by`` column says which):

    latency=0.5      the latency budget
    flops=0.5        a FLOPs budget, for comparison
    uniform q=0.6    a uniform keep ratio (a width vector no budget chose)

Columns: predicted and measured ms, the prediction error, the measured speed-up and the FLOPs
ratio. Original and pruned runs alternate over ``--rounds`` (best of each), so background load
does not favour either. Targets: |error| <= 10 %, speed-up >= 1.9x at latency=0.5.

Part 2 (``--accuracy``): on CIFAR-10 (``../shared/data/cifar10``) a model is trained briefly,
pruned once with ``latency=L`` and once with the FLOPs ratio whose pruned model measures the same
latency (bisection on the measured latency), both fine-tuned the same way; the table gives the
accuracy of both at (about) equal measured latency. Target: the latency-budgeted model >= 0.5
point more accurate.

Usage:
    python benchmarks/bench_latency_budget.py                       # all models, 1/2 threads, batch 1/8
    python benchmarks/bench_latency_budget.py --models resnet56 --threads 1 --batches 1
    python benchmarks/bench_latency_budget.py --accuracy --model resnet20 --train-epochs 3
    python benchmarks/bench_latency_budget.py --device cuda --threads 1 --batches 1 64  # on a GPU

Timings on a loaded, shared machine are noisy: with one thread the default clock is the CPU time
of the timed thread / the runner's process CPU time, which stays meaningful under load; with two
threads it is wall-clock time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gcnprune_fast.latency import build_latency_model  # noqa: E402
from gcnprune_fast.latency.measure import time_model  # noqa: E402
from gcnprune_fast.methods import Budget  # noqa: E402
from gcnprune_fast.methods.allocation import allocate, counts_from_ratios, masks_from_counts  # noqa: E402
from gcnprune_fast.models import get_model  # noqa: E402
from gcnprune_fast.space import PruningSpace  # noqa: E402


def _counts(masks) -> List[int]:
    return [int(m.sum()) for m in masks]


def predict_vs_measure(model_name: str, threads: int, batch: int, round_to: int, grid_points: int,
                       rounds: int, cache_dir, latency: float = 0.5,
                       calibration: str = "two-point", device: str = "cpu") -> List[Dict]:
    torch.manual_seed(0)
    model = get_model(model_name).eval()
    space = PruningSpace(model, torch.randn(2, 3, 32, 32), round_to=round_to)
    t0 = time.perf_counter()
    lm = build_latency_model(space, device=device, batch=batch, threads=threads,
                             grid_points=grid_points,
                             cache_dir=cache_dir, progress=False, calibration=calibration)
    table_s = time.perf_counter() - t0
    scores = [s["l1"] for s in space.weight_stats()]
    variants = {
        f"latency={latency}": allocate(space, scores, Budget.from_ratios(space, latency=latency,
                                                                         latency_model=lm)),
        "flops=0.5": allocate(space, scores, Budget.from_ratios(space, flops=0.5)),
        "uniform q=0.6": masks_from_counts(scores, counts_from_ratios(space, [0.6] * space.num_groups)),
    }
    example = torch.zeros(batch, 3, 32, 32, device=device)
    compacts = {k: space.prune(m).to(device) for k, m in variants.items()}
    model = model.to(device)
    best = {k: float("inf") for k in ["original", *variants]}
    how = {}
    for _ in range(rounds):  # alternate original and pruned
        for k in best:
            net = model if k == "original" else compacts[k]
            t, how[k] = time_model(net, example, timer=lm.timer, threads=threads)
            best[k] = min(best[k], t)
    rows = []
    base_pred = float(lm.latency_from_counts(torch.tensor([g.size for g in space.groups])))
    rows.append(dict(model=model_name, threads=threads, batch=batch, variant="original",
                     predicted_ms=base_pred * 1e3, measured_ms=best["original"] * 1e3,
                     error=(base_pred - best["original"]) / best["original"], speedup=1.0,
                     flops_ratio=1.0, timed_by=how["original"], table_s=table_s,
                     table_points=lm.measured_points, cached_points=lm.cached_points,
                     clock=lm.meta["clock"], scale=lm.scale, remainder_ms=lm.remainder * 1e3))
    for k, masks in variants.items():
        pred = float(lm.latency_from_counts(torch.tensor(_counts(masks))))
        f, _ = space.cost(masks)
        # the model's prediction relative to its own base, scaled to this round's original
        pred_scaled = pred / lm.base_latency * best["original"]
        rows.append(dict(model=model_name, threads=threads, batch=batch, variant=k,
                         predicted_ms=pred * 1e3, measured_ms=best[k] * 1e3,
                         error=(pred - best[k]) / best[k],
                         error_ratio=(pred_scaled - best[k]) / best[k],
                         speedup=best["original"] / best[k],
                         predicted_speedup=lm.base_latency / pred,
                         flops_ratio=f / space.base_flops, timed_by=how[k]))
    return rows


def print_rows(rows: List[Dict]) -> None:
    head = (f"{'model':<13}{'thr':>4}{'bs':>4}  {'variant':<16}{'pred ms':>9}{'meas ms':>9}"
            f"{'err':>8}{'err(ratio)':>11}{'speedup':>9}{'pred x':>8}{'flops':>7}  timed_by")
    print(head)
    for r in rows:
        er = r.get("error_ratio")
        print(f"{r['model']:<13}{r['threads']:>4}{r['batch']:>4}  {r['variant']:<16}"
              f"{r['predicted_ms']:>9.3f}{r['measured_ms']:>9.3f}{r['error']:>+8.1%}"
              f"{(f'{er:+.1%}' if er is not None else ''):>11}{r['speedup']:>8.2f}x"
              f"{r.get('predicted_speedup', 1.0):>7.2f}x{r['flops_ratio']:>7.3f}  {r['timed_by']}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# part 2: accuracy at equal measured latency


def accuracy_at_equal_latency(args) -> List[Dict]:
    from gcnprune_fast import training
    from gcnprune_fast.data import load_shared_cifar10
    from torch.utils.data import DataLoader, Subset

    torch.manual_seed(0)
    train_ds, test_ds = load_shared_cifar10(args.data_dir)
    gen = torch.Generator().manual_seed(0)
    tr = Subset(train_ds, torch.randperm(len(train_ds), generator=gen)[:args.train_samples].tolist())
    te = Subset(test_ds, list(range(args.test_samples)))
    train_loader = DataLoader(tr, batch_size=128, shuffle=True, generator=gen)
    test_loader = DataLoader(te, batch_size=256)
    model = get_model(args.model).eval()
    training.train(model, train_loader, args.train_epochs, lr=0.1, progress=False)
    model.eval()
    acc0 = training.evaluate(model, test_loader)
    space = PruningSpace(model, torch.randn(2, 3, 32, 32), round_to=args.round_to)
    lm = build_latency_model(space, batch=args.batches[0], threads=args.threads[0],
                             cache_dir=args.cache_dir, progress=False)
    scores = [s["l1"] for s in space.weight_stats()]
    example = torch.zeros(args.batches[0], 3, 32, 32)

    def measured(masks):
        t, _ = min(time_model(space.prune(masks), example, timer=lm.timer,
                              threads=args.threads[0]) for _ in range(args.rounds))
        return t

    lat_masks = allocate(space, scores, Budget.from_ratios(space, latency=args.latency,
                                                           latency_model=lm))
    target = measured(lat_masks)
    lo, hi = 0.02, 1.0  # FLOPs ratio whose pruned model measures the same latency
    for _ in range(args.bisect_steps):
        mid = 0.5 * (lo + hi)
        if measured(allocate(space, scores, Budget.from_ratios(space, flops=mid))) > target:
            hi = mid
        else:
            lo = mid
    flop_masks = allocate(space, scores, Budget.from_ratios(space, flops=lo))
    rows = []
    for name, masks in ((f"latency={args.latency}", lat_masks), (f"flops={lo:.3f}", flop_masks)):
        compact = space.prune(masks)
        training.recalibrate_bn(compact, train_loader, num_batches=10)
        training.train(compact, train_loader, args.finetune_epochs, lr=0.01, progress=False)
        compact.eval()
        f, _ = space.cost(masks)
        rows.append(dict(variant=name, acc_before=acc0, acc=training.evaluate(compact, test_loader),
                         measured_ms=measured(masks) * 1e3, flops_ratio=f / space.base_flops,
                         original_ms=lm.base_latency * 1e3))
    for r in rows:
        print(f"{r['variant']:<16} acc {r['acc']:.4f} (original {r['acc_before']:.4f})  "
              f"{r['measured_ms']:.3f} ms (original {r['original_ms']:.3f})  flops {r['flops_ratio']:.3f}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet56", "vgg16_bn", "mobilenet_v2"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--round-to", type=int, default=1)
    p.add_argument("--grid-points", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--cache-dir", default="default")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (CUDA events; e.g. --batches 1 64)")
    p.add_argument("--calibration", default="two-point", choices=("two-point", "remainder"))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--accuracy", action="store_true", help="part 2 instead of part 1")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--bisect-steps", type=int, default=6)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows: List[Dict] = []
    if args.accuracy:
        torch.set_num_threads(args.threads[0])
        rows = accuracy_at_equal_latency(args)
    else:
        for name in args.models:
            for threads in args.threads:
                for batch in args.batches:
                    r = predict_vs_measure(name, threads, batch, args.round_to, args.grid_points,
                                           args.rounds, args.cache_dir, args.latency,
                                           args.calibration, args.device)
                    print_rows(r)
                    rows += r
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
