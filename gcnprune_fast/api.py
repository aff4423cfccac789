"""The one-call API: ``prune(model, loader, flops=0.5)`` -> :class:`PruneResult`.

What ``prune`` does, in order:

1. validates the arguments (method and its options, budget, loader structure) before any heavy work;
2. deep-copies the model, moves the copy to ``device`` and puts it in eval mode. **The user's model
   is never modified**: not its weights, not its device, not its train/eval mode (a model in train
   mode is fine; all searching and evaluation happens in eval mode on the copy);
3. builds the :class:`~gcnprune_fast.space.PruningSpace` and checks that the budget is reachable
   with ``min_channels`` / ``round_to`` (else a ValueError states the minimum achievable ratio);
4. runs the method (any registered one, see ``gcnprune_fast.methods.method_names()``; its options
   are validated in step 1) -> keep-masks;
5. physical surgery (``space.prune``), BatchNorm re-estimation (``training.recalibrate_bn``) and
   optional fine-tuning (``training.train``, distilling from the original when ``distill=True``).

Everything runs under a forked, seeded RNG (``seed``), so results are reproducible and the caller's
global RNG state is left as it was.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from gcnprune_fast.data import split_batch
from gcnprune_fast.features import non_finite_activation_error
from gcnprune_fast.methods import Budget, SearchContext, default_method, get_method
from gcnprune_fast.methods.allocation import check_budget_ratio, check_budget_reachable
from gcnprune_fast.report import prune_report_markdown, write_json
from gcnprune_fast.utils import model_device

__all__ = ["prune", "PruneResult"]


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    model: the compact (physically pruned, BN re-estimated, optionally fine-tuned) model, eval mode.
    plan: JSON-serializable description of the kept channels (``space.plan``); rebuild with
        ``gcnprune_fast.load_pruned(original_model, plan, state_dict)``.
    report: dict with ``flops_before/after``, ``params_before/after``, ``flops_ratio``,
        ``params_ratio``, ``acc_before``, ``acc_pruned`` (after BN re-estimation), ``acc_finetuned``
        (None when not fine-tuned), ``widths`` (per group name/before/after), ``method``,
        ``allocation`` (the criteria's, else the method name), ``search_time_s``, ``episodes``,
        ``reward_curve`` (search methods), ``seed``.
    masks: the keep-masks (bool [C_g] per group).
    example_inputs: inputs used to trace the model (also used for export).
    """

    model: nn.Module
    plan: Dict[str, Any]
    report: Dict[str, Any]
    masks: List[torch.Tensor] = field(default_factory=list)
    example_inputs: Optional[torch.Tensor] = None

    def save(self, directory: str, export_formats: Sequence[str] = ()) -> Dict[str, str]:
        """Write ``plan.json``, ``weights.pt`` (the compact model's state_dict; loadable with
        ``torch.load(..., weights_only=True)``), ``report.json`` and ``report.md`` to
        ``directory``; each format in ``export_formats`` is written by
        ``gcnprune_fast.export.export_artifacts``. Returns {artifact name: path}."""
        if isinstance(export_formats, str):
            export_formats = (export_formats,)
        os.makedirs(directory, exist_ok=True)
        paths = {"plan": os.path.join(directory, "plan.json"),
                 "weights": os.path.join(directory, "weights.pt"),
                 "report": os.path.join(directory, "report.json"),
                 "report_md": os.path.join(directory, "report.md")}
        with open(paths["plan"], "w") as f:
            json.dump(self.plan, f, indent=1)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, paths["weights"])
        write_json(paths["report"], self.report)
        with open(paths["report_md"], "w") as f:
            f.write(prune_report_markdown(self.report))
        if export_formats:
            from gcnprune_fast.export import export_artifacts  # lazy: export is optional
            if self.example_inputs is None:
                raise ValueError("export needs example_inputs; this result has none")
            exported = export_artifacts(self.model, directory, self.example_inputs,
                                        tuple(export_formats))
            if isinstance(exported, dict):
                paths.update({str(k): str(v) for k, v in exported.items()})
        return paths


def _first_batch(loader, name: str):
    for batch in loader:
        return split_batch(batch, name)
    raise ValueError(f"{name} is empty: it yielded no batches")


