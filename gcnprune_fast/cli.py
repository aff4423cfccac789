"""The ``gcnprune`` command line: ``demo``, ``train``, ``prune``, ``inspect``, ``export``, ``methods``.

    gcnprune demo                                   # synthetic data, no downloads, ~3-5 min on 2 cores
    gcnprune train --model resnet20 --dataset cifar10 --data-dir DIR --epochs 30 --out ckpt.pt
    gcnprune prune --model resnet20 --checkpoint ckpt.pt --dataset cifar10 --data-dir DIR \\
                   --flops 0.5 --finetune-epochs 5 --out runs/r20
    gcnprune inspect --model resnet56
    gcnprune export --pruned runs/r20 --format onnx --out r20.onnx
    gcnprune methods [NAME]                         # registered methods and their options

``--model`` takes a built-in name, ``torchvision:NAME`` (any torchvision classification model) or
``timm:NAME`` (needs ``pip install timm``); ``--num-classes`` sets their classifier size.

Bad arguments, missing or unreadable files and failures are reported in one line naming the file
or argument (no traceback) with exit code 2; ``--debug`` (or GCNPRUNE_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import List, Optional


class CLIError(Exception):
    """An error reported to the user as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _set_threads(n: Optional[int]) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _load_datasets(name: str, data_dir: Optional[str], download: bool, image_size: Optional[int]):
    from gcnprune_fast.data import get_dataset

    train_ds = get_dataset(name, data_dir, train=True, download=download, image_size=image_size)
    test_ds = get_dataset(name, data_dir, train=False, download=download, image_size=image_size)
    return train_ds, test_ds


MODEL_PREFIXES = ("torchvision", "timm")


def _model_arg(text: str) -> str:
    """argparse type of ``--model``: a built-in name, ``torchvision:NAME`` or ``timm:NAME``."""
    from gcnprune_fast.models import MODEL_NAMES

    kind, sep, name = text.partition(":")
    if text in MODEL_NAMES or (sep and kind in MODEL_PREFIXES and name):
        return text
    raise argparse.ArgumentTypeError(f"invalid model {text!r}: expected a built-in model "
                                     f"({', '.join(MODEL_NAMES)}), torchvision:NAME or timm:NAME")


def _make_model(spec: str, num_classes: int, in_channels: int):
    """The model named by ``spec`` (see :func:`_model_arg`), freshly initialized."""
    from gcnprune_fast.models import MODEL_NAMES, get_model

    kind, _, name = spec.partition(":")
    if spec in MODEL_NAMES:
        return get_model(spec, num_classes=num_classes, in_channels=in_channels)
    if kind == "torchvision":
        import torchvision.models as tvm

        known = tvm.list_models(module=tvm)
        if name not in known:
            raise CLIError(f"--model {spec}: torchvision has no classification model {name!r} "
                           f"(e.g. {', '.join(known[:5])}; all: torchvision.models.list_models())")
        if in_channels != 3:
            raise CLIError(f"--model {spec}: torchvision models take 3-channel images, the data "
                           f"has {in_channels}")
        try:
            return tvm.get_model(name, weights=None, num_classes=num_classes)
        except (TypeError, ValueError) as e:
            raise CLIError(f"--model {spec}: {e}") from None
    try:
        import timm
    except ImportError:
        raise CLIError(f"--model {spec} needs timm, which is not installed: pip install timm") from None
    if not timm.is_model(name):
        raise CLIError(f"--model {spec}: timm has no model {name!r} (search with "
                       f"timm.list_models('*{name[:8]}*'))")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _build_model(spec: str, train_ds, num_classes: Optional[int] = None):
    from gcnprune_fast.data import dataset_channels, dataset_num_classes

    return _make_model(spec, num_classes or dataset_num_classes(train_ds), dataset_channels(train_ds))


def _torch_load(path: str, what: str):
    """``torch.load(path, weights_only=True)``; a missing, truncated or pickled-object file is a
    one-line CLIError naming it."""
    import pickle

    import torch

    if not os.path.isfile(path):
        raise CLIError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CLIError(f"{what} {path} holds pickled Python objects, not only tensors ({first}); "
                       f"save a state_dict (torch.save(model.state_dict(), path))") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CLIError(f"{what} {path} cannot be read ({first}); is it truncated or not a "
                       f"torch.save file?") from None


