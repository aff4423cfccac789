"""Quality benchmark: every pruning method at the same FLOPs budget on a trained CIFAR-10 model.

One command trains (or loads from ``--cache-dir``) a CIFAR-10 ResNet-20 on the real data in
``../shared/data/cifar10``, prunes it with every method at 50% FLOPs with the same fine-tuning
budget and seeds, and prints a table: accuracy after pruning (before fine-tuning), after
fine-tuning, FLOPs and params kept, search time.

    python benchmarks/quality.py                                  # all registered methods, seeds 0 1
    python benchmarks/quality.py --methods l1 fpgm --seeds 0 --finetune-epochs 1
    python benchmarks/quality.py --train-only --train-epochs 8    # just train + cache the model
    python benchmarks/quality.py --model resnet56 --allocation global --flops 0.5

Results go to ``--out`` (default ``runs/quality``) as ``quality.json`` and ``quality.md``.
The whole run is skipped (exit 0, with a message) when the shared CIFAR-10 data is absent.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10")


def trained_model(model_name: str, data_root: str, cache_dir: str, epochs: int, batch_size: int,
                  lr: float, seed: int, progress: bool = True):
    """Return ``(model, info)``: the cached trained model, or train it (resumable) and cache it."""
    from gcnprune_fast.data import load_shared_cifar10, make_loaders
    from gcnprune_fast.models import get_model
    from gcnprune_fast.training import evaluate, train

    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, f"{model_name}-cifar10-e{epochs}-b{batch_size}-lr{lr:g}-s{seed}")
    final, ckpt = stem + ".pt", stem + ".ckpt"
    model = get_model(model_name, num_classes=10)
    if os.path.isfile(final):
        saved = torch.load(final, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        model.eval()
        return model, saved["info"]
    train_ds, test_ds = load_shared_cifar10(data_root)
    train_loader, test_loader = make_loaders(train_ds, test_ds, batch_size=batch_size)
    print(f"training {model_name} on CIFAR-10 for {epochs} epochs (checkpoint {ckpt}) ...", flush=True)
    t0 = time.perf_counter()
    history = train(model, train_loader, epochs, lr=lr, val_loader=None, progress=progress,
                    checkpoint_path=ckpt, seed=seed)
    train_s = time.perf_counter() - t0
    acc = evaluate(model, test_loader)
    info = {"model": model_name, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "test_acc": acc, "train_time_s": train_s, "history": history}
    tmp = final + ".tmp"
    torch.save({"model": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, final)
    print(f"trained {model_name}: test acc {acc:.4f} in {train_s / 60:.1f} min -> {final}", flush=True)
    return model, info


def main(argv=None) -> int:
    from gcnprune_fast.methods import ALLOCATIONS, method_names

    all_methods = method_names()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=DEFAULT_DATA, help="folder with train.npz/test.npz")
    p.add_argument("--cache-dir", default=os.path.join(REPO, ".cache", "quality"))
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--methods", nargs="+", default=list(all_methods), choices=all_methods)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--flops", type=float, default=0.5, help="fraction of FLOPs kept")
    p.add_argument("--allocation", default=None, choices=ALLOCATIONS,
                   help="budget allocation of the methods that have the option (default: the "
                   "method's default)")
    p.add_argument("--finetune-epochs", type=float, default=0.25,
                   help="fine-tuning budget in epochs of the training set (fractions allowed; "
                        "one cosine schedule over that many steps)")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--episodes", type=int, default=None,
                   help="search episodes of the methods that have the option")
    p.add_argument("--test-samples", type=int, default=None,
                   help="evaluate on the first N test images only (default: all 10,000)")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished (method, seed) runs of an interrupted run in --out")
    p.add_argument("--train-epochs", type=int, default=8)
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--train-lr", type=float, default=0.1)
    p.add_argument("--train-only", action="store_true", help="train/cache the model and stop")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not all(os.path.isfile(os.path.join(args.data_root, f"{s}.npz")) for s in ("train", "test")):
        print(f"SKIP: CIFAR-10 npz files not found in {args.data_root} (expected train.npz and "
              f"test.npz; see ../shared/data/README.md)")
        return 0
    progress = not args.no_progress
    base, info = trained_model(args.model, args.data_root, args.cache_dir, args.train_epochs,
                               args.train_batch_size, args.train_lr, seed=0, progress=progress)
    if args.train_only:
        print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=1))
        return 0
    return run_methods(args, base, info, progress)


def run_methods(args, base, info, progress) -> int:
    import copy

    from gcnprune_fast import prune
    from gcnprune_fast.data import TensorImageDataset, load_shared_cifar10, make_loaders
    from gcnprune_fast.methods import get_method
    from gcnprune_fast.report import write_quality_report
    from gcnprune_fast.space import load_pruned
    from gcnprune_fast.training import evaluate, train

    train_ds, test_ds = load_shared_cifar10(args.data_root)
    if args.test_samples:
        test_ds = TensorImageDataset(test_ds.images[:args.test_samples], test_ds.labels[:args.test_samples],
                                     tuple(test_ds.mean.flatten().tolist()), tuple(test_ds.std.flatten().tolist()),
                                     num_classes=10)
    train_loader, test_loader = make_loaders(train_ds, test_ds, batch_size=args.train_batch_size)
    # Search / scoring / BN re-estimation data: un-augmented training images (never the test set).
    search_ds, _ = load_shared_cifar10(args.data_root, augment_train=False)
    search_loader, _ = make_loaders(search_ds, None, batch_size=args.train_batch_size)
    base_acc = evaluate(base, test_loader)
    print(f"{args.model}: test acc {base_acc:.4f} on {len(test_ds)} test images "
          f"(trained {info['epochs']} epochs)", flush=True)
    steps = max(1, int(round(args.finetune_epochs * len(train_loader))))

    os.makedirs(args.out, exist_ok=True)
    partial = os.path.join(args.out, "quality.partial.jsonl")
    rows = []
    if args.resume and os.path.isfile(partial):
        with open(partial) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(f"resuming: {len(rows)} finished runs read from {partial}")
    elif os.path.isfile(partial):
        os.remove(partial)
    done = {(r["method"], r["seed"]) for r in rows}
    for seed in args.seeds:          # seed-major: a cut-short run still covers every method once
        for method in args.methods:
            if (method, seed) in done:
                continue
            spec, opts = get_method(method), {}
            if args.allocation and spec.has_option("allocation"):
                opts["allocation"] = args.allocation
            if args.episodes and spec.has_option("episodes"):
                opts["episodes"] = args.episodes
            t0 = time.perf_counter()
            res = prune(base, search_loader, method=method, flops=args.flops, val_loader=search_loader,
                        train_loader=search_loader, eval_batches=1, seed=seed, progress=progress, **opts)
            search_s = float(res.report.get("search_time_s", time.perf_counter() - t0))
            # Before BN re-estimation: the original weights sliced by the plan.
            raw = load_pruned(copy.deepcopy(base), res.plan).eval()
            acc_raw = evaluate(raw, test_loader)
            model = res.model            # physically pruned + BN re-estimated by prune()
            acc_recal = evaluate(model, test_loader)
            t1 = time.perf_counter()
            ft_epochs = math.ceil(steps / len(train_loader))
            train(model, train_loader, ft_epochs, lr=args.finetune_lr, seed=seed, progress=progress,
                  max_steps_per_epoch=math.ceil(steps / ft_epochs))
            ft_s = time.perf_counter() - t1
            acc_ft = evaluate(model, test_loader)
            r = res.report
            row = {"method": method, "seed": seed, "acc_base": base_acc, "acc_pruned": acc_raw,
                   "acc_bn_recalibrated": acc_recal, "acc_finetuned": acc_ft,
                   "flops_kept": r["flops_after"] / r["flops_before"],
                   "params_kept": r["params_after"] / r["params_before"],
                   "search_time_s": search_s, "finetune_time_s": ft_s, "finetune_steps": steps,
                   "episodes": r.get("episodes"),
                   "widths": [w["after"] if isinstance(w, dict) else w for w in r.get("widths", [])]}
            rows.append(row)
            with open(partial, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{method:12s} seed {seed}: pruned {acc_raw:.4f} bn-re-estimated {acc_recal:.4f} "
                  f"fine-tuned {acc_ft:.4f} flops {row['flops_kept']:.3f} params {row['params_kept']:.3f} "
                  f"search {search_s:.1f} s fine-tune {ft_s:.0f} s", flush=True)
    meta = {"model": args.model, "dataset": "cifar10 (shared JPEG copy)", "test_images": len(test_ds),
            "flops_budget": args.flops, "allocation": args.allocation or "method default",
            "finetune_steps": steps, "finetune_batch": args.train_batch_size,
            "finetune_lr": args.finetune_lr, "seeds": " ".join(map(str, args.seeds)), "base_acc": base_acc,
            "base_train_epochs": info["epochs"], "threads": torch.get_num_threads(),
            "train_info": {k: v for k, v in info.items() if k != "history"}}
    rows.sort(key=lambda r: (args.methods.index(r["method"]) if r["method"] in args.methods else 99, r["seed"]))
    md = write_quality_report(args.out, rows, meta)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