@torch.no_grad()
def _check_finite_activations(space, example_inputs: torch.Tensor) -> None:
    """Raise ValueError naming the first group whose activations are NaN/inf on the example."""
    bad = []

    def hook(g, act):
        if not bad and not torch.isfinite(act).all():
            bad.append(g)

    with space.feature_hooks(hook):
        out = space.model(example_inputs)
    if bad:
        raise non_finite_activation_error(space, bad[0])
    if not torch.isfinite(out).all():
        raise ValueError("the model's output contains NaN/inf on the example inputs")


def prune(model: nn.Module, loader, *, method: Optional[str] = None, flops: Optional[float] = None,
          params: Optional[float] = None, example_inputs: Optional[torch.Tensor] = None,
          val_loader=None, train_loader=None, finetune_epochs: int = 0, device=None, seed: int = 0,
          checkpoint_dir: Optional[str] = None, progress: bool = True, resume: bool = False,
          round_to: int = 1, min_channels: int = 1,
          ignored_layers=None, distill: bool = False, finetune_lr: float = 0.01,
          bn_batches: int = 20, eval_batches: Optional[int] = None, **method_options) -> PruneResult:
    """Prune ``model`` to a FLOPs and/or parameter budget and return the compact model.

    Args:
        model: a trained classifier ``[N, C, H, W] -> [N, classes]``; never modified.
        loader: yields ``(inputs, targets)``: features, the reward set, criteria data, and (when
            no ``train_loader``) BN re-estimation / fine-tuning data.
        method: a registered method name (``gcnprune_fast.methods.method_names()``; ``gcnprune
            methods`` lists them with their options); None = the registry's default method.
        flops / params: keep at most this fraction (in (0, 1]) of the original MACs / parameters;
            at least one is required, both may be given.
        example_inputs: tracing input (default: the first 2 samples of ``loader``).
        val_loader: accuracy before/after (default: ``loader``).
        train_loader: BN re-estimation and fine-tuning data (default: ``loader``).
        finetune_epochs: fine-tuning epochs after surgery (0 = none; ``acc_finetuned`` is None).
        device: where to work (default: the model's device). The model copy is moved there.
        seed: seeds everything (sampling, initialization, random criterion, loader shuffling).
        checkpoint_dir: methods that support resume write a search checkpoint here.
        progress: tqdm bars for features, search and fine-tuning.
        resume: continue the method's search from ``checkpoint_dir`` (methods whose registry entry
            has ``supports_resume``; others raise ValueError).
        round_to / min_channels / ignored_layers: passed to the PruningSpace.
        distill: fine-tune with knowledge distillation from the original model.
        finetune_lr: initial learning rate of fine-tuning (cosine schedule).
        bn_batches: batches for BN re-estimation after surgery.
        eval_batches: evaluate accuracies on at most this many batches (None = all).
        **method_options: the method's options, validated against its registered options
            dataclass before any work (e.g. ``episodes=300`` for the default method,
            ``allocation="uniform"`` for the criteria).

    Returns:
        :class:`PruneResult`.

    Raises:
        ValueError: unknown method, bad option value, missing or out-of-range budget, a budget below what
            ``min_channels``/``round_to`` allow (the message gives the minimum ratio), an empty
            loader, NaN/inf activations (the group is named).
        TypeError: a loader that does not yield ``(inputs, targets)``, a non-module model, unknown
            method options.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = default_method() if method is None else method
    spec = get_method(method)
    options = spec.parse_options(method_options)
    if flops is None and params is None:
        raise ValueError("give a budget: flops=<ratio in (0, 1]> and/or params=<ratio in (0, 1]>")
    check_budget_ratio("flops", flops)
    check_budget_ratio("params", params)
    for kind, value in (("flops", flops), ("params", params)):
        if value is not None and kind not in spec.budget_kinds:
            raise ValueError(f"method {method!r} does not support a {kind} budget (it supports "
                             f"{list(spec.budget_kinds)})")
    for name, value, minimum in (("finetune_epochs", finetune_epochs, 0), ("round_to", round_to, 1),
                                 ("min_channels", min_channels, 1), ("seed", seed, 0),
                                 ("bn_batches", bn_batches, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "positive" if minimum else "non-negative"
            raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    if resume and not spec.supports_resume:
        raise ValueError(f"method {method!r} cannot resume (it has no search checkpoint); run it "
                         f"without resume")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where the search checkpoint is)")
    if loader is None:
        raise ValueError("loader is required (it provides features and the reward set)")
    device = model_device(model, device)
    val_loader = loader if val_loader is None else val_loader
    train_loader = loader if train_loader is None else train_loader

    from gcnprune_fast import training
    from gcnprune_fast.space import PruningSpace, resolve_ignored_layers

    # Modules of the user's model are mapped to names here, before the model is copied.
    ignored = None if ignored_layers is None else resolve_ignored_layers(model, ignored_layers)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x0, _ = _first_batch(loader, "loader")
        if example_inputs is None:
            example_inputs = x0[:2]
        if not isinstance(example_inputs, torch.Tensor):
            raise TypeError(f"example_inputs must be a tensor [N, C, H, W], got "
                            f"{type(example_inputs).__name__}")
        example_inputs = example_inputs.to(device)
        # Work on a copy: the user's model keeps its weights, device and train/eval mode.
        work = copy.deepcopy(model).to(device).eval()
        space = PruningSpace(work, example_inputs, ignored_layers=ignored, round_to=round_to,
                             min_channels=min_channels)
        budget = Budget.from_ratios(space, flops, params)
        check_budget_reachable(space, budget)
        _check_finite_activations(space, example_inputs)

        torch.manual_seed(seed)
        acc_before = training.evaluate(work, val_loader, device=device, max_batches=eval_batches)
        ctx = SearchContext(space=space, budget=budget, loader=loader, device=device, seed=seed,
                            val_loader=val_loader, progress=progress, checkpoint_dir=checkpoint_dir,
                            resume=resume, options=options)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        result = spec.run(ctx)
        search_time = result.info.get("search_time_s", time.perf_counter() - t0)
        masks = [m.to(torch.bool).cpu() for m in result.masks]
        space.validate_masks(masks)
        flops_after, params_after = space.cost(masks)
        if not bool(budget.feasible(flops_after, params_after)):
            raise RuntimeError(f"internal error: method {method!r} returned masks over the budget "
                               f"(flops {flops_after}/{budget.max_flops:.0f}, params "
                               f"{params_after}/{budget.max_params:.0f})")

        compact = space.prune(masks).to(device).eval()
        training.recalibrate_bn(compact, train_loader, num_batches=bn_batches, device=device)
        acc_pruned = training.evaluate(compact, val_loader, device=device, max_batches=eval_batches)
        acc_finetuned = None
        if finetune_epochs > 0:
            torch.manual_seed(seed)
            ft_ckpt = None if checkpoint_dir is None else os.path.join(checkpoint_dir, "finetune.pt")
            training.train(compact, train_loader, finetune_epochs, lr=finetune_lr, device=device,
                           teacher=work if distill else None, progress=progress,
                           checkpoint_path=ft_ckpt, seed=seed)
            compact.eval()
            acc_finetuned = training.evaluate(compact, val_loader, device=device,
                                              max_batches=eval_batches)
        plan = space.plan(masks)

    report: Dict[str, Any] = {
        "method": method,
        "allocation": result.info.get("allocation", method),
        "seed": seed,
        "flops_budget": flops,
        "params_budget": params,
        "flops_before": int(space.base_flops),
        "flops_after": int(flops_after),
        "params_before": int(space.base_params),
        "params_after": int(params_after),
        "flops_ratio": float(flops_after) / max(float(space.base_flops), 1.0),
        "params_ratio": float(params_after) / max(float(space.base_params), 1.0),
        "acc_before": acc_before,
        "acc_pruned": acc_pruned,
        "acc_finetuned": acc_finetuned,
        "finetune_epochs": finetune_epochs,
        "distill": bool(distill),
        "widths": [{"name": g.name, "before": int(g.size), "after": int(m.sum())}
                   for g, m in zip(space.groups, masks)],
        "search_time_s": float(search_time),
        "episodes": int(result.info.get("episodes", 0)),
        "reward_curve": list(result.info.get("reward_curve", [])),
    }
    for k, v in result.info.items():
        report.setdefault(k, v)
    return PruneResult(model=compact, plan=plan, report=report, masks=masks,
                       example_inputs=example_inputs.detach().cpu())
