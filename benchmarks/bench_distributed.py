"""Search throughput (scored masks per second) of the default method with 1 and N processes
(torch.distributed: gloo on the CPU, NCCL on GPUs; the masks of every update are split across
the ranks, see gcnprune_fast/distributed.py).

    python benchmarks/bench_distributed.py                          # resnet20, 1 and 2 processes
    python benchmarks/bench_distributed.py --model resnet56 --episodes 60 --procs 1 2 4
    python benchmarks/bench_distributed.py --device cuda --procs 1 2 4 8   # one GPU per process

Two figures per run: wall-clock throughput, and the throughput by the CPU time of the busiest
rank (with one thread per process that is the wall time the run takes when every process has a
core of its own, waits in collectives cost no CPU; the figure to read on a shared, loaded machine).

Every configuration runs in freshly spawned processes (N = 1 too: no process group, the
single-process path), ``--threads`` torch threads each; the configuration "1 x T" with T =
threads x N is the single process given the same cores. Timed: the search after the features
(graph, policy, episodes, policy updates), i.e. what the split speeds up; throughput = scored
masks (episodes + one greedy mask per update + the final greedy) / seconds. Every run must return
the masks of the 1-process run (checked). Inputs are random images (speed does not depend on the
data). ``table_rows(quick)`` gives the rows of ``benchmarks/run.py`` (ratio = speed-up over the
1-process run).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

from common import format_table, header, row


def _worker(rank: int, nprocs: int, cfg: dict, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"] if cfg["device"] == "cpu" else f"cuda:{rank}")
    if nprocs > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"file://{folder}/init", rank=rank,
                                world_size=nprocs)
    try:
        from gcnprune_fast.features import collect_features
        from gcnprune_fast.methods import Budget, SearchContext, channel_gcn
        from gcnprune_fast.models import get_model
        from gcnprune_fast.space import PruningSpace

        gen = torch.Generator().manual_seed(0)
        n, size = cfg["samples"], cfg["image_size"]
        x = torch.randn(n, 3, size, size, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]
        torch.manual_seed(0)
        model = get_model(cfg["model"]).to(device).eval()
        space = PruningSpace(model, x[:2].to(device))
        opts = {"episodes": cfg["episodes"], "episodes_per_update": cfg["per_update"],
                "reward_samples": cfg["reward_samples"], "feature_samples": n}
        ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5), loader=loader,
                            device=device, options=opts)
        feats = collect_features(space, loader, max_samples=n, device=device)
        if nprocs > 1:
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        result = channel_gcn.search(space, ctx, features=feats)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        cpus = [cpu]
        if nprocs > 1:
            cpus = [None] * nprocs
            dist.all_gather_object(cpus, cpu)
        if rank == 0:
            info = result.info
            torch.save({"seconds": seconds, "cpu_max": max(cpus), "episodes": info["episodes"],
                        "updates": info["updates"], "forwards": info["masked_evaluations"],
                        "masks": [m.cpu() for m in result.masks]},
                       os.path.join(folder, "result.pt"))
    finally:
        if nprocs > 1:
            dist.destroy_process_group()


def run_config(nprocs: int, cfg: dict) -> dict:
    """One configuration in fresh processes; the facts of rank 0."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(nprocs, cfg, folder), nprocs=nprocs, join=True)
        out = torch.load(os.path.join(folder, "result.pt"), weights_only=True)
    out["scored"] = out["episodes"] + out["updates"] + 1
    out["masks_per_s"] = out["scored"] / out["seconds"]
    out["masks_per_cpu_s"] = out["scored"] / out["cpu_max"]
    return out


def measure_all(cfg: dict, procs) -> list:
    """Rows (dicts) for 1 x (threads * N) and N x threads processes, N in ``procs``."""
    results = []
    base = None
    for n in procs:
        layouts = [(n, cfg["threads"])]
        if n > 1 and cfg["device"] == "cpu":
            layouts.insert(0, (1, cfg["threads"] * n))  # one process on the same cores
        for nprocs, threads in layouts:
            r = run_config(nprocs, dict(cfg, threads=threads))
            if base is None:
                base = r
            same = all(torch.equal(a, b) for a, b in zip(r["masks"], base["masks"]))
            results.append({"layout": f"{nprocs} x {threads}", "procs": nprocs,
                            "threads": threads, **{k: r[k] for k in (
                                "seconds", "cpu_max", "scored", "forwards", "masks_per_s",
                                "masks_per_cpu_s")},
                            "speedup": r["masks_per_s"] / base["masks_per_s"],
                            "cpu_speedup": r["masks_per_cpu_s"] / base["masks_per_cpu_s"],
                            "same_masks": same})
            print(f"  {nprocs} process(es) x {threads} thread(s): {r['scored']} masks in "
                  f"{r['seconds']:.1f} s wall = {r['masks_per_s']:.2f} masks/s "
                  f"(x{results[-1]['speedup']:.2f}); busiest rank {r['cpu_max']:.1f} CPU s = "
                  f"{r['masks_per_cpu_s']:.2f} masks/CPU-s (x{results[-1]['cpu_speedup']:.2f}); "
                  f"{r['forwards']} forwards; same masks: {same}", flush=True)
    return results


def ideal_speedup(per_update: int, nprocs: int) -> float:
    """Upper bound of the split: (E + 1) masks per update over ceil((E + 1) / N) rounds."""
    return (per_update + 1) / math.ceil((per_update + 1) / nprocs)


def table_rows(quick: bool = False) -> list:
    cfg = dict(model="resnet20", episodes=10 if quick else 40, per_update=10,
               reward_samples=64 if quick else 256, samples=128, image_size=32, threads=1,
               device="cpu")
    rows = []
    res = measure_all(cfg, (1, 2))
    base = res[0]
    for r in res:
        rows.append(row(f"search {r['layout']} procs x threads", cfg["model"],
                        1e3 / r["masks_per_s"], "1 x 1", 1e3 / base["masks_per_s"],
                        note=f"ms per scored mask; same masks: {r['same_masks']}"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--per-update", type=int, default=10, help="episodes per policy update")
    p.add_argument("--reward-samples", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < max(args.procs):
        print(f"--device cuda needs {max(args.procs)} GPUs, {torch.cuda.device_count()} visible")
        return 2
    cfg = dict(model=args.model, episodes=args.episodes, per_update=args.per_update,
               reward_samples=args.reward_samples, samples=128, image_size=args.image_size,
               threads=args.threads, device=args.device)
    print(header("distributed search throughput"))
    print(f"{args.model} {args.image_size}px, {args.episodes} episodes, {args.per_update} per "
          f"update, reward set {args.reward_samples} images, device {args.device}", flush=True)
    res = measure_all(cfg, args.procs)
    base = res[0]
    rows = [row(f"search {r['layout']}", args.model, 1e3 / r["masks_per_s"], "1 process",
                1e3 / base["masks_per_s"],
                note=f"{r['masks_per_s']:.2f} masks/s; by busiest-rank CPU time x"
                     f"{r['cpu_speedup']:.2f}; ideal x"
                     f"{ideal_speedup(args.per_update, r['procs']):.2f}; same masks: "
                     f"{r['same_masks']}") for r in res]
    print(format_table(rows))
    return 0 if all(r["same_masks"] for r in res) else 1


if __name__ == "__main__":
    sys.exit(main())
