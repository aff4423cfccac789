"""Quality protocol: every method, its ablations and Torch-Pruning's own pruners on one trained
model, the same fine-tune for all, several seeds, paired differences with confidence intervals.

    python benchmarks/quality.py --checkpoint benchmarks/models/resnet20_cifar10.pt \\
        --flops 0.5 0.3 --seeds 0 1 2 3 4 --finetune-epochs 0 1 5
    python benchmarks/quality.py --variants l1 fpgm "channel-gcn:lr=0" --tp-pruners l1-global
    python benchmarks/quality.py --synthetic 2000 --model simple_cnn --quick   # smoke test, no data

Protocol (docs/QUALITY.md):
- data, disjoint: the search split (the first ``--search-images`` training images, un-augmented:
  features, reward set, criteria data, BN re-estimation), the selection split (the last
  ``--selection-images`` training images: ``val_loader`` of ``prune()``, i.e. every choice a
  method makes among candidates), the test set only for the reported numbers. Fine-tuning uses the
  search split with augmentation (never the selection or test images).
- every variant (``method`` or ``method:key=value,...`` for options, e.g. ablations; prune()'s
  ``reconstruct`` / ``reconstruct_images`` too, e.g. ``l1:reconstruct=all``, and a latency
  budget, e.g. ``channel-gcn:flops=none,latency=0.5,latency_threads=1``) and every
  Torch-Pruning pruner (the ratio bisected to the same FLOPs budget) is followed by the same BN
  re-estimation (after a ``reconstruct`` refit: the original statistics or re-estimated ones,
  whichever scores better on the selection split) and the same fine-tune loop (SGD momentum 0.9,
  constant ``--finetune-lr``, batch 128, crop + flip), evaluated on the test set after each of ``--finetune-epochs`` epochs
  (``--finetune-schedule cosine``: each length its own run, the rate decayed to 0 over it).
- per budget and fine-tune length: mean and 95% t-interval over seeds, FLOPs and params actually
  kept, and for each variant the paired difference (same seed) to the best baseline (the best mean
  among ``--baselines`` and the Torch-Pruning pruners), with its 95% t-interval.

Results: ``--out`` (default ``runs/quality``): ``quality.jsonl`` (one line per run, resumable
with ``--resume``), ``quality.json`` and ``quality.md``. ``--from-rows A.jsonl B.jsonl`` runs
nothing and prints the table of rows written by several runs (e.g. the committed rows under
``benchmarks/results/``), paired by seed; ``--reference NAME`` pairs against one candidate (the
full method, when the others are its ablations) instead of the best baseline; ``A.jsonl@TAG``
appends ``@TAG`` to the candidate names of that file (the same candidate from two runs, e.g. on
two hosts or with two budgets of episodes, side by side). Without the
shared CIFAR-10 files (and without ``--synthetic``) the run is skipped with exit 0.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10")
# options of the default method that each switch one design choice off (docs/QUALITY.md)
ABLATIONS = ("lr=0", "gcn=false", "graph=identity", "warm_start=none", "reward=accuracy",
             "reward=loss", "search=random")
# Torch-Pruning's importance criteria (names with a -global/-local ranking suffix)
TP_PRUNERS = ("l1-global", "l1-local", "l2-global", "bnscale-global", "taylor-global",
              "fpgm-global", "lamp-global")
# two-sided 95% t quantiles by degrees of freedom (normal beyond 30)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (table lookup)."""
    if df < 1:
        return float("nan")
    keys = [k for k in sorted(_T95) if k <= df]
    return _T95[keys[-1]] if df <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, half-width of the 95% t-interval; nan for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t95(n - 1) * sd / math.sqrt(n)


# ----------------------------------------------------------------------------------------------
# data and model


