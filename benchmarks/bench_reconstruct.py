"""Least-squares reconstruction (``prune(reconstruct="all")``) against plain slicing.

On the quality protocol's data (``benchmarks/quality.py``: search split for the refit, BN
re-estimation and fine-tuning; the test set for the numbers) and a trained model, the masks of the
plain criteria (``methods.search.rerank.criterion_candidates``: L1 / L2 global and uniform) at each
``--flops`` budget are turned into models twice: sliced with BN re-estimation (what ``prune()``
does by default: the reference) and refit by least squares on ``--images`` search images (original
BN statistics kept, as ``prune(reconstruct=...)`` does). Columns: test accuracy of each before
fine-tuning, refit minus sliced, the refit's time, and the same after each ``--finetune-epochs``
(cosine-decayed, bf16 autocast with ``--finetune-amp bf16``; one run per length and ``--seeds``
seed, identical for both; paired difference with a 95% interval over seeds). ``--no-bn-ablation``
skips the ablation row "refit + BN re-estimated" (the choice to keep the original statistics).

Usage:
    python benchmarks/bench_reconstruct.py --flops 0.5 0.3 --images 512 2048
    python benchmarks/bench_reconstruct.py --criteria l1-global-mean --finetune-epochs 1 --seeds 0 1 2
    python benchmarks/bench_reconstruct.py --synthetic 600 --model simple_cnn --image-size 16   # smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import quality as Q  # noqa: E402  (the protocol's data, model loading, fine-tune, statistics)


def main(argv=None) -> int:
    from gcnprune_fast import training
    from gcnprune_fast.data import TensorBatchLoader
    from gcnprune_fast.methods.allocation import Budget
    from gcnprune_fast.methods.search.rerank import CRITERION_CANDIDATES, criterion_candidates
    from gcnprune_fast.space import PruningSpace
    from gcnprune_fast.space.reconstruct import reconstruct, reconstruction_batches

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=os.path.join(HERE, "models", "resnet20_cifar10.pt"))
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-root", default=Q.DEFAULT_DATA)
    p.add_argument("--synthetic", type=int, default=0, help="generated data of this many images "
                   "(no checkpoint: a model quickly trained on it)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--search-images", type=int, default=45000)
    p.add_argument("--selection-images", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=0)
    p.add_argument("--flops", type=float, nargs="+", default=[0.5])
    p.add_argument("--criteria", nargs="+", choices=CRITERION_CANDIDATES,
                   default=list(CRITERION_CANDIDATES))
    p.add_argument("--images", type=int, nargs="+", default=[512])
    p.add_argument("--layers", choices=("all", "pruned"), default="all")
    p.add_argument("--finetune-epochs", type=int, nargs="*", default=[])
    p.add_argument("--finetune-amp", choices=("none", "bf16"), default="none")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-bn-ablation", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="jsonl file of the rows")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.synthetic and not os.path.isfile(os.path.join(args.data_root, "train.npz")):
        print(f"SKIP: CIFAR-10 npz files not found in {args.data_root}")
        return 0
    search, _, test, num_classes, channels = Q.load_data(args)
    if args.synthetic:
        args.checkpoint = None
    model = Q.load_model(args, num_classes, channels)
    if args.synthetic:
        Q.train_quick_model(model, TensorBatchLoader(search, 64, shuffle=True), 3, seed=0)
    test_loader = TensorBatchLoader(test, 500, shuffle=False)
    bn_loader = TensorBatchLoader(search, 128, shuffle=False)
    example = next(iter(TensorBatchLoader(search, 2, shuffle=False)))[0]
    space = PruningSpace(model, example)
    amp = None if args.finetune_amp == "none" else args.finetune_amp
    out = open(args.out, "a") if args.out else None

    def finetuned(compact, seed):
        if not args.finetune_epochs:
            return {}
        res = Q.finetune_and_evaluate(copy.deepcopy(compact), search, test_loader,
                                      sorted(set(args.finetune_epochs)), 0.01, seed, amp=amp,
                                      schedule="cosine")
        return {k: v for k, v in res.items() if k != "acc_ft0"}

    def emit(row):
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    rows = []
    for flops in args.flops:
        candidates = dict(criterion_candidates(space, Budget.from_ratios(space, flops=flops)))
        for name in args.criteria:
            masks = candidates[name]
            sliced = space.prune(masks)
            training.recalibrate_bn(sliced, bn_loader, num_batches=20)
            base = {"flops": flops, "criterion": name,
                    "flops_kept": float(space.cost(masks)[0]) / float(space.base_flops)}
            ref = {**base, "kind": "sliced+bn", "acc_ft0": training.evaluate(sliced.eval(),
                                                                             test_loader)}
            ref_ft = {seed: finetuned(sliced, seed) for seed in args.seeds}
            for seed in args.seeds:
                emit({**ref, "seed": seed, **ref_ft[seed]})
            for images in args.images:
                calibration = reconstruction_batches(TensorBatchLoader(
                    search, 128, shuffle=True, generator=torch.Generator().manual_seed(0)), images)
                t0 = time.perf_counter()
                refit = reconstruct(space, masks, calibration, layers=args.layers)
                seconds = time.perf_counter() - t0
                kinds = [("refit", refit)]
                if not args.no_bn_ablation:
                    refit_bn = copy.deepcopy(refit)
                    training.recalibrate_bn(refit_bn, bn_loader, num_batches=20)
                    kinds.append(("refit+bn", refit_bn))
                for kind, compact in kinds:
                    acc0 = training.evaluate(compact.eval(), test_loader)
                    for seed in args.seeds:
                        row = {**base, "kind": kind, "images": images, "refit_s": seconds,
                               "seed": seed, "acc_ft0": acc0,
                               **(finetuned(compact, seed) if kind == "refit" else {})}
                        emit(row)
                        rows.append((row, {**ref, **ref_ft[seed]}))
    if out:
        out.close()
    print("\n| budget | criterion | kind | images | refit s | FLOPs kept | sliced | refit | "
          "refit - sliced (95%) |")
    print("|---|---|---|---|---|---|---|---|---|")
    lengths = [0] + sorted(set(e for e in args.finetune_epochs if e > 0))
    groups = {}
    for row, ref in rows:
        groups.setdefault((row["flops"], row["criterion"], row["kind"], row["images"]),
                          []).append((row, ref))
    for (flops, name, kind, images), pairs in groups.items():
        for e in lengths:
            key = f"acc_ft{e}"
            if key not in pairs[0][0]:
                continue
            a = [100 * r[key] for r, _ in pairs]
            b = [100 * s[key] for _, s in pairs]
            d = Q.mean_ci([x - y for x, y in zip(a, b)])
            print(f"| {flops} | {name} | {kind} ({e} ep) | {images} | "
                  f"{pairs[0][0]['refit_s']:.1f} | {pairs[0][0]['flops_kept']:.3f} | "
                  f"{Q.mean_ci(b)[0]:.2f} | {Q.mean_ci(a)[0]:.2f} | {d[0]:+.2f} +- {d[1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
