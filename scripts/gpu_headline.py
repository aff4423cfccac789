"""The headline on a GPU: train VGG-16-BN on CIFAR-10 in minutes, prune it with the default method
to 7% of its parameters, fine-tune; then ResNet-56 at 50% FLOPs with a short fine-tune.

    python scripts/gpu_headline.py --data gpu_payload/cifar10 --jsonl $OUT/results.jsonl
    python scripts/gpu_headline.py --device cpu --quick          # toy sizes and models (CPU check)
    python scripts/gpu_headline.py ... --export-dir /tmp/ts       # + TorchScript of every model

Training (its own loop; ``gcnprune_fast.training`` is the generic CPU-friendly one): the whole
data set resident on the device as uint8, random crop (pad 4) + flip on the device, bf16 autocast,
channels_last, SGD with Nesterov momentum and a OneCycle schedule, batch 512, label smoothing 0.1.
Pruning: ``gcnprune_fast.prune(model, loader, params=0.07)`` (default method, its default options;
features / reward set / BN re-estimation from unaugmented training batches, accuracies on the test
set), then fine-tuning with the same loop. Every milestone is appended to ``--jsonl`` as soon as it
is known (``{"stage": "headline", "model": ..., "event": "trained" | "pruned" | "finetuned", ...}``).

Deployment files: with ``--export-dir DIR`` the trained original and the pruned model of every
job are written there as TorchScript (``gcnprune_fast.export.export_model(..., optimize=True)``:
frozen, BatchNorm folded; exported from a float32, contiguous CPU copy, so that a runner maps
them to any device): ``DIR/<tag>_orig.pt`` right after training, ``DIR/<tag>_pruned.pt`` right
after pruning (the structure is final there, so a run cut short during fine-tuning still has it)
and again after fine-tuning (the final weights). ``<tag>`` is the model and its budget, e.g.
``vgg16_bn_params0.07``. Each file is announced by an ``"event": "exported"`` record (tag,
variant orig|pruned, path, weights, params/FLOPs ratios); scripts/gpu_check.sh's runner stage
times them with ``gcnprune_run``.

Data: ``--data DIR`` with ``train.npz`` / ``test.npz`` (JPEG npz, decoded in parallel here);
without it ``gpu_payload/cifar10`` then ``../shared/data/cifar10`` are tried; with none of them
(or ``--synthetic``) a synthetic stand-in is used and the accuracies mean nothing.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import gcnprune_fast  # noqa: E402
from gcnprune_fast.data import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from gcnprune_fast.models import get_model  # noqa: E402


# ------------------------------------------------------------------------------------------------
# data


def _decode_chunk(args) -> np.ndarray:
    from PIL import Image

    blob, offsets = args
    base = offsets[0]
    return np.stack([np.asarray(Image.open(io.BytesIO(blob[a - base:b - base])).convert("RGB"))
                     for a, b in zip(offsets[:-1], offsets[1:])])


def decode_npz(path: str, workers: int, limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images [N, 32, 32, 3] uint8, labels [N] int64) from a JPEG npz, decoded by ``workers``
    processes."""
    with np.load(path) as d:
        jpeg, off, labels = d["jpeg"], d["offsets"].astype(np.int64), d["labels"].astype(np.int64)
    n = len(labels) if limit is None else min(limit, len(labels))
    step = max(1, math.ceil(n / max(workers, 1) / 4))
    jobs = [(jpeg[off[i]:off[min(i + step, n)]].tobytes(), off[i:min(i + step, n) + 1])
            for i in range(0, n, step)]
    if workers <= 1 or len(jobs) == 1:
        parts = [_decode_chunk(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_decode_chunk, jobs))
    return np.concatenate(parts), labels[:n]


class DeviceData:
    """uint8 images [N, 3, 32, 32] and labels on the device; batches normalized there."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device):
        self.x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        self.y = torch.from_numpy(labels).to(device)
        self.mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.y.numel()

    def normalized(self, idx) -> torch.Tensor:
        x = self.x[idx].float().div_(255.0)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def augmented(self, idx, gen: torch.Generator) -> torch.Tensor:
        """Random crop (zero padding 4 after normalization = the mean colour) + horizontal flip."""
        x = F.pad(self.normalized(idx), (4, 4, 4, 4))
        b = x.shape[0]
        dev = x.device
        dy = torch.randint(0, 9, (b,), device=dev, generator=gen)
        dx = torch.randint(0, 9, (b,), device=dev, generator=gen)
        r = torch.arange(32, device=dev)
        rows, cols = (dy[:, None] + r)[:, :, None], (dx[:, None] + r)[:, None, :]
        x = x[torch.arange(b, device=dev)[:, None, None], :, rows, cols]  # [B, 32, 32, 3]
        x = x.permute(0, 3, 1, 2)  # channels_last strides
        flip = torch.rand(b, device=dev, generator=gen) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def batches(self, batch_size: int, limit: Optional[int] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Unaugmented (x, y) batches in order, contiguous format (what prune() gets)."""
        n = len(self) if limit is None else min(limit, len(self))
        out = []
        for i in range(0, n, batch_size):
            idx = torch.arange(i, min(i + batch_size, n), device=self.x.device)
            out.append((self.normalized(idx).contiguous(), self.y[idx]))
        return out