def load_data(args):
    """(search_ds, selection_ds, test_ds, num_classes, in_channels) as TensorImageDatasets."""
    from gcnprune_fast.data import TensorImageDataset, load_shared_cifar10, synthetic_dataset

    if args.synthetic:
        full = synthetic_dataset(args.synthetic, image_size=args.image_size, seed=0)
        test = synthetic_dataset(max(args.synthetic // 4, 64), image_size=args.image_size,
                                 seed=10_000)
    else:
        full, test = load_shared_cifar10(args.data_root, augment_train=False)
    n = len(full)
    n_sel = min(args.selection_images, n // 5)
    n_search = min(args.search_images, n - n_sel)

    def subset(ds, lo, hi):
        return TensorImageDataset(ds.images[lo:hi], ds.labels[lo:hi],
                                  None if ds.mean is None else ds.mean.flatten().tolist(),
                                  None if ds.std is None else ds.std.flatten().tolist(),
                                  num_classes=ds.num_classes)

    search, selection = subset(full, 0, n_search), subset(full, n - n_sel, n)
    if args.test_samples:
        test = subset(test, 0, args.test_samples)
    return search, selection, test, full.num_classes, int(full.images.shape[1])


def load_model(args, num_classes: int, in_channels: int):
    """The trained model from ``--checkpoint`` (``gcnprune train`` format or a state_dict)."""
    from gcnprune_fast.models import get_model

    model = get_model(args.model, num_classes=num_classes, in_channels=in_channels)
    if args.checkpoint:
        obj = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(obj.get("model", obj))
    return model.eval()


def train_quick_model(model, loader, epochs: int, seed: int):
    """Only for --synthetic smoke runs without a checkpoint."""
    from gcnprune_fast.training import train
    train(model, loader, epochs, lr=0.05, progress=False, seed=seed)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# the candidates


def parse_variant(text: str) -> Tuple[str, Dict[str, str]]:
    """``method`` or ``method:key=value,key=value`` -> (method, options as strings)."""
    method, _, rest = text.partition(":")
    opts = {}
    for kv in filter(None, rest.split(",")):
        if "=" not in kv:
            raise ValueError(f"variant {text!r}: options are key=value, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k.strip()] = v.strip()
    return method, opts


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() == "none" else float(text)


# prune() arguments a variant may set next to its method's options, typed here (method options
# are parsed by the method). ``flops=none`` drops the --flops limit for that candidate, e.g.
# ``channel-gcn:flops=none,latency=0.5,latency_threads=1`` (a latency budget alone), whose rows
# then sit in the --flops slot they are compared in.
PRUNE_ARGUMENTS = {"reconstruct": str, "reconstruct_images": int, "flops": _optional_float,
                   "latency": float, "latency_threads": int, "latency_batch": int,
                   "latency_cache_dir": str, "round_to": int}


def split_prune_arguments(text: str, opts: Dict[str, str]) -> Dict[str, object]:
    """Pop prune()'s own arguments out of a variant's options (typed; a clear error names the
    variant); what is left in ``opts`` are the method's options."""
    out = {}
    for key, kind in PRUNE_ARGUMENTS.items():
        if key in opts:
            value = opts.pop(key)
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"variant {text!r}: {key}={value!r} is not a valid "
                                 f"{getattr(kind, '__name__', kind).lstrip('_')}") from None
    return out


def run_variant(text: str, model, loaders, flops: float, seed: int, args):
    """One of our methods (with options): (compact model, facts)."""
    from gcnprune_fast import prune
    from gcnprune_fast.methods import get_method

    method, opts = parse_variant(text)
    spec = get_method(method)
    prune_args = split_prune_arguments(text, opts)
    prune_args.setdefault("flops", flops)  # the variant's own flops= (e.g. none) wins
    if args.episodes and spec.has_option("episodes") and "episodes" not in opts:
        opts["episodes"] = str(args.episodes)
    search, selection = loaders
    if args.checkpoint_root and spec.supports_resume:
        # per method, budget and seed, not per option set: variants that differ only in options
        # read after the search (e.g. graph-pruning's final selection) reuse its checkpoint, and
        # the fingerprint refuses one written by other work
        tag = f"-f{prune_args['flops']}" + (f"-l{prune_args['latency']}"
                                            if "latency" in prune_args else "")
        ckpt = os.path.join(args.checkpoint_root, f"{method}{tag}-s{seed}")
        opts.update(checkpoint_dir=ckpt, resume=os.path.isdir(ckpt) and any(
            f.endswith(".pt") for f in os.listdir(ckpt)))
    t0 = time.perf_counter()
    res = prune(model, search, method=method, val_loader=selection, train_loader=search,
                eval_batches=2, seed=seed, progress=not args.no_progress, **prune_args, **opts)
    r = res.report
    return res.model, {"flops_kept": r["flops_after"] / r["flops_before"],
                       "params_kept": r["params_after"] / r["params_before"],
                       "search_time_s": float(r.get("search_time_s", time.perf_counter() - t0)),
                       "episodes": r.get("episodes"),
                       "greedy_curve": r.get("greedy_curve"),
                       "final_greedy_reward": r.get("final_greedy_reward"),
                       # the same greedy masks on the selection split (channel-gcn)
                       "greedy_heldout_curve": r.get("greedy_heldout_curve"),
                       "final_greedy_heldout_reward": r.get("final_greedy_heldout_reward"),
                       "rerank_choice": r.get("rerank_choice"), "rerank": r.get("rerank"),
                       "final_selection": r.get("final_selection"),
                       # where a search's time goes (graph-pruning: PruningNet training, then
                       # the episodes; re-ranking's short fine-tunes)
                       "pruningnet_train_time_s": r.get("pruningnet_train_time_s"),
                       "search_loop_time_s": r.get("search_loop_time_s"),
                       "rerank_time_s": r.get("rerank_time_s"),
                       "reconstruct_time_s": r.get("reconstruct_time_s"),
                       "widths": [w["after"] for w in r["widths"]],
                       # under a latency budget: predicted / measured ms before and after
                       **{k: v for k, v in r.items() if k.startswith("latency_")
                          and k != "latency_table"}}


def _tp_importance(tp, name: str):
    """The Torch-Pruning importance object of pruner ``name`` (see TP_PRUNERS)."""
    factories = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bnscale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.GroupTaylorImportance,
        "fpgm": tp.importance.FPGMImportance,
        "lamp": tp.importance.LAMPImportance,
    }
    kind = name.rsplit("-", 1)[0]
    if name not in TP_PRUNERS or kind not in factories:
        raise ValueError(f"unknown Torch-Pruning pruner {name!r}; known: {list(TP_PRUNERS)}")
    return factories[kind]()


def _tp_prune(tp, model, name: str, ratio: float, example, batch):
    m = copy.deepcopy(model).eval()
    classifier = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
    importance = _tp_importance(tp, name)
    pruner = tp.pruner.MetaPruner(m, example, importance=importance,
                                  pruning_ratio=ratio, global_pruning=not name.endswith("-local"),
                                  ignored_layers=classifier)
    if isinstance(importance, tp.importance.GroupTaylorImportance):  # needs gradients
        x, y = batch
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m


def run_tp(name: str, model, loaders, flops: float, seed: int, args):
    """Torch-Pruning's own pruner ``name``, its ratio bisected to the FLOPs budget."""
    import torch_pruning as tp

    from gcnprune_fast.training import recalibrate_bn

    search, _ = loaders
    batch = next(iter(search))
    example = batch[0][:2]
    base_flops, base_params = tp.utils.count_ops_and_params(model, example)
    t0 = time.perf_counter()
    lo, hi, best = 0.0, 0.95, None
    torch.manual_seed(seed)
    for _ in range(args.tp_bisect_steps):
        mid = 0.5 * (lo + hi)
        m = _tp_prune(tp, model, name, mid, example, batch)
        f, _ = tp.utils.count_ops_and_params(m, example)
        if f <= flops * base_flops:
            hi, best = mid, (m, mid)
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"{name}: no pruning ratio up to {hi} reaches flops {flops}")
    m, ratio = best
    f, p = tp.utils.count_ops_and_params(m, example)
    recalibrate_bn(m, search, num_batches=20)
    return m.eval(), {"flops_kept": f / base_flops, "params_kept": p / base_params,
                      "search_time_s": time.perf_counter() - t0, "tp_ratio": ratio}