def _read_plan(path: str) -> dict:
    """The plan in ``path``, checked against its schema; errors name the file."""
    from gcnprune_fast.space.plans import validate_plan

    try:
        with open(path) as f:
            plan = json.load(f)
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not valid JSON ({e}); is it truncated?") from None
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a text (JSON) file") from None
    try:
        validate_plan(plan)
    except ValueError as e:
        raise CLIError(f"{path}: {e}") from None
    return plan


def _load_state(model, path: str) -> None:
    """Load weights saved by ``gcnprune train`` (``{"model": state_dict, ...}``), a training
    checkpoint, or a plain state_dict (all read with ``weights_only=True``)."""
    if not os.path.isfile(path):
        raise CLIError(f"checkpoint {path} does not exist (create it with `gcnprune train ... --out {path}`)")
    obj = _torch_load(path, "checkpoint")
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise CLIError(f"{path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CLIError(f"{path} does not fit this model ({first[0] if first else e}); "
                       f"was it trained with another --model or dataset?") from None


def _eval_loader_like(train_ds, batch_size):
    """An un-augmented, shuffled loader over the training images (search / scoring data)."""
    from gcnprune_fast.data import TensorBatchLoader, TensorImageDataset, make_loaders

    if isinstance(train_ds, TensorImageDataset):
        return TensorBatchLoader(train_ds, batch_size, shuffle=True, augment=False)
    return make_loaders(train_ds, None, batch_size=batch_size)[0]


