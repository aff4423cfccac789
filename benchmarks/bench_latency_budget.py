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

Part 2 (``--accuracy``): on the quality protocol's data (``benchmarks/quality.py``: CIFAR-10
search split for BN and fine-tuning, test set for the numbers) and a trained model
(``--checkpoint``, default the committed ResNet-20), filter-L1 with global allocation is pruned
once with ``latency=L`` (``--round-to``), once with the same budget and the fill that stops at
the first chunk that does not fit (the ablation of the latency fill, ``stop``), and once per
``--flops-round-to`` with the FLOPs ratio whose pruned model measures the same latency as the
first (bisection on the measured latency); all timings
first, then the same BN re-estimation and fine-tune for each over ``--seeds``; accuracy mean and
95% interval, and the paired difference to the latency-budgeted model. Target: the
latency-budgeted model >= 0.5 point more accurate.

Part 3 (``--time-rows``): the searches. ``benchmarks/quality.py`` runs a search under a latency
budget (a variant such as ``channel-gcn:flops=none,latency=0.5,latency_threads=1``) and under a
FLOPs budget, with the quality protocol's fine-tune; this part rebuilds each row's compact model
from its recorded widths, times all of them and the original in alternation, and prints measured
ms, speed-up, FLOPs kept and the accuracies paired by seed against the latency-budgeted search.