# ----------------------------------------------------------------------------------------------
# the same fine-tune for everyone


def finetune_amp(args) -> Optional[str]:
    """``--finetune-amp`` as ``finetune_and_evaluate`` takes it (None for full precision)."""
    return None if args.finetune_amp == "none" else args.finetune_amp


def refuse_mixed_finetunes(rows: Sequence[dict], key: dict, path, fail) -> None:
    """``fail(message)`` when a resumed row was fine-tuned with settings other than ``key``.
    Rows written before the settings were recorded carry none; they were all fine-tuned in full
    precision, so they only match a ``key`` without amp."""
    for r in rows:
        recorded = r.get("finetune")
        if recorded != key and (recorded is not None or key.get("amp") is not None):
            fail(f"--resume: {path} holds runs fine-tuned with "
                 f"{recorded if recorded is not None else 'unrecorded settings (full precision)'}"
                 f", this run asks for {key}; use another --out")


def rows_from_files(paths: Sequence[str], fail) -> Tuple[List[dict], List[int]]:
    """The rows of several runs' ``quality.jsonl`` files as one table (``--from-rows``), and the
    fine-tune lengths any row has (rows without one show "-" there). Rows are paired by seed
    across files, so every row must have been fine-tuned alike (lengths aside: a length's figure
    does not depend on which other lengths the run had, under either schedule). A (candidate,
    budget, seed) that appears again only adds the fine-tune lengths its first row lacks
    (:func:`_merge_lengths`); ``fail(message)`` otherwise."""
    rows, keys, first = [], {}, {}  # first: (candidate, budget, seed) -> (where, its row)
    for spec in paths:
        try:
            path, tag = split_rows_tag(spec)
        except ValueError as e:
            fail(str(e))
        if not os.path.isfile(path):
            fail(f"--from-rows: no such file: {path}")
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                r = json.loads(line)
                if tag:
                    r["candidate"] = f"{r['candidate']}@{tag}"
                at = f"{path}:{n}"
                ident = (r["candidate"], r["flops_budget"], r["seed"])
                key = {k: v for k, v in (r.get("finetune") or {}).items() if k != "epochs"}
                keys.setdefault(json.dumps(key, sort_keys=True), at)
                if ident in first:
                    where, row = first[ident]
                    _merge_lengths(row, r, f"{ident} ({where} and {at})", fail)
                    continue
                first[ident] = (at, r)
                rows.append(r)
    if len(keys) > 1:
        fail("--from-rows: the rows were fine-tuned differently, so they cannot be paired: " +
             "; ".join(f"{'unrecorded (constant, full precision)' if k == '{}' else k} "
                       f"(first at {at})" for k, at in keys.items()))
    if not rows:
        fail(f"--from-rows: no rows in {', '.join(paths)}")
    # every length some row has; a candidate without it gets "-" in that column
    epochs = sorted({int(k[len("acc_ft"):]) for r in rows for k in r if k.startswith("acc_ft")})
    return rows, epochs