def _method_options(args) -> dict:
    """``--option KEY=VALUE`` pairs plus the shortcut flags, checked against the method's
    registered options (types converted, ranges checked) before any work."""
    from gcnprune_fast.methods import get_method

    spec = get_method(args.method)
    opts = {}
    for kv in args.option or []:
        if "=" not in kv:
            raise CLIError(f"--option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k.strip()] = v
    for flag in ("episodes", "allocation"):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if not spec.has_option(flag):
            raise CLIError(f"--{flag} does not apply to --method {args.method} (its options: "
                           f"{[f.name for f in spec.option_fields()] or 'none'})")
        opts[flag] = value
    spec.parse_options(opts)  # fail now, not after loading data
    return opts


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import torch

    from gcnprune_fast import prune
    from gcnprune_fast.data import TensorBatchLoader, synthetic_dataset
    from gcnprune_fast.methods import get_method
    from gcnprune_fast.models import get_model
    from gcnprune_fast.report import (DEMO_COLUMNS, DEMO_HEADERS, greedy_first_last,
                                      markdown_table, write_comparison_report)
    from gcnprune_fast.training import evaluate, train

    _set_threads(args.threads)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise CLIError("demo runs on one process; under torchrun use `prune` or `train`")
    if args.quick:  # smoke-test sizes: seconds, not minutes
        args.train_samples, args.test_samples = 256, 128
        args.epochs, args.episodes, args.finetune_epochs = 1, 4, 1
        args.image_size = 16
    t_start = time.perf_counter()
    print(f"[1/4] synthetic dataset: {args.train_samples} train / {args.test_samples} test images "
          f"{args.image_size}x{args.image_size}, 10 classes", flush=True)
    train_ds = synthetic_dataset(args.train_samples, image_size=args.image_size, seed=args.seed)
    test_ds = synthetic_dataset(args.test_samples, image_size=args.image_size, seed=args.seed + 10_000)
    train_loader = TensorBatchLoader(train_ds, args.batch_size, shuffle=True, drop_last=True)
    test_loader = TensorBatchLoader(test_ds, 256)

    print(f"[2/4] training simple_cnn for {args.epochs} epoch(s)", flush=True)
    torch.manual_seed(args.seed)
    model = get_model("simple_cnn")
    t0 = time.perf_counter()
    train(model, train_loader, args.epochs, lr=args.lr, progress=not args.no_progress, seed=args.seed)
    train_s = time.perf_counter() - t0
    base_acc = evaluate(model, test_loader)
    print(f"      test accuracy {base_acc:.4f} ({train_s:.0f} s)", flush=True)

    rows, reports, results = [], {}, {}
    for i, method in enumerate(args.methods):
        print(f"[3/4] pruning with {method} to {args.flops:.0%} of the FLOPs "
              f"({i + 1}/{len(args.methods)})", flush=True)
        opts = {"episodes": args.episodes} if get_method(method).has_option("episodes") else {}
        res = prune(model, train_loader, method=method, flops=args.flops, val_loader=test_loader,
                    finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                    seed=args.seed, progress=not args.no_progress, **opts)
        r = res.report
        greedy_first, greedy_last = greedy_first_last(r)
        heldout_first, heldout_last = greedy_first_last(r, heldout=True)
        rows.append({"method": method, "acc_pruned": r["acc_pruned"], "acc_finetuned": r["acc_finetuned"],
                     "flops_kept": r["flops_ratio"], "params_kept": r["params_ratio"],
                     "search_time_s": r["search_time_s"], "episodes": r.get("episodes", 0),
                     "greedy_first": greedy_first, "greedy_last": greedy_last,
                     "greedy_heldout_first": heldout_first, "greedy_heldout_last": heldout_last})
        reports[method], results[method] = r, res
        res.save(os.path.join(args.out, method))
        print(f"      test accuracy after pruning {r['acc_pruned']:.4f}, after fine-tuning "
              f"{r['acc_finetuned'] if r['acc_finetuned'] is None else round(r['acc_finetuned'], 4)}"
              + ("" if greedy_first is None else f"; greedy-mask reward {greedy_first:.4f} -> "
                 f"{greedy_last:.4f} over the search")
              + ("" if heldout_first is None else f" ({heldout_first:.4f} -> {heldout_last:.4f} "
                 "held out)"), flush=True)

    print("[4/4] report", flush=True)
    from gcnprune_fast.space import PruningSpace

    space = PruningSpace(model, test_ds.images[:2])
    meta = {"model": "simple_cnn", "dataset": f"synthetic ({args.train_samples} train / "
            f"{args.test_samples} test, {args.image_size}px)", "flops_budget": args.flops,
            "base_acc": base_acc, "accuracy_set": f"test split ({args.test_samples} images, "
            f"passed as val_loader)", "train_epochs": args.epochs, "train_time_s": train_s,
            "finetune_epochs": args.finetune_epochs, "seed": args.seed,
            "threads": torch.get_num_threads(), "total_time_s": time.perf_counter() - t_start}
    files = write_comparison_report(args.out, rows, meta, reports, [g.size for g in space.groups],
                                    [g.name for g in space.groups], title="gcnprune demo")
    print()
    print(f"simple_cnn on synthetic data: test accuracy {base_acc:.4f} before pruning, budget "
          f"{args.flops:.0%} FLOPs; accuracies below on the test split ({args.test_samples} "
          f"images), greedy rewards on the search's reward set, held-out greedy rewards on "
          f"the test split")
    print(markdown_table(rows, DEMO_COLUMNS, DEMO_HEADERS))
    if files.get("plots_skipped"):
        print(files["plots_skipped"])
    plots = "" if files.get("plots_skipped") else " and plots"
    print(f"\nwrote {files['markdown']}, {files['json']}{plots} to {args.out} "
          f"({meta['total_time_s']:.0f} s in all)")
    return 0


# ----------------------------------------------------------------------------------------------
# train / prune / inspect / export
# ----------------------------------------------------------------------------------------------
def _join_torchrun(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL for --device cuda, one GPU
    per process; gloo on the CPU), log the world in one line, and keep the other ranks' logs
    and progress bars quiet. Without torchrun nothing changes."""
    from gcnprune_fast import distributed

    args.device = distributed.init_from_env(args.device)
    if not distributed.is_main():
        args.no_progress = True
        logging.getLogger("gcnprune_fast").setLevel(logging.WARNING)


def _no_resume_yet(what: str) -> bool:
    """Under torchrun ``--resume`` with nothing to resume starts the run (so one command line
    serves the first launch and torchrun's restarts); elsewhere it stays an error."""
    from gcnprune_fast import distributed

    if not distributed.under_torchrun():
        return False
    logging.getLogger("gcnprune_fast").info("--resume: %s; starting from the beginning (torchrun "
                                            "restarts resume from the checkpoints)", what)
    return True


def cmd_train(args) -> int:
    import torch

    from gcnprune_fast import distributed
    from gcnprune_fast.data import make_loaders
    from gcnprune_fast.training import evaluate, train

    _set_threads(args.threads)
    _join_torchrun(args)
    resume = args.out + ".ckpt"
    if args.resume and not os.path.isfile(resume):
        if not _no_resume_yet(f"{resume} does not exist yet"):
            raise CLIError(f"--resume but {resume} does not exist: nothing to resume (run "
                           f"without --resume to start)")
        args.resume = False
    train_ds, test_ds = _load_datasets(args.dataset, args.data_dir, args.download, args.image_size)
    model = _build_model(args.model, train_ds, args.num_classes)
    train_loader, test_loader = make_loaders(train_ds, test_ds, batch_size=args.batch_size,
                                             num_workers=args.workers)
    hist = train(model, train_loader, args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                 device=args.device, val_loader=test_loader if args.eval_every_epoch else None,
                 progress=not args.no_progress, checkpoint_path=resume, resume=args.resume,
                 seed=args.seed, accumulate_steps=args.accumulate_steps, amp=args.amp,
                 sync_bn=args.sync_bn, channels_last=channels_last_arg(args.channels_last))
    acc = evaluate(model, test_loader)
    if distributed.is_main():  # under torchrun: rank 0 writes, atomically
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        out = {"model": {k: v.cpu() for k, v in model.state_dict().items()},
               "model_name": args.model, "dataset": args.dataset, "test_acc": acc,
               "history": hist}
        if distributed.is_distributed():
            distributed.atomic_save(out, args.out)
        else:
            torch.save(out, args.out)
        if os.path.isfile(resume):
            os.remove(resume)
        print(f"{args.model} on {args.dataset}: test accuracy {acc:.4f} -> {args.out}")
    return 0


def cmd_prune(args) -> int:
    from gcnprune_fast import prune
    from gcnprune_fast.data import make_loaders
    from gcnprune_fast.methods import get_method
    from gcnprune_fast.report import (PLOTS_HINT, VAL_LOADER, accuracy_set_short, greedy_points,
                                      plot_reward_curve, plots_available)

    _set_threads(args.threads)
    spec = get_method(args.method)
    opts = _method_options(args)
    _join_torchrun(args)
    ckpt_dir = os.path.join(args.out, "search")  # search and fine-tune checkpoints
    if args.resume:
        from gcnprune_fast.api import _resume_problem

        problem = _resume_problem(spec, ckpt_dir, args.finetune_epochs)
        if problem and _no_resume_yet(f"no checkpoint in {ckpt_dir} yet"):
            problem, args.resume = None, False
        if problem:
            raise CLIError(problem.replace("resume=True", "--resume").replace(
                "finetune_epochs=0", "--finetune-epochs 0").replace("without resume",
                                                                    "without --resume"))
    if args.flops is None and args.params is None and args.latency is None:
        raise CLIError("give a budget: --flops RATIO and/or --params RATIO and/or --latency RATIO "
                       "(fractions kept, in (0, 1])")
    if not os.path.isfile(args.checkpoint):
        raise CLIError(f"checkpoint {args.checkpoint} does not exist (create it with "
                       f"`gcnprune train ... --out {args.checkpoint}`)")
    train_ds, test_ds = _load_datasets(args.dataset, args.data_dir, args.download, args.image_size)
    model = _build_model(args.model, train_ds, args.num_classes)
    _load_state(model, args.checkpoint)
    train_loader, test_loader = make_loaders(train_ds, test_ds, batch_size=args.batch_size,
                                             num_workers=args.workers)
    search_loader = _eval_loader_like(train_ds, args.batch_size)
    res = prune(model, search_loader, method=args.method, flops=args.flops, params=args.params,
                val_loader=test_loader, train_loader=train_loader, finetune_epochs=args.finetune_epochs,
                finetune_lr=args.finetune_lr, distill=args.distill, device=args.device, seed=args.seed,
                checkpoint_dir=ckpt_dir, resume=args.resume, progress=not args.no_progress,
                accumulate_steps=args.accumulate_steps, amp=args.amp, sync_bn=args.sync_bn,
                channels_last=channels_last_arg(args.channels_last), latency=args.latency,
                latency_device=args.latency_device,
                latency_batch=args.latency_batch, latency_threads=args.latency_threads,
                round_to=args.round_to, reconstruct=args.reconstruct,
                reconstruct_images=args.reconstruct_images, **opts)
    paths = res.save(args.out, export_formats=tuple(args.export or ()))
    from gcnprune_fast import distributed

    if not distributed.is_main():  # rank 0 wrote the outputs and reports them
        return 0
    r = res.report
    on = {VAL_LOADER: "test split", None: None}.get(r.get("accuracy_set"),
                                                     accuracy_set_short(r))
    print(f"{args.model} {args.method}: FLOPs {r['flops_ratio']:.3f} params {r['params_ratio']:.3f} kept; "
          f"accuracy{'' if on is None else f' ({on})'} {r['acc_before']:.4f} -> pruned "
          f"{r['acc_pruned']:.4f}"
          + (f" -> fine-tuned {r['acc_finetuned']:.4f}" if r["acc_finetuned"] is not None else ""))
    if r.get("latency_before_ms") is not None:
        print(f"latency {r['latency_before_ms']:.3f} ms -> predicted {r['latency_predicted_ms']:.3f} ms"
              + (f", measured {r['latency_after_ms']:.3f} ms ({r['latency_speedup_measured']:.2f}x; "
                 f"FLOPs {r['flops_ratio']:.3f} = {1 / r['flops_ratio']:.2f}x; timed by "
                 f"{r['latency_timed_by']})" if r.get("latency_after_ms") is not None else ""))
    if r.get("cost_model_mismatch"):
        print(f"warning: the cost model predicted {r['flops_after']:,} FLOPs / {r['params_after']:,} "
              f"params, the pruned model counts {r['flops_after_measured']:,} / "
              f"{r['params_after_measured']:,}; the budget may not hold for this architecture",
              file=sys.stderr)
    print(f"wrote {', '.join(sorted(paths))} to {args.out}")
    if r.get("reward_curve"):  # after saving: a missing optional package never costs the result
        if plots_available():
            plot_reward_curve(os.path.join(args.out, "reward_curve.png"), r["reward_curve"],
                              greedy=greedy_points(r),
                              greedy_heldout=greedy_points(r, heldout=True))
        else:
            print(PLOTS_HINT)
    return 0


def cmd_inspect(args) -> int:
    import torch

    from gcnprune_fast.report import markdown_table
    from gcnprune_fast.space import PruningSpace

    model = _make_model(args.model, args.num_classes, args.in_channels).eval()
    x = torch.zeros(1, args.in_channels, args.image_size, args.image_size)
    space = PruningSpace(model, x)
    rows = []
    full = space.full_masks()
    for g in space.groups:
        # Cost of the group = what removing all but min_keep channels of it would save.
        masks = [m.clone() for m in full]
        masks[g.index][space.min_keep(g.index):] = False
        f, p = space.cost(masks)
        rows.append({"group": g.index, "name": g.name, "channels": g.size,
                     "layers": len(g.layers), "flops_share": (space.base_flops - f) / space.base_flops,
                     "params_share": (space.base_params - p) / space.base_params})
    print(f"{args.model}: {space.num_groups} prunable channel groups, {space.base_flops:,} MACs, "
          f"{space.base_params:,} params at {args.image_size}x{args.image_size}")
    print(markdown_table(rows, ["group", "name", "channels", "layers", "flops_share", "params_share"],
                         ["#", "group", "channels", "layers", "FLOPs prunable", "params prunable"],
                         digits=3))
    if args.json:
        from gcnprune_fast.report import write_json

        write_json(args.json, {"model": args.model, "base_flops": space.base_flops,
                               "base_params": space.base_params, "groups": rows})
    return 0


def cmd_export(args) -> int:
    import torch

    from gcnprune_fast.export import export_model
    from gcnprune_fast.space import load_pruned

    plan_path = os.path.join(args.pruned, "plan.json")
    weights = os.path.join(args.pruned, "weights.pt")
    for p in (plan_path, weights):
        if not os.path.isfile(p):
            raise CLIError(f"{p} not found: --pruned must be a folder written by `gcnprune prune --out`")
    plan = _read_plan(plan_path)
    state = _torch_load(weights, "weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIError(f"{weights} does not hold a state_dict (name -> tensor)")
    report_path = os.path.join(args.pruned, "report.json")
    shapes = plan["input_shapes"]
    in_channels = int(shapes[0][1]) if len(shapes[0]) > 1 else 1
    num_classes = args.num_classes or _num_classes_from_state(state, weights)
    model_name = args.model or _guess_model_name(plan, num_classes)
    model = _make_model(model_name, num_classes, in_channels)
    try:
        pruned = load_pruned(model, plan, state).eval()
    except ValueError as e:
        raise CLIError(f"--pruned {args.pruned} does not fit --model {model_name}: {e}") from None
    example = torch.randn(1, *shapes[0][1:])
    path = export_model(pruned, args.out, example, format=args.format)
    with torch.no_grad():
        ref = pruned(example)
    print(f"exported {model_name} ({args.format}) -> {path}; output shape {tuple(ref.shape)}"
          + (f"; report: {report_path}" if os.path.isfile(report_path) else ""))
    return 0


def cmd_methods(args) -> int:
    from gcnprune_fast.methods import get_method, method_names

    names = [args.name] if args.name else list(method_names())
    for i, name in enumerate(names):
        spec = get_method(name)
        facts = [f"budgets: {', '.join(spec.budget_kinds)}",
                 "resumable" if spec.supports_resume else "not resumable",
                 "reads the data" if spec.needs_data else "weights only"]
        if spec.is_default:
            facts.insert(0, "default")
        print(f"{'' if i == 0 else chr(10)}{name}: {spec.summary} ({'; '.join(facts)})")
        print(spec.options_help())
    return 0


def _guess_model_name(plan: dict, num_classes: int) -> str:
    """The built-in model whose class and structure fingerprint match the plan."""
    from gcnprune_fast.models import MODEL_NAMES, get_model
    from gcnprune_fast.space.plans import structure_fingerprint

    cls = plan.get("model_class", "")
    shapes = plan["input_shapes"]
    in_channels = int(shapes[0][1]) if len(shapes[0]) > 1 else 1
    for name in MODEL_NAMES:
        m = get_model(name, num_classes=num_classes, in_channels=in_channels)
        if f"{type(m).__module__}.{type(m).__qualname__}" == cls and \
                structure_fingerprint(m) == plan.get("fingerprint"):
            return name
    raise CLIError(f"cannot tell which built-in model the plan ({cls}) is for; pass --model "
                   f"(a built-in name, torchvision:NAME or timm:NAME)")


def _num_classes_from_state(state: dict, weights: str) -> int:
    last = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not last:
        raise CLIError(f"cannot tell the number of classes from {weights}; pass --num-classes")
    return int(last[-1].shape[0])


# ----------------------------------------------------------------------------------------------
# argument parser
# ----------------------------------------------------------------------------------------------
def _int_at_least(minimum: int, what: str):
    """argparse type: an integer >= minimum."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _ratio(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1], got {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio in (0, 1] (fraction kept), got {s!r}")
    return v


def distributed_training_options(p: argparse.ArgumentParser) -> None:
    """Training options that matter most under torchrun (they work on one process too)."""
    p.add_argument("--accumulate-steps", type=_positive_int, default=1,
                   help="sum gradients over this many batches per optimizer step (default 1)")
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None,
                   help="mixed-precision training (fp16: CUDA only)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over the global batch")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="train in the channels_last memory format (auto: on the CPU when every "
                        "convolution's width is a multiple of 16, where it measured faster)")


def channels_last_arg(value: str):
    """``--channels-last`` as ``training.train`` takes it (None = auto)."""
    return {"auto": None, "on": True, "off": False}[value]


def build_parser() -> argparse.ArgumentParser:
    from gcnprune_fast.export import FORMATS
    from gcnprune_fast.methods import ALLOCATIONS, default_method, demo_methods, method_names
    from gcnprune_fast.models import MODEL_NAMES
    from gcnprune_fast.space.reconstruct import RECONSTRUCT_IMAGES, RECONSTRUCT_LAYERS

    methods = method_names()
    model_help = (f"a built-in model ({', '.join(MODEL_NAMES)}), torchvision:NAME (a "
                  f"torchvision.models classifier) or timm:NAME (needs `pip install timm`)")
    parser = argparse.ArgumentParser(
        prog="gcnprune", description="Structured channel pruning of CNNs with channel-graph GCN "
        "agents trained by RL, and the usual baselines.",
        epilog="Run `gcnprune demo` for a self-contained example (no data, no downloads).")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: GCNPRUNE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p, data=True):
        p.add_argument("--threads", type=_positive_int, default=None,
                       help="torch threads (default: torch's choice)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
        if data:
            p.add_argument("--model", type=_model_arg, required=True, metavar="MODEL",
                           help=model_help)
            p.add_argument("--num-classes", type=_positive_int, default=None,
                           help="classifier outputs (default: the dataset's classes)")
            p.add_argument("--dataset", required=True,
                           help="cifar10, cifar100, mnist, fashion-mnist, synthetic, "
                                "imagefolder:PATH or a directory of class folders")
            p.add_argument("--data-dir", default=None, help="dataset root folder")
            p.add_argument("--download", action="store_true", help="let torchvision download it")
            p.add_argument("--image-size", type=_positive_int, default=None,
                           help="ImageFolder crop size (default 224) / synthetic image size")
            p.add_argument("--batch-size", type=_positive_int, default=128,
                           help="batch size (per process under torchrun; default 128)")
            p.add_argument("--workers", type=_nonneg_int, default=0,
                           help="DataLoader workers (file datasets only)")
            p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")

    demo_names = " and ".join(demo_methods())
    d = sub.add_parser("demo", help=f"train a small CNN on synthetic data, prune it with "
                       f"{demo_names}, compare", description="Self-contained demo: generates a "
                       f"learnable synthetic image dataset, trains simple_cnn, prunes it with "
                       f"{demo_names} at the same FLOPs budget, fine-tunes briefly and writes a "
                       f"comparison (JSON, Markdown, plots).")
    common(d, data=False)
    d.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder (default runs/demo)")
    d.add_argument("--flops", type=_ratio, default=0.5, help="fraction of FLOPs kept (default 0.5)")
    d.add_argument("--methods", nargs="+", choices=methods, default=list(demo_methods()))
    d.add_argument("--train-samples", type=_positive_int, default=4000)
    d.add_argument("--test-samples", type=_positive_int, default=1000)
    d.add_argument("--image-size", type=_positive_int, default=32)
    d.add_argument("--epochs", type=_positive_int, default=3, help="training epochs (default 3)")
    d.add_argument("--batch-size", type=_positive_int, default=64)
    d.add_argument("--lr", type=float, default=0.05)
    d.add_argument("--episodes", type=_positive_int, default=100,
                   help="search episodes (methods with an `episodes` option)")
    d.add_argument("--finetune-epochs", type=_nonneg_int, default=1)
    d.add_argument("--finetune-lr", type=float, default=0.01)
    d.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (seconds)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a built-in model on a dataset",
                       description="Train a model (SGD + Nesterov, cosine LR). A checkpoint "
                       "OUT.ckpt is written after every epoch (continue an interrupted run with "
                       "--resume) and removed at the end.")
    common(t)
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.ckpt (same settings)")
    t.add_argument("--epochs", type=_positive_int, required=True)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--eval-every-epoch", action="store_true", help="test accuracy after each epoch")
    distributed_training_options(t)
    t.add_argument("--out", required=True, help="output .pt file (weights + facts)")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("prune", help="prune a trained model to a FLOPs/params budget",
                       description="Prune a trained built-in model with a registered method "
                       "(`gcnprune methods` lists them and their options), re-estimate BN, "
                       "optionally fine-tune, and save plan.json, weights.pt and report.{json,md} "
                       "into --out.")
    common(p)
    p.add_argument("--checkpoint", required=True, help="weights from `gcnprune train` (or a state_dict)")
    p.add_argument("--method", choices=methods, default=default_method(),
                   help=f"pruning method (default {default_method()})")
    p.add_argument("--flops", type=_ratio, default=None, help="fraction of FLOPs kept, e.g. 0.5")
    p.add_argument("--params", type=_ratio, default=None, help="fraction of parameters kept")
    p.add_argument("--latency", type=_ratio, default=None,
                   help="fraction of the measured end-to-end latency kept, e.g. 0.5 (a latency "
                   "table is measured on --latency-device first, cached on disk)")
    p.add_argument("--latency-device", default="cpu", help="device the latency is measured on "
                   "(default cpu; cuda uses CUDA events)")
    p.add_argument("--latency-batch", type=_positive_int, default=1,
                   help="batch size the latency is measured at (default 1)")
    p.add_argument("--latency-threads", type=_positive_int, default=None,
                   help="intra-op threads the latency is measured with (default: torch's)")
    p.add_argument("--round-to", type=_positive_int, default=None,
                   help="kept channel counts are multiples of this (default 1, or 8 with "
                   "--latency)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="shortcut for --option allocation=... (criteria methods: global ranking "
                   "or the same ratio per group)")
    p.add_argument("--episodes", type=_positive_int, default=None,
                   help="shortcut for --option episodes=N (search methods)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, repeatable, e.g. --option k=16; `gcnprune methods "
                   "[NAME]` lists every method's options with defaults and help")
    p.add_argument("--finetune-epochs", type=_nonneg_int, default=0)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--distill", action="store_true", help="fine-tune with distillation from the original")
    p.add_argument("--reconstruct", choices=RECONSTRUCT_LAYERS, default=None,
                   help="refit the layers that read pruned channels by least squares (then "
                   "the original BN statistics or re-estimated ones, whichever scores better on "
                   "the validation data): all (every channel-mixing layer) or pruned (only those "
                   "that lose inputs); default off")
    p.add_argument("--reconstruct-images", type=_positive_int, default=RECONSTRUCT_IMAGES,
                   help="training images the refit uses (default %(default)s)")
    distributed_training_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoints in OUT/search (the "
                   "search of resumable methods, the fine-tuning of every method; the other "
                   "methods' fast searches are rerun); refused when they belong to other settings")
    p.add_argument("--export", nargs="*", choices=FORMATS,
                   help="also export the pruned model in these formats")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_prune)

    i = sub.add_parser("inspect", help="print a model's prunable channel groups and their costs",
                       description="List the channel groups of a built-in model (what is pruned "
                       "together), their sizes and the share of FLOPs/params each one controls.")
    i.add_argument("--model", type=_model_arg, required=True, metavar="MODEL", help=model_help)
    i.add_argument("--num-classes", type=_positive_int, default=10)
    i.add_argument("--in-channels", type=_positive_int, default=3)
    i.add_argument("--image-size", type=_positive_int, default=32)
    i.add_argument("--json", default=None, help="also write the table as JSON here")
    i.set_defaults(func=cmd_inspect)

    e = sub.add_parser("export", help="export a pruned model (TorchScript, torch.export, AOTI, ONNX)",
                       description="Rebuild a pruned model from `gcnprune prune --out DIR` (plan.json + "
                       "weights.pt) and export it.")
    e.add_argument("--pruned", required=True, help="folder written by `gcnprune prune --out`")
    e.add_argument("--format", choices=FORMATS, default=FORMATS[0])
    e.add_argument("--out", required=True, help="output file (.pt, .pt2 or .onnx)")
    e.add_argument("--model", type=_model_arg, default=None, metavar="MODEL",
                   help=model_help + " (default: the built-in model recognised from the plan)")
    e.add_argument("--num-classes", type=_positive_int, default=None)
    e.set_defaults(func=cmd_export)

    m = sub.add_parser("methods", help="list the pruning methods and their options",
                       description="Every registered pruning method with its options (defaults and "
                       "help), budgets and whether it can resume.")
    m.add_argument("name", nargs="?", choices=methods, help="one method only")
    m.set_defaults(func=cmd_methods)
    for command in sub.choices.values():  # `gcnprune COMMAND ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error (also: GCNPRUNE_DEBUG=1)")
    return parser


class _StderrHandler(logging.Handler):
    """Log lines of the ``gcnprune_fast`` logger to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"gcnprune: {self.format(record)}", file=sys.stderr)


def _setup_logging() -> None:
    logger = logging.getLogger("gcnprune_fast")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _one_line(e: BaseException) -> str:
    """The error as one line: its first line, with the exception type unless it is ours or a
    plain ValueError / TypeError (whose messages say what is wrong)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else type(e).__name__
    if isinstance(e, (CLIError, ValueError, TypeError, FileNotFoundError)):
        return text
    return f"{type(e).__name__}: {text} (--debug shows the traceback)"


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``gcnprune`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get("GCNPRUNE_DEBUG"))
    _setup_logging()
    from gcnprune_fast import distributed

    try:
        code = int(args.func(args) or 0)
        distributed.shutdown(wait=True)  # under torchrun: every rank done, then leave together
        return code
    except (CLIError, ValueError, TypeError, FloatingPointError, RuntimeError, OSError,
            ImportError) as e:
        if debug:
            raise
        hint = distributed.failure_hint(e)
        w = distributed.world()
        where = f" (rank {w.rank} of {w.size})" if w.distributed else ""
        print(f"gcnprune {args.command}: error{where}: {hint or _one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gcnprune {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
