"""Deployment latency: the original vs the pruned model, run by the C++ runner ``gcnprune_run``
(TorchScript, CPU), next to the FLOPs ratio.

ResNet-56 and VGG-16-BN are pruned to at most 50% FLOPs with a uniform keep ratio per channel
group (the library's "uniform" allocation of filter-L1 scores: the highest-L1 filters kept), exported,
and timed at batch 1 and 64. For each (model, batch, variant) the table gives the speed-up
(original ms / pruned ms) and its efficiency ``speed-up / (1 / flops_ratio)`` (target >= 80%).

Variants (``--variants``), the same pipeline for the original and the pruned model:
    plain   torch.jit.script of the eval model, run as is
    frozen  export(..., optimize=True): torch.jit.freeze, which inlines the weights and folds
            BatchNorm into the convs (the default deployment path)
    ofi     frozen, then the runner's ``--optimize`` (torch::jit::optimize_for_inference:
            oneDNN-prepacked convs with fused ReLU; fastest for wide layers at big batches, slower
            for narrow pruned layers whose channel counts are not multiples of 8)

Usage:
    python benchmarks/bench_latency.py                  # full: batch 1 and 64, round_to=8
    python benchmarks/bench_latency.py --quick          # batch 1 and 8, fewer iterations
    python benchmarks/bench_latency.py --round-to 1 --threads 2 --variants plain frozen ofi
Times are medians over the iterations, best of ``--rounds`` alternating runs (interleaving
original and pruned runs keeps background load from favouring either). The speed-up uses
``--metric cpu`` by default: the runner's median process CPU time per iteration, which with one
thread is the compute time and stays meaningful on a loaded, shared machine, where wall-clock
medians mostly measure the scheduler; both speed-ups are printed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gcnprune_fast.export as gexport  # noqa: E402
from common import row  # noqa: E402
from gcnprune_fast.models import get_model  # noqa: E402
from gcnprune_fast.space import PruningSpace  # noqa: E402

RUNNER = ROOT / "build-cmake" / "gcnprune_run"
WALL = re.compile(r"^latency_ms median (\S+) p90 (\S+)", re.M)
CPU = re.compile(r"^cpu_ms median (\S+) p90 (\S+)", re.M)
TARGET_EFFICIENCY = 0.8
VARIANTS = ("plain", "frozen", "ofi")


def ensure_runner() -> Path:
    """Path of ``gcnprune_run``; builds it with scripts/build_cpp.sh when missing."""
    binary = Path(os.environ.get("GCNPRUNE_RUN_BINARY", RUNNER))
    if not binary.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "build_cpp.sh")], cwd=ROOT, check=True,
                       env=dict(os.environ, TARGETS="gcnprune_run", PYTHON=sys.executable))
    return binary


def uniform_l1_masks(space: PruningSpace, target_flops_ratio: float):
    """Keep-masks with the same keep ratio in every group (the library's "uniform" allocation of
    filter-L1 scores) at most ``target_flops_ratio`` of the FLOPs.

    Returns (masks, flops_ratio, mean kept fraction)."""
    from gcnprune_fast.methods.allocation import Budget, allocate
    from gcnprune_fast.methods.criteria import l1_scores

    budget = Budget.from_ratios(space, flops=target_flops_ratio)
    masks = allocate(space, l1_scores(space), budget, allocation="uniform")
    flops, _ = space.cost(masks)
    kept = sum(int(m.sum()) for m in masks) / sum(g.size for g in space.groups)
    return masks, flops / space.base_flops, kept


def run_runner(binary: Path, model_path: Path, batch: int, iters: int, warmup: int, threads: int,
               optimize: bool) -> Dict[str, float]:
    """Median wall-clock latency and median process CPU time per iteration (ms) of
    ``gcnprune_run`` on a [batch, 3, 32, 32] input: {"wall": ms, "cpu": ms}."""
    cmd = [str(binary), str(model_path), "--shape", f"{batch},3,32,32", "--iters", str(iters),
           "--warmup", str(warmup), "--threads", str(threads)]
    if optimize:
        cmd.append("--optimize")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return {"wall": float(WALL.search(proc.stdout).group(1)),
            "cpu": float(CPU.search(proc.stdout).group(1))}


def measure(models: Sequence[str] = ("resnet56", "vgg16_bn"), batches: Sequence[int] = (1, 64),
            variants: Sequence[str] = ("frozen", "ofi"), target_flops: float = 0.5,
            round_to: int = 8, threads: int = 1, rounds: int = 3, quick: bool = False,
            metric: str = "cpu", log=print) -> List[Dict]:
    """Runs the benchmark; one result dict per (model, variant, batch). ``metric`` picks the
    time behind ``speedup`` / ``efficiency``: "wall" (median latency) or "cpu" (median process
    CPU time per iteration; with one thread the compute time, robust on a shared machine)."""
    if metric not in ("wall", "cpu"):
        raise ValueError(f"metric must be 'wall' or 'cpu', got {metric!r}")
    binary = ensure_runner()
    results = []
    with tempfile.TemporaryDirectory(prefix="gcnprune_bench_") as tmp:
        tmp = Path(tmp)
        for name in models:
            torch.manual_seed(0)
            model = get_model(name).eval()
            x = torch.randn(1, 3, 32, 32)
            space = PruningSpace(model, x, round_to=round_to)
            masks, flops_ratio, keep = uniform_l1_masks(space, target_flops)
            pruned = space.prune(masks).eval()
            params_ratio = space.cost(masks)[1] / space.base_params
            log(f"# {name}: keep ratio {keep:.3f} (round_to={round_to}) -> FLOPs ratio "
                f"{flops_ratio:.3f}, params ratio {params_ratio:.3f}")
            for variant in variants:
                if variant not in VARIANTS:
                    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
                load_time_opt = variant == "ofi"
                paths = {}
                for tag, m in (("orig", model), ("pruned", pruned)):
                    paths[tag] = gexport.export(m, tmp / f"{name}_{tag}_{variant}.pt", x,
                                                "torchscript", optimize=variant != "plain")
                for batch in batches:
                    # Aim at ~1-2 s per run; big batches are slow on one core.
                    iters = (30 if quick else 100) if batch <= 8 else (5 if quick else 10)
                    warmup = max(2, iters // 5)
                    best = {(tag, k): float("inf") for tag in ("orig", "pruned")
                            for k in ("wall", "cpu")}
                    for _ in range(rounds):
                        for tag in ("orig", "pruned"):
                            times = run_runner(binary, paths[tag], batch, iters, warmup, threads,
                                               load_time_opt)
                            for k, ms in times.items():
                                best[tag, k] = min(best[tag, k], ms)
                    row = dict(model=name, variant=variant, batch=batch, metric=metric,
                               flops_ratio=flops_ratio, params_ratio=params_ratio,
                               round_to=round_to, threads=threads)
                    for k in ("wall", "cpu"):
                        row[f"orig_{k}_ms"] = best["orig", k]
                        row[f"pruned_{k}_ms"] = best["pruned", k]
                        row[f"speedup_{k}"] = best["orig", k] / best["pruned", k]
                    row["orig_ms"] = row[f"orig_{metric}_ms"]
                    row["pruned_ms"] = row[f"pruned_{metric}_ms"]
                    row["speedup"] = row[f"speedup_{metric}"]
                    row["efficiency"] = row["speedup"] * flops_ratio
                    results.append(row)
                    log(f"{name:9s} {variant:6s} batch {batch:3d}: {metric} orig "
                        f"{row['orig_ms']:9.3f} ms  pruned {row['pruned_ms']:9.3f} ms  speed-up "
                        f"{row['speedup']:5.2f}x (wall {row['speedup_wall']:4.2f}x, cpu "
                        f"{row['speedup_cpu']:4.2f}x; 1/flops {1 / flops_ratio:4.2f}x)  "
                        f"efficiency {row['efficiency']:6.1%}  "
                        f"{'OK' if row['efficiency'] >= TARGET_EFFICIENCY else 'below target'}")
    return results


def table_rows(quick: bool = False) -> List[Dict]:
    """Rows for benchmarks/run.py: impl = pruned model, ref = original, ratio = speed-up."""
    batches = (1, 8) if quick else (1, 64)
    rows = []
    for r in measure(batches=batches, variants=("frozen",) if quick else ("frozen", "ofi"),
                     rounds=1 if quick else 3, quick=quick, log=lambda *_: None):
        rows.append(row(
            f"gcnprune_run {r['model']} pruned ({r['variant']})", f"{r['batch']}x3x32x32",
            r["pruned_ms"], "unpruned", r["orig_ms"],
            note=(f"{r['metric']} time; flops ratio {r['flops_ratio']:.3f}; speed-up/(1/flops) "
                  f"{r['efficiency']:.0%} (target {TARGET_EFFICIENCY:.0%}); "
                  f"{r['threads']} thread(s), round_to={r['round_to']}")))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, fewer iterations")
    parser.add_argument("--models", nargs="*", default=["resnet56", "vgg16_bn"])
    parser.add_argument("--batches", nargs="*", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=["frozen", "ofi"], choices=VARIANTS)
    parser.add_argument("--flops", type=float, default=0.5, help="target FLOPs ratio")
    parser.add_argument("--round-to", type=int, default=8,
                        help="kept channel counts are multiples of this (8 = the AVX2 vector "
                             "width; 1 leaves odd widths that run ResNet-56 at ~70%% of the "
                             "FLOPs ratio)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the runner")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; best median wins")
    parser.add_argument("--metric", choices=["cpu", "wall"], default="cpu",
                        help="time behind the speed-up: median CPU time per iteration (robust "
                             "on shared machines, = compute time with one thread) or wall time")
    args = parser.parse_args(argv)
    batches = args.batches or ([1, 8] if args.quick else [1, 64])
    print(f"# gcnprune_run latency, torch {torch.__version__}, {args.threads} thread(s), "
          f"round_to={args.round_to}, target FLOPs ratio {args.flops}")
    results = measure(args.models, batches, args.variants, args.flops, args.round_to,
                      args.threads, args.rounds, args.quick, args.metric)
    ok = all(r["efficiency"] >= TARGET_EFFICIENCY for r in results)
    print(f"# speed-up >= {TARGET_EFFICIENCY:.0%} of the FLOPs ratio in every row: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