Usage:
    python benchmarks/bench_latency_budget.py                       # all models, 1/2 threads, batch 1/8
    python benchmarks/bench_latency_budget.py --models resnet56 --threads 1 --batches 1
    python benchmarks/bench_latency_budget.py --accuracy --threads 1 --batches 1 --finetune-threads 2
    python benchmarks/bench_latency_budget.py --time-rows runs/q/quality.jsonl --threads 1 --batches 1
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
from gcnprune_fast.latency.measure import time_models_alternating  # noqa: E402
from gcnprune_fast.methods import Budget  # noqa: E402
from gcnprune_fast.methods.allocation import (allocate, counts_from_ratios, masks_from_counts,  # noqa: E402
                                              min_cost_ratios)
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
    timed = time_models_alternating({"original": model, **compacts}, example, timer=lm.timer,
                                    threads=threads, rounds=rounds, runner_rounds=3)
    best = {k: t for k, (t, _) in timed.items()}
    how = {k: h for k, (_, h) in timed.items()}
    rows = []
    base_pred = float(lm.latency_from_counts(torch.tensor([g.size for g in space.groups])))
    rows.append(dict(model=model_name, threads=threads, batch=batch, variant="original",
                     predicted_ms=base_pred * 1e3, measured_ms=best["original"] * 1e3,
                     error=(base_pred - best["original"]) / best["original"], speedup=1.0,
                     flops_ratio=1.0, timed_by=how["original"], table_s=table_s,
                     table_points=lm.measured_points, cached_points=lm.cached_points,
                     clock=lm.meta["clock"], scale=lm.scale, remainder_ms=lm.remainder * 1e3,
                     calibration_spread=lm.calibration_spread,
                     calibration_error=lm.calibration_error))
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
    """Part 2 on the quality protocol's data and trained model (``benchmarks/quality.py``):
    filter-L1 scores with global allocation under (a) ``latency=L`` at ``--round-to``, with and
    without the fill past chunks that do not fit, and (b) for
    each of ``--flops-round-to`` the FLOPs ratio whose pruned model *measures* the same latency
    (bisection). All timings happen first, on an otherwise idle machine; then every candidate
    gets the same BN re-estimation and fine-tune per seed (only the fine-tune's order and
    augmentation differ between seeds: the masks are deterministic). Rows are appended to
    ``--out``.jsonl and skipped on ``--resume``."""
    import argparse as _argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import (finetune_amp, finetune_and_evaluate, load_data, load_model,  # noqa: E402
                         mean_ci, refuse_mixed_finetunes)

    from gcnprune_fast.data import TensorBatchLoader
    from gcnprune_fast.training import evaluate, recalibrate_bn

    threads, batch = args.threads[0], args.batches[0]
    ns = _argparse.Namespace(synthetic=0, image_size=32, data_root=args.data_dir,
                             selection_images=5000, search_images=45000,
                             test_samples=args.test_samples, checkpoint=args.checkpoint,
                             model=args.model)
    search_ds, _, test_ds, num_classes, channels = load_data(ns)
    model = load_model(ns, num_classes, channels)
    test_loader = TensorBatchLoader(test_ds, 256)
    example = torch.zeros(batch, 3, 32, 32)
    torch.set_num_threads(threads)

    def timed(nets: Dict) -> Dict[str, float]:  # best of --rounds each, in alternation
        return {k: t for k, (t, _) in time_models_alternating(
            nets, example, timer=lm.timer, threads=threads, rounds=args.rounds,
            runner_rounds=3).items()}

    def measured(net) -> float:
        return timed({"net": net})["net"]

    lat_space = PruningSpace(model, torch.randn(2, 3, 32, 32), round_to=args.round_to)
    lm = build_latency_model(lat_space, batch=batch, threads=threads, cache_dir=args.cache_dir,
                             progress=False)
    cands = {}  # name -> (space, masks)
    scores = [s["l1"] for s in lat_space.weight_stats()]
    lat_budget = Budget.from_ratios(lat_space, latency=args.latency, latency_model=lm)
    cands[f"latency={args.latency} r{args.round_to}"] = (
        lat_space, allocate(lat_space, scores, lat_budget))
    target = measured(lat_space.prune(next(iter(cands.values()))[1]))
    # ablation: the fill that stops at the first chunk that does not fit (FLOPs budgets' fill)
    cands[f"latency={args.latency} r{args.round_to} stop"] = (
        lat_space, allocate(lat_space, scores, lat_budget, fill_past_misfits=False))
    for rt in args.flops_round_to:
        space = PruningSpace(model, torch.randn(2, 3, 32, 32), round_to=rt)
        sc = [s["l1"] for s in space.weight_stats()]
        # the largest FLOPs ratio whose pruned model is not slower (lo: the smallest reachable)
        lo, hi = min_cost_ratios(space)[0], 1.0
        for _ in range(args.bisect_steps):
            mid = 0.5 * (lo + hi)
            slower = measured(space.prune(allocate(space, sc, Budget.from_ratios(space, flops=mid)))) > target
            lo, hi = (lo, mid) if slower else (mid, hi)
        cands[f"flops={lo:.3f} r{rt}"] = (space, allocate(space, sc, Budget.from_ratios(space, flops=lo)))
    # final timings: original and candidates alternating, best of --rounds each
    best = timed({"original": model, **{k: sp.prune(m) for k, (sp, m) in cands.items()}})
    facts = {k: dict(measured_ms=best[k] * 1e3, speedup=best["original"] / best[k],
                     flops_ratio=sp.cost(m)[0] / sp.base_flops) for k, (sp, m) in cands.items()}
    base_acc = evaluate(model, test_loader)
    print(f"{args.model}: test {base_acc:.4f}, original {best['original'] * 1e3:.3f} ms "
          f"({threads} thread(s), batch {batch}; calibration spread "
          f"{lm.calibration_spread if lm.calibration_spread is not None else float('nan'):.0%}, "
          f"half-width point missed by "
          f"{lm.calibration_error if lm.calibration_error is not None else float('nan'):+.0%})",
          flush=True)
    for k, f in facts.items():
        print(f"  {k:<22} {f['measured_ms']:.3f} ms  {f['speedup']:.2f}x  flops {f['flops_ratio']:.3f}",
              flush=True)

    torch.set_num_threads(args.finetune_threads or threads)
    out = Path(args.out or ROOT / "runs" / "latency" / "accuracy.json")
    partial = out.with_suffix(".jsonl")
    rows = []
    if args.resume and partial.is_file():
        rows = [json.loads(x) for x in partial.read_text().splitlines() if x.strip()]
    elif partial.is_file():
        partial.unlink()
    amp = finetune_amp(args)
    lr = 0.01
    finetune_key = {"epochs": list(args.finetune_epochs), "lr": lr, "amp": amp}
    refuse_mixed_finetunes(rows, finetune_key, partial, sys.exit)
    done = {(r["variant"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for k, (sp, m) in cands.items():
            if (k, seed) in done:
                continue
            compact = sp.prune(m)
            recalibrate_bn(compact, TensorBatchLoader(search_ds, 128, shuffle=True,
                                                      generator=torch.Generator().manual_seed(seed)),
                           num_batches=20)
            accs = finetune_and_evaluate(compact, search_ds, test_loader, args.finetune_epochs,
                                         lr, seed, amp=amp)
            row = dict(variant=k, seed=seed, **facts[k], **accs, finetune=finetune_key)
            rows.append(row)
            with open(partial, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"seed {seed} {k:<22} " + " ".join(f"{a} {v:.4f}" for a, v in accs.items()),
                  flush=True)
    lat_name = next(iter(cands))
    print(f"\n{'variant':<22}{'ms':>8}{'speedup':>9}{'flops':>7}  " +
          "  ".join(f"{'acc ft' + str(e):>15}{'paired diff':>15}" for e in args.finetune_epochs))
    for k in cands:
        line = f"{k:<22}{facts[k]['measured_ms']:>8.3f}{facts[k]['speedup']:>8.2f}x{facts[k]['flops_ratio']:>7.3f}  "
        for e in args.finetune_epochs:
            key = f"acc_ft{e}"
            mine = {r["seed"]: r[key] * 100 for r in rows if r["variant"] == k}
            lat = {r["seed"]: r[key] * 100 for r in rows if r["variant"] == lat_name}
            m, h = mean_ci(list(mine.values()))
            line += f"{m:>8.2f} ± {h:<5.2f}"
            if k == lat_name:
                line += f"{'':>15}"
            else:
                d, dh = mean_ci([lat[s] - mine[s] for s in mine if s in lat])
                line += f"{d:>+8.2f} ± {dh:<5.2f}"
        print(line)
    print("(paired diff: the latency-budgeted model minus this one, same seed, 95% t-interval)")
    return rows


def time_searched_rows(args) -> List[Dict]:
    """Part 3 (``--time-rows``): the compact models of ``benchmarks/quality.py`` rows (a search
    under ``latency=L`` next to the same search under a FLOPs budget, run by quality.py), rebuilt
    from the widths each row recorded (latency depends on the widths only, not on which channels
    were kept), timed together with the original in alternation on one idle machine, and their
    accuracies paired by seed against ``--reference`` (the latency-budgeted candidate)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import load_model, mean_ci, rows_from_files  # noqa: E402

    from gcnprune_fast.latency.measure import Timer

    def fail(msg):
        sys.exit(f"bench_latency_budget.py: {msg}")

    rows, epochs = rows_from_files(args.time_rows, fail)
    for r in rows:  # a candidate run at several --flops is several candidates here
        if "flops=" not in r["candidate"]:  # (unless the variant sets its own, e.g. flops=none)
            r["candidate"] += f" @flops={r['flops_budget']}"
    if args.candidates:
        missing = set(args.candidates) - {r["candidate"] for r in rows}
        if missing:
            fail(f"--candidates not in the rows: {sorted(missing)}")
        rows = [r for r in rows if r["candidate"] in args.candidates]
    rows = [r for r in rows if r["seed"] in args.seeds]
    unsized = sorted({r["candidate"] for r in rows if "widths" not in r})
    if unsized:  # Torch-Pruning's rows record no widths
        print(f"skipped (no widths recorded): {', '.join(unsized)}")
        rows = [r for r in rows if "widths" in r]
    if not rows:
        fail("no rows with widths to time")
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    reference = args.reference or next((n for n in names if "latency=" in n), names[0])
    if reference not in names:
        fail(f"--reference {reference!r} is not one of the candidates {names}")
    threads, batch = args.threads[0], args.batches[0]
    torch.set_num_threads(threads)
    ns = argparse.Namespace(checkpoint=args.checkpoint, model=args.model)
    model = load_model(ns, 10, 3)
    space = PruningSpace(model, torch.randn(2, 3, 32, 32), round_to=1)
    scores = [s["l1"] for s in space.weight_stats()]
    nets = {"original": model}
    for r in rows:
        if len(r["widths"]) != space.num_groups:
            fail(f"{r['candidate']} seed {r['seed']}: {len(r['widths'])} widths, {args.model} has "
                 f"{space.num_groups} groups (another --model?)")
        nets[(r["candidate"], r["seed"])] = space.prune(masks_from_counts(scores, r["widths"]))
    print(f"timing {len(nets)} models ({threads} thread(s), batch {batch}, best of "
          f"{args.rounds} alternating rounds)", flush=True)
    best = time_models_alternating(nets, torch.zeros(batch, 3, 32, 32),
                                   timer=Timer(threads=threads), threads=threads,
                                   rounds=args.rounds, runner_rounds=3)
    original_ms = best["original"][0] * 1e3
    out = []
    for r in rows:
        ms = best[(r["candidate"], r["seed"])][0] * 1e3
        out.append(dict(candidate=r["candidate"], seed=r["seed"], measured_ms=ms,
                        original_ms=original_ms, speedup=original_ms / ms,
                        flops_kept=r["flops_kept"], timed_by=best[(r["candidate"], r["seed"])][1],
                        **{f"acc_ft{e}": r[f"acc_ft{e}"] for e in epochs if f"acc_ft{e}" in r}))
    by = {n: {o["seed"]: o for o in out if o["candidate"] == n} for n in names}
    print(f"\n{args.model}: original {original_ms:.3f} ms (timed by {best['original'][1]}); "
          f"paired differences: {reference} minus the row, same seed, 95% t-interval")
    head = "| candidate | seeds | measured ms | speed-up | FLOPs kept | " + " | ".join(
        f"after {e} ep | diff {e} ep" for e in epochs) + " |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for n in names:
        mine = by[n]
        cells = [n, str(len(mine)), "%.3f" % mean_ci([o["measured_ms"] for o in mine.values()])[0],
                 "%.2fx" % mean_ci([o["speedup"] for o in mine.values()])[0],
                 "%.3f" % mean_ci([o["flops_kept"] for o in mine.values()])[0]]
        for e in epochs:
            key = f"acc_ft{e}"
            have = [o[key] * 100 for o in mine.values() if key in o]
            cells.append("%.2f ± %.2f" % mean_ci(have) if have else "-")
            seeds = [s for s in mine if s in by[reference] and key in mine[s]
                     and key in by[reference][s]]
            if n == reference or not seeds:
                cells.append("")
            else:
                cells.append("%+.2f ± %.2f" % mean_ci(
                    [(by[reference][s][key] - mine[s][key]) * 100 for s in seeds]))
        print("| " + " | ".join(cells) + " |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet56", "vgg16_bn", "mobilenet_v2"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--round-to", type=int, default=8,
                   help="channel multiples (default 8, prune()'s default with a latency budget)")
    p.add_argument("--grid-points", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--cache-dir", default="default")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (CUDA events; e.g. --batches 1 64)")
    p.add_argument("--calibration", default="two-point", choices=("two-point", "remainder"))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--accuracy", action="store_true", help="part 2 instead of part 1")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", default=str(ROOT / "benchmarks" / "models" / "resnet20_cifar10.pt"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--flops-round-to", nargs="+", type=int, default=[1, 8],
                   help="round_to of the FLOPs-budget models compared with (part 2)")
    p.add_argument("--finetune-threads", type=int, default=None,
                   help="threads for fine-tuning (part 2; default: the timing threads)")
    p.add_argument("--resume", action="store_true", help="part 2: keep finished rows of --out")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--finetune-epochs", nargs="+", type=int, default=[0, 1])
    p.add_argument("--finetune-amp", choices=["none", "bf16"], default="none",
                   help="part 2: fine-tune under CPU bf16 autocast (evaluation in fp32)")
    p.add_argument("--bisect-steps", type=int, default=6)
    p.add_argument("--time-rows", nargs="+", default=None, metavar="JSONL",
                   help="part 3: time the compact models of these quality.py rows (PATH@TAG as "
                        "quality.py --from-rows) and pair their accuracies by seed")
    p.add_argument("--candidates", nargs="+", default=None,
                   help="part 3: only these candidates of the rows")
    p.add_argument("--reference", default=None,
                   help="part 3: the candidate the others are paired against (default: the "
                        "first with a latency budget)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows: List[Dict] = []
    if args.time_rows:
        rows = time_searched_rows(args)
    elif args.accuracy:
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
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