def synthetic(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Class-dependent blobs so that training has something to learn."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 10, n)
    base = g.integers(0, 256, (10, 32, 32, 3))
    noise = g.integers(-60, 60, (n, 32, 32, 3))
    return np.clip(base[y] + noise, 0, 255).astype(np.uint8), y.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# training


def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 2000) -> float:
    model.eval()
    correct = 0
    dev_type = data.x.device.type
    with torch.no_grad(), torch.autocast(dev_type, dtype=torch.bfloat16,
                                         enabled=dev_type == "cuda"):
        for i in range(0, len(data), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(data)), device=data.x.device)
            correct += int((model(data.normalized(idx)).argmax(1) == data.y[idx]).sum())
    return correct / max(len(data), 1)


def train(model: nn.Module, data: DeviceData, epochs: int, lr: float, batch_size: int,
          weight_decay: float = 5e-4, label_smoothing: float = 0.1, seed: int = 0,
          log=print, tag: str = "") -> Dict[str, float]:
    dev = data.x.device
    model.to(dev).to(memory_format=torch.channels_last).train()
    gen = torch.Generator(device=dev).manual_seed(seed)
    steps_per_epoch = len(data) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} training images < batch size {batch_size}")
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    total_steps = epochs * steps_per_epoch
    if total_steps >= 8:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps, pct_start=max(0.25, 2.5 / total_steps),
            div_factor=10.0, final_div_factor=100.0)
    else:  # too few steps for a schedule (toy runs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1)
    t0 = time.perf_counter()
    loss_val = float("nan")
    for epoch in range(epochs):
        perm = torch.randperm(len(data), device=dev, generator=gen)
        total = torch.zeros((), device=dev)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            x = data.augmented(idx, gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = F.cross_entropy(model(x), data.y[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        loss_val = float(total) / steps_per_epoch
        log(f"    {tag} epoch {epoch + 1}/{epochs}: loss {loss_val:.3f} "
            f"({time.perf_counter() - t0:.1f} s)")
    model.eval()
    return {"train_s": time.perf_counter() - t0, "final_loss": loss_val}


# ------------------------------------------------------------------------------------------------


def job_tag(name: str, budget: Dict[str, float]) -> str:
    """File-name tag of one headline job: the model and its budget (``resnet56_flops0.5``)."""
    return name + "".join(f"_{k}{v:g}" for k, v in sorted(budget.items()))


def export_torchscript(net: nn.Module, path: str, rec: "Recorder", **fields) -> None:
    """Writes ``net`` as frozen TorchScript (``export_model(..., optimize=True)``) from a
    float32, contiguous-format CPU copy and records an ``exported`` event; a failure is recorded
    (``export_failed``) and does not stop the headline."""
    from gcnprune_fast.export import export_model

    t0 = time.perf_counter()
    try:
        cpu = copy.deepcopy(net).float().cpu().to(memory_format=torch.contiguous_format).eval()
        # written aside, then renamed: a run cut short never leaves a half-written model
        export_model(cpu, path + ".partial", torch.randn(1, 3, 32, 32), "torchscript",
                     optimize=True)
        os.replace(path + ".partial", path)
        rec(event="exported", path=path, format="torchscript", optimize=True,
            export_s=time.perf_counter() - t0, bytes=os.path.getsize(path), **fields)
    except Exception as exc:  # noqa: BLE001 -- recorded; the runner stage reports the gap
        rec(event="export_failed", path=path, error=f"{type(exc).__name__}: {exc}"[:300],
            **fields)


class Recorder:
    def __init__(self, jsonl: Optional[str]):
        self.jsonl = jsonl
        self.records: List[dict] = []

    def __call__(self, **rec) -> None:
        rec = dict(stage="headline", **rec)
        self.records.append(rec)
        print("  " + json.dumps(rec), flush=True)
        if self.jsonl:
            with open(self.jsonl, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


def run_model(name: str, budget: Dict[str, float], epochs: int, ft_epochs: int, lr: float,
              ft_lr: float, train_data: DeviceData, test_data: DeviceData, args, rec: Recorder
              ) -> None:
    dev = train_data.x.device
    torch.manual_seed(args.seed)
    model = get_model(name)
    rec(model=name, event="start", params=sum(p.numel() for p in model.parameters()),
        epochs=epochs, lr=lr, batch_size=args.batch_size, train_images=len(train_data),
        test_images=len(test_data))
    info = train(model, train_data, epochs, lr, args.batch_size, seed=args.seed, tag=name)
    acc = evaluate(model, test_data)
    rec(model=name, event="trained", acc=acc, **info)
    tag = job_tag(name, budget)
    if args.export_dir:
        export_torchscript(model, os.path.join(args.export_dir, f"{tag}_orig.pt"), rec,
                           model=name, tag=tag, variant="orig", weights="trained",
                           params_ratio=1.0, flops_ratio=1.0)

    model = model.to(memory_format=torch.contiguous_format).float().eval()
    loader = train_data.batches(args.prune_batch_size, limit=args.prune_images)
    val = test_data.batches(1000)
    t0 = time.perf_counter()
    opts = dict(args.method_options)
    result = gcnprune_fast.prune(model, loader, val_loader=val, train_loader=loader,
                                 finetune_epochs=0, device=dev, progress=False, seed=args.seed,
                                 bn_batches=min(20, len(loader)), **budget, **opts)
    r = result.report
    rec(model=name, event="pruned", method=r["method"], budget=budget,
        params_before=r["params_before"], params_after=r["params_after"],
        params_ratio=r["params_ratio"], flops_before=r["flops_before"],
        flops_after=r["flops_after"], flops_ratio=r["flops_ratio"], acc_before=r["acc_before"],
        acc_pruned_bn=r["acc_pruned"], search_time_s=r["search_time_s"],
        episodes=r["episodes"], prune_total_s=time.perf_counter() - t0,
        widths=[w["after"] for w in r["widths"]])
    compact = result.model
    ratios = dict(params_ratio=r["params_ratio"], flops_ratio=r["flops_ratio"])
    pruned_path = os.path.join(args.export_dir, f"{tag}_pruned.pt") if args.export_dir else None
    if pruned_path:  # the structure is final here: a run cut short still has a model to time
        export_torchscript(compact, pruned_path, rec, model=name, tag=tag, variant="pruned",
                           weights="pruned", **ratios)
    if ft_epochs > 0:
        info = train(compact, train_data, ft_epochs, ft_lr, args.batch_size, seed=args.seed + 1,
                     tag=f"{name} fine-tune")
        acc_ft = evaluate(compact, test_data)
        rec(model=name, event="finetuned", acc=acc_ft, acc_trained=acc, epochs=ft_epochs,
            **ratios, **info)
        if pruned_path:  # the final weights (same structure, so the same latency)
            export_torchscript(compact, pruned_path, rec, model=name, tag=tag, variant="pruned",
                               weights="finetuned", **ratios)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes (CPU check)")
    parser.add_argument("--data", default=None, help="folder with train.npz / test.npz")
    parser.add_argument("--synthetic", action="store_true", help="synthetic data, even with a copy")
    parser.add_argument("--jsonl", help="append milestones to this JSON-lines file")
    parser.add_argument("--json", help="write all milestones to this JSON file at the end")
    parser.add_argument("--export-dir", default=None,
                        help="write the original and pruned models there as frozen TorchScript "
                             "(<tag>_orig.pt, <tag>_pruned.pt; 'exported' records)")
    parser.add_argument("--batch-size", type=int, default=None, help="512 (32 quick)")
    parser.add_argument("--vgg-epochs", type=int, default=None, help="20 (1 quick)")
    parser.add_argument("--vgg-ft-epochs", type=int, default=None, help="8 (1 quick)")
    parser.add_argument("--r56-epochs", type=int, default=None, help="15 (1 quick)")
    parser.add_argument("--r56-ft-epochs", type=int, default=None, help="4 (1 quick)")
    parser.add_argument("--lr", type=float, default=0.2, help="peak OneCycle lr of training")
    parser.add_argument("--ft-lr", type=float, default=0.05, help="peak OneCycle lr of fine-tuning")
    parser.add_argument("--params", type=float, default=0.07, help="VGG-16-BN params budget")
    parser.add_argument("--flops", type=float, default=0.5, help="ResNet-56 FLOPs budget")
    parser.add_argument("--prune-images", type=int, default=None,
                        help="training images given to prune() (10240; 64 quick)")
    parser.add_argument("--vgg-model", default=None,
                        help="the params-budget model (vgg16_bn; simple_cnn with --quick)")
    parser.add_argument("--r56-model", default=None,
                        help="the FLOPs-budget model (resnet56; simple_cnn with --quick)")
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--skip-r56", action="store_true")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option for prune() (e.g. episodes=300); repeatable")
    parser.add_argument("--workers", type=int, default=None, help="JPEG decode processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    q = args.quick
    args.batch_size = args.batch_size or (32 if q else 512)
    args.prune_batch_size = 32 if q else 256
    vgg_epochs = args.vgg_epochs if args.vgg_epochs is not None else (1 if q else 20)
    vgg_ft = args.vgg_ft_epochs if args.vgg_ft_epochs is not None else (1 if q else 8)
    r56_epochs = args.r56_epochs if args.r56_epochs is not None else (1 if q else 15)
    r56_ft = args.r56_ft_epochs if args.r56_ft_epochs is not None else (1 if q else 4)
    args.prune_images = args.prune_images or (64 if q else 10240)
    options = {}
    if q:  # a tiny search: the point is the code path
        options.update(episodes=2, episodes_per_update=2, feature_samples=32, reward_samples=16)
    for kv in args.option:
        key, _, value = kv.partition("=")
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                continue
        options[key] = {"true": True, "false": False}.get(value, value) \
            if isinstance(value, str) else value
    args.method_options = options
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    rec = Recorder(args.jsonl)
    root = None
    if not args.synthetic:
        for cand in ([args.data] if args.data else
                     [os.path.join(REPO, "gpu_payload", "cifar10"),
                      os.path.join(REPO, "..", "shared", "data", "cifar10")]):
            if cand and all(os.path.isfile(os.path.join(cand, f"{s}.npz")) for s in ("train", "test")):
                root = cand
                break
        if args.data and root is None:
            print(f"no train.npz/test.npz under {args.data}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    workers = args.workers or min(16, os.cpu_count() or 1)
    if root is None:
        ntr, nte = (128, 64) if q else (50000, 10000)
        (xtr, ytr), (xte, yte) = synthetic(ntr, 0), synthetic(nte, 1)
        source = "synthetic"
    elif q:  # the test split only: 128 images to train, 64 to test
        x, y = decode_npz(os.path.join(root, "test.npz"), workers, limit=192)
        (xtr, ytr), (xte, yte) = (x[:128], y[:128]), (x[128:], y[128:])
        source = f"{root} (test split subset)"
    else:
        xtr, ytr = decode_npz(os.path.join(root, "train.npz"), workers)
        xte, yte = decode_npz(os.path.join(root, "test.npz"), workers)
        source = root
    train_data, test_data = DeviceData(xtr, ytr, device), DeviceData(xte, yte, device)
    rec(event="data", source=source, train=len(train_data), test=len(test_data),
        load_s=time.perf_counter() - t0, device=str(device),
        gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
        torch=torch.__version__, native_cuda=gcnprune_fast.ops.native_cuda_available(),
        method_options=options)

    failed = []
    jobs = []
    if not args.skip_vgg:
        jobs.append((args.vgg_model or ("simple_cnn" if q else "vgg16_bn"),
                     {"params": args.params}, vgg_epochs, vgg_ft))
    if not args.skip_r56:
        jobs.append((args.r56_model or ("simple_cnn" if q else "resnet56"), {"flops": args.flops},
                     r56_epochs, r56_ft))
    for name, budget, epochs, ft in jobs:
        t1 = time.perf_counter()
        try:
            run_model(name, budget, epochs, ft, args.lr, args.ft_lr, train_data, test_data, args,
                      rec)
        except Exception as exc:  # noqa: BLE001 -- record it and go on with the next model
            import traceback

            traceback.print_exc()
            rec(model=name, event="failed", error=f"{type(exc).__name__}: {exc}"[:300])
            failed.append(name)
        rec(model=name, event="done", seconds=time.perf_counter() - t1)

    print("\nheadline:")
    for r in rec.records:
        if r.get("event") in ("trained", "pruned", "finetuned"):
            keys = ("acc", "acc_before", "acc_pruned_bn", "params_ratio", "flops_ratio",
                    "train_s", "search_time_s")
            print(f"  {r['model']:<9} {r['event']:<9} " + ", ".join(
                f"{k}={r[k]:.4f}" if isinstance(r[k], float) else f"{k}={r[k]}"
                for k in keys if k in r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rec.records, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