def split_rows_tag(spec: str) -> Tuple[str, str]:
    """``--from-rows`` ``PATH@TAG`` -> (PATH, TAG); a plain path (or one whose ``@`` is part of
    an existing file's name) -> (path, "")."""
    path, at, tag = spec.rpartition("@")
    if not at or not path or "/" in tag or os.path.isfile(spec):
        return spec, ""
    if not tag:
        raise ValueError(f"--from-rows: {spec!r} ends in '@' without a tag")
    return path, tag


def _merge_lengths(first: dict, again: dict, where: str, fail) -> None:
    """A second row of a (candidate, budget, seed) adds the fine-tune lengths the first lacks
    (e.g. a later run of the same search with ``--finetune-epochs 0 5``): allowed only for the
    same pruned model (equal ``acc_ft0`` and FLOPs kept) and equal figures where both have a
    length; ``fail(message)`` otherwise, or when it adds nothing."""
    lengths = [k for k in again if k.startswith("acc_ft") and k != "acc_ft0"]
    new = [k for k in lengths if k not in first]
    same_model = all(first.get(k) == again.get(k) for k in ("acc_ft0", "flops_kept"))
    clash = [k for k in lengths if k in first and first[k] != again[k]]
    if not new:
        fail(f"--from-rows: {where} appears twice with no fine-tune length the first lacks "
             "(to show both runs side by side, tag a file: PATH@TAG)")
    if not same_model or clash:
        fail(f"--from-rows: {where} are not the same pruned model"
             + (f" ({', '.join(clash)} differ)" if clash else " (acc_ft0 or flops_kept differ)"))
    for k in new:
        first[k] = again[k]


FINETUNE_SCHEDULES = ("constant", "cosine")


def finetune_and_evaluate(model, search_ds, test_loader, epochs: Sequence[int], lr: float,
                          seed: int, batch_size: int = 128, max_steps: Optional[int] = None,
                          amp: Optional[str] = None, schedule: str = "constant") -> Dict[str, float]:
    """Test accuracy after 0 (as given) and after each count in ``epochs`` of fine-tuning:
    SGD momentum 0.9, weight decay 5e-4, crop + flip, seeded order.
    ``schedule="constant"``: one loop at ``lr``, evaluated after each count (``model`` ends
    trained for ``max(epochs)``). ``schedule="cosine"``: each count is its own run from the given
    weights with the learning rate decayed from ``lr`` to 0 over that run, so the 1-epoch figure
    is a complete 1-epoch fine-tune (costs ``sum(epochs)`` epochs instead of ``max(epochs)``;
    ``model`` ends as the longest run left it).
    ``amp="bf16"``: forward and loss under CPU bf16 autocast (about 1.9x faster on CPUs with
    AMX); evaluation stays in full precision."""
    if schedule not in FINETUNE_SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {list(FINETUNE_SCHEDULES)}")
    if schedule == "constant":
        return _finetune_run(model, search_ds, test_loader, epochs, lr, seed, batch_size,
                             max_steps, amp, cosine=False)
    out = {}
    lengths = sorted(set(int(e) for e in epochs))
    for e in lengths:  # copies first, the longest run last on ``model`` itself
        run = model if e == lengths[-1] else copy.deepcopy(model)
        out.update(_finetune_run(run, search_ds, test_loader, [e], lr, seed, batch_size,
                                 max_steps, amp, cosine=True))
    return out


def _finetune_run(model, search_ds, test_loader, epochs, lr, seed, batch_size, max_steps, amp,
                  cosine: bool) -> Dict[str, float]:
    """One fine-tune loop of ``max(epochs)`` epochs, evaluated after each count in ``epochs``."""
    from gcnprune_fast.data import TensorBatchLoader
    from gcnprune_fast.training import cosine_lr, evaluate

    out = {}
    gen = torch.Generator().manual_seed(seed)
    loader = TensorBatchLoader(search_ds, batch_size, shuffle=True, drop_last=True, augment=True,
                               generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    last = max(epochs) if epochs else 0
    per_epoch = len(loader) if max_steps is None else min(len(loader), int(max_steps))
    done = 0
    for epoch in range(last + 1):
        if epoch in epochs:
            out[f"acc_ft{epoch}"] = evaluate(model.eval(), test_loader)
        if epoch == last:
            break
        model.train()
        for step, (x, y) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            if cosine:
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(lr, done, last * per_epoch)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            done += 1
    return out


# ----------------------------------------------------------------------------------------------
# summary


def summarize(rows: List[dict], baselines: Sequence[str], epochs: Sequence[int],
              reference: Optional[str] = None) -> List[dict]:
    """Per (flops, candidate): means with CIs and paired differences to the best baseline, or to
    ``reference`` (a candidate's name, e.g. the full method when the others are its ablations)."""
    out = []
    for flops in sorted({r["flops_budget"] for r in rows}, reverse=True):
        at = [r for r in rows if r["flops_budget"] == flops]
        names = list(dict.fromkeys(r["candidate"] for r in at))
        by = {n: {r["seed"]: r for r in at if r["candidate"] == n} for n in names}
        best = {}
        for e in epochs:
            key = f"acc_ft{e}"
            pool = [n for n in names if n in baselines or n.startswith("tp:")]
            if reference is not None:  # (a --from-rows reference may lack this length)
                if reference in names and any(key in r for r in by[reference].values()):
                    best[e] = reference
            else:  # baselines with this length (a --from-rows table may lack it for some)
                pool = [n for n in pool if any(key in r for r in by[n].values())]
                if pool:
                    best[e] = max(pool, key=lambda n: mean_ci(
                        [r[key] for r in by[n].values() if key in r])[0])
        for n in names:
            runs = list(by[n].values())
            row = {"flops_budget": flops, "candidate": n, "n": len(runs),
                   "flops_kept": mean_ci([r["flops_kept"] for r in runs])[0],
                   "params_kept": mean_ci([r["params_kept"] for r in runs])[0],
                   "search_time_s": mean_ci([r["search_time_s"] for r in runs])[0]}
            for e in epochs:
                key = f"acc_ft{e}"
                have = [r[key] for r in runs if key in r]
                row[key] = mean_ci(have) if have else None
                row[f"n_ft{e}"] = len(have)
                if e in best:  # named in every row; "-" in the table where there is none
                    row[f"vs_ft{e}"] = best[e]
                if have and e in best and best[e] != n:
                    seeds = sorted(s for s in set(by[n]) & set(by[best[e]])
                                   if key in by[n][s] and key in by[best[e]][s])
                    diffs = [by[n][s][key] - by[best[e]][s][key] for s in seeds]
                    row[f"diff_ft{e}"] = (mean_ci(diffs) if diffs else (float("nan"),) * 2)
            out.append(row)
    return out


def _pm(v: Optional[Tuple[float, float]], signed: bool = False) -> str:
    if v is None:  # this length was not run for this candidate
        return "-"
    m, h = v
    return f"{100 * m:{'+' if signed else ''}.2f}" + ("" if math.isnan(h) else f" ± {100 * h:.2f}")


def markdown(summary: List[dict], epochs: Sequence[int], meta: dict) -> str:
    against = (f"the reference candidate {meta['reference']}" if meta.get("reference")
               else "the best baseline at that setting (named)")
    lines = [f"# Quality: {meta['model']} on {meta['dataset']}", "",
             "Accuracy in % on the test set (mean ± 95% t-interval over seeds); Δ = paired "
             f"difference to {against}, same seeds.", "",
             "```", json.dumps(meta, indent=1, default=str), "```"]
    for flops in sorted({r["flops_budget"] for r in summary}, reverse=True):
        head = ["candidate", "seeds", "FLOPs kept", "params kept"]
        for e in epochs:
            head += [f"acc ft {e}ep", f"Δ ft {e}ep"]
        head.append("search s")
        lines += ["", f"## FLOPs budget {flops}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in (r for r in summary if r["flops_budget"] == flops):
            cells = [r["candidate"], str(r["n"]), f"{r['flops_kept']:.3f}", f"{r['params_kept']:.3f}"]
            for e in epochs:
                n_e = r.get(f"n_ft{e}", r["n"])
                fewer = f" ({n_e} seeds)" if 0 < n_e < r["n"] else ""
                cells.append(_pm(r[f"acc_ft{e}"]) + fewer)
                d = r.get(f"diff_ft{e}")
                if d is not None:
                    cells.append(f"{_pm(d, signed=True)} vs {r[f'vs_ft{e}']}")
                elif r[f"acc_ft{e}"] is not None and r.get(f"vs_ft{e}") == r["candidate"]:
                    cells.append("reference" if r["candidate"] == meta.get("reference") else "best")
                else:  # not run at this length, or nothing to pair with there
                    cells.append("-")
            cells.append(f"{r['search_time_s']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_baselines(candidates: Sequence[str]) -> List[str]:
    """The candidates that count as baselines when ``--baselines`` is not given: our methods that
    are not a search (no ``episodes`` option). Torch-Pruning's pruners (``tp:...``) are always in
    the pool (see :func:`summarize`); names of methods this version lacks (old rows) are not."""
    from gcnprune_fast.methods import get_method

    def is_criterion(name: str) -> bool:
        if name.startswith("tp:"):
            return False
        try:
            return not get_method(parse_variant(name)[0]).has_option("episodes")
        except ValueError:
            return False

    return [n for n in candidates if is_criterion(n)]


def greedy_curve_lines(rows: List[dict]) -> List[str]:
    """Markdown lines: for each candidate whose rows keep a greedy curve, the policy's greedy-mask
    reward at the warm start and after the last update, on the search's reward set and on the
    held-out selection images (mean over seeds, and in how many seeds the end is above the
    start). Empty when no row keeps a curve."""
    def ends(row, curve_key, final_key):
        curve = [v for v in (row.get(curve_key) or []) if v is not None]
        if not curve:
            return None
        last = row.get(final_key)
        return curve[0], (curve[-1] if last is None else last)

    out = []
    for name in dict.fromkeys(r["candidate"] for r in rows):
        cells = []
        for what, keys in (("reward set", ("greedy_curve", "final_greedy_reward")),
                           ("held out", ("greedy_heldout_curve", "final_greedy_heldout_reward"))):
            pairs = [p for p in (ends(r, *keys) for r in rows if r["candidate"] == name) if p]
            if not pairs:
                cells.append("-")
                continue
            start = sum(a for a, _ in pairs) / len(pairs)
            end = sum(b for _, b in pairs) / len(pairs)
            rose = sum(b > a for a, b in pairs)
            cells.append(f"{100 * start:.2f} -> {100 * end:.2f} (rose in {rose} of {len(pairs)})")
        if cells != ["-", "-"]:
            out.append(f"| {name} | {cells[0]} | {cells[1]} |")
    if not out:
        return []
    return ["", "Greedy-mask reward (%), warm start -> after the last update, mean over seeds:", "",
            "| candidate | on the search's reward set | on held-out selection images |",
            "|---|---|---|"] + out


def spread_lines(rows: List[dict], epochs: Sequence[int]) -> List[str]:
    """Markdown lines: per FLOPs budget and fine-tune length, the range of test accuracy over
    every row (every candidate and seed), and the correlation of each length with the accuracy
    before fine-tuning. It bounds what any choice of mask can gain over the best baseline at that
    setting: a mean 1 point above the best baseline needs runs above the best ever seen."""
    out = []
    for flops in sorted({r["flops_budget"] for r in rows}, reverse=True):
        at = [r for r in rows if r["flops_budget"] == flops]
        for e in epochs:
            pairs = [(r["acc_ft0"], r[f"acc_ft{e}"]) for r in at
                     if f"acc_ft{e}" in r and "acc_ft0" in r]
            if len(pairs) < 3:
                continue
            before = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
            after = torch.tensor([b for _, b in pairs], dtype=torch.float64)
            corr = float(torch.corrcoef(torch.stack([before, after]))[0, 1])
            out.append(f"| {flops} | {e} | {len(pairs)} | {100 * before.min():.2f}-"
                       f"{100 * before.max():.2f} | {100 * after.min():.2f}-{100 * after.max():.2f}"
                       f" | {100 * after.std():.2f} | {corr:.2f} |")
    if not out:
        return []
    return ["", "Spread over every row (all candidates and seeds):", "",
            "| FLOPs budget | fine-tune epochs | rows | before FT, min-max | after, min-max "
            "| after, std | corr. with before FT |", "|---|---|---|---|---|---|---|"] + out


def print_table_from_rows(rows: List[dict], epochs: Sequence[int], args, fail) -> int:
    """``--from-rows``: the markdown table of rows written by earlier runs."""
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    if args.reference is not None and args.reference not in names:
        fail(f"--reference {args.reference!r} is not among the rows' candidates: {names}")

    baselines = args.baselines if args.baselines is not None else default_baselines(names)
    meta = {"model": "the rows' model", "dataset": "rows of " + ", ".join(args.from_rows),
            "seeds": sorted({r["seed"] for r in rows}), "baselines": baselines,
            "finetune": rows[0].get("finetune"), "epochs_in_every_row": list(epochs),
            "reference": args.reference}
    print(markdown(summarize(rows, baselines, epochs, args.reference), epochs, meta))
    print("\n".join(greedy_curve_lines(rows)))
    print("\n".join(spread_lines(rows, [e for e in epochs if e > 0])))
    return 0


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    from gcnprune_fast.methods import get_method, method_names
    from gcnprune_fast.methods.allocation import check_budget_ratio
    from gcnprune_fast.space.reconstruct import RECONSTRUCT_IMAGES, check_reconstruct

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=DEFAULT_DATA, help="folder with train.npz/test.npz")
    p.add_argument("--synthetic", type=int, default=0, help="use N generated images instead")
    p.add_argument("--image-size", type=int, default=32, help="--synthetic image size")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--checkpoint", default=None, help="trained weights (gcnprune train --out)")
    p.add_argument("--variants", nargs="+", default=list(method_names()),
                   help="our methods, optionally with options: method:key=value,...")
    p.add_argument("--ablations", action="store_true",
                   help="also run the default method's ablations (ABLATIONS)")
    p.add_argument("--baselines", nargs="*", default=None,
                   help="which variants count as baselines (default: every method that is not "
                        "a search, i.e. has no 'episodes' option)")
    p.add_argument("--tp-pruners", nargs="*", default=list(TP_PRUNERS), choices=TP_PRUNERS)
    p.add_argument("--tp-bisect-steps", type=int, default=12)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--flops", nargs="+", type=float, default=[0.5])
    p.add_argument("--finetune-epochs", nargs="+", type=int, default=[0, 1, 5])
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--finetune-schedule", choices=FINETUNE_SCHEDULES, default="constant",
                   help="constant: one loop at --finetune-lr, evaluated after each of "
                        "--finetune-epochs; cosine: each length its own run, the learning rate "
                        "decayed to 0 over it")
    p.add_argument("--finetune-amp", choices=["none", "bf16"], default="none",
                   help="bf16: fine-tune under CPU bf16 autocast (evaluation in fp32)")
    p.add_argument("--episodes", type=int, default=None, help="episodes of the search methods")
    p.add_argument("--search-images", type=int, default=45000)
    p.add_argument("--selection-images", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 40 fine-tune steps per epoch, 4 bisection steps")
    p.add_argument("--resume", action="store_true", help="keep the finished runs in --out")
    p.add_argument("--checkpoint-root", default=None,
                   help="search checkpoints under DIR/<method>-f<budget>-s<seed> (resumed; "
                   "variants of one method that share the search reuse it)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--reference", default=None, metavar="CANDIDATE",
                   help="paired differences against this candidate (e.g. the full method, the "
                        "others being its ablations) instead of the best baseline")
    p.add_argument("--from-rows", nargs="+", default=None, metavar="JSONL",
                   help="run nothing: print the table of the rows in these quality.jsonl files "
                        "(several runs, e.g. a method and its ablations run apart), paired by "
                        "seed; PATH@TAG appends @TAG to that file's candidate names")
    args = p.parse_args(argv)
    if args.from_rows:
        rows, epochs = rows_from_files(args.from_rows, p.error)
        return print_table_from_rows(rows, epochs, args, p.error)
    if args.reference is not None and args.reference not in (
            list(args.variants) + [f"tp:{n}" for n in args.tp_pruners]):
        p.error(f"--reference {args.reference!r} is not one of the candidates run")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ablations:
        from gcnprune_fast.methods import default_method
        args.variants += [f"{default_method()}:{a}" for a in ABLATIONS]
    for v in args.variants:  # fail before any work
        method, opts = parse_variant(v)
        try:
            prune_args = split_prune_arguments(v, opts)
        except ValueError as e:
            p.error(str(e))
        for kind in ("flops", "latency"):  # a ratio in (0, 1], or flops=none
            try:
                check_budget_ratio(kind, prune_args.get(kind))
            except ValueError as e:
                p.error(f"variant {v!r}: {e}")
        check_reconstruct(prune_args.get("reconstruct"),
                          prune_args.get("reconstruct_images", RECONSTRUCT_IMAGES))
        get_method(method).parse_options(opts)
    if not args.synthetic and not all(os.path.isfile(os.path.join(args.data_root, f"{s}.npz"))
                                      for s in ("train", "test")):
        print(f"SKIP: CIFAR-10 npz files not found in {args.data_root} (expected train.npz and "
              f"test.npz; see ../shared/data/README.md)")
        return 0
    if args.quick:
        args.tp_bisect_steps = min(args.tp_bisect_steps, 4)
    baselines = args.baselines if args.baselines is not None else default_baselines(args.variants)

    from gcnprune_fast.data import TensorBatchLoader
    from gcnprune_fast.training import evaluate

    search_ds, selection_ds, test_ds, num_classes, channels = load_data(args)
    search = TensorBatchLoader(search_ds, 128, shuffle=False)
    selection = TensorBatchLoader(selection_ds, 256)
    test_loader = TensorBatchLoader(test_ds, 256)
    model = load_model(args, num_classes, channels)
    if not args.checkpoint:
        if not args.synthetic:
            p.error("--checkpoint is required on real data (train one with `gcnprune train`)")
        model = train_quick_model(model, TensorBatchLoader(search_ds, 64, shuffle=True,
                                                           generator=torch.Generator().manual_seed(0)), 2, 0)
    base_acc = evaluate(model, test_loader)
    print(f"{args.model}: test accuracy {base_acc:.4f} on {len(test_ds)} images; search split "
          f"{len(search_ds)}, selection split {len(selection_ds)}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    partial = os.path.join(args.out, "quality.jsonl")
    rows = []
    amp = finetune_amp(args)
    finetune_key = {"epochs": list(args.finetune_epochs), "lr": args.finetune_lr, "amp": amp,
                    "quick": bool(args.quick)}
    if args.finetune_schedule != "constant":  # rows of constant-lr runs predate the key
        finetune_key["schedule"] = args.finetune_schedule
    if args.resume and os.path.isfile(partial):
        with open(partial) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(f"resuming: {len(rows)} finished runs read from {partial}")
        refuse_mixed_finetunes(rows, finetune_key, partial, p.error)
    elif os.path.isfile(partial):
        os.remove(partial)
    done = {(r["candidate"], r["flops_budget"], r["seed"]) for r in rows}
    candidates = list(args.variants) + [f"tp:{n}" for n in args.tp_pruners]
    max_steps = 40 if args.quick else None
    for seed in args.seeds:          # seed-major: a cut-short run still covers every candidate
        for flops in args.flops:
            for cand in candidates:
                if (cand, flops, seed) in done:
                    continue
                if cand.startswith("tp:"):
                    compact, facts = run_tp(cand[3:], model, (search, selection), flops, seed, args)
                else:
                    compact, facts = run_variant(cand, model, (search, selection), flops, seed, args)
                t1 = time.perf_counter()
                accs = finetune_and_evaluate(compact, search_ds, test_loader, args.finetune_epochs,
                                             args.finetune_lr, seed, max_steps=max_steps, amp=amp,
                                             schedule=args.finetune_schedule)
                row = {"candidate": cand, "flops_budget": flops, "seed": seed, **facts, **accs,
                       "finetune": finetune_key,
                       "finetune_time_s": time.perf_counter() - t1}
                rows.append(row)
                with open(partial, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{cand:28s} flops {flops} seed {seed}: " + " ".join(
                    f"{k} {v:.4f}" for k, v in accs.items()) + f" flops kept "
                    f"{facts['flops_kept']:.3f} search {facts['search_time_s']:.1f} s", flush=True)
    summary = summarize(rows, baselines, args.finetune_epochs, args.reference)
    meta = {"model": args.model, "checkpoint": args.checkpoint, "base_acc": base_acc,
            "dataset": f"synthetic ({args.synthetic})" if args.synthetic else "cifar10 (shared JPEG copy)",
            "test_images": len(test_ds), "search_images": len(search_ds),
            "selection_images": len(selection_ds), "seeds": args.seeds, "baselines": baselines,
            "finetune": {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "batch": 128,
                         "momentum": 0.9, "weight_decay": 5e-4, "augment": "crop+flip",
                         "max_steps_per_epoch": max_steps, "amp": amp},
            "threads": torch.get_num_threads(), "reference": args.reference}
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": rows}, f, indent=1, default=str)
    md = markdown(summary, args.finetune_epochs, meta) + "\n".join(greedy_curve_lines(rows))
    with open(os.path.join(args.out, "quality.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
