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

Randomness is per call (``torch.Generator`` objects seeded with ``seed``), so results are
reproducible, concurrent calls in threads equal sequential ones, and the caller's global RNG state
is left as it was.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from gcnprune_fast import distributed
from gcnprune_fast.data import (HOLDOUT_FRACTION, BatchSubset, check_labels, check_reiterable,
                                split_batch, split_holdout)
from gcnprune_fast.features import non_finite_activation_error
from gcnprune_fast.methods import Budget, SearchContext, default_method, get_method
from gcnprune_fast.methods.allocation import check_budget_ratios, check_budget_reachable
from gcnprune_fast.report import (ACCURACY_SETS, HELD_OUT, SEARCH_SET, VAL_LOADER,
                                  prune_report_markdown, write_json)
from gcnprune_fast.space.reconstruct import (RECONSTRUCT_IMAGES, check_reconstruct,
                                             reconstruct as space_reconstruct,
                                             reconstruction_batches)
from gcnprune_fast.utils import model_device

__all__ = ["prune", "PruneResult", "FINETUNE_CHECKPOINT", "ACCURACY_SETS"]

logger = logging.getLogger("gcnprune_fast")

DEFAULT_FLOPS = 0.5
"""The budget of ``prune(model, loader)`` called without flops/params/latency."""
# With a latency budget channel counts default to multiples of 8: the latency table then measures
# every width a search can choose (nothing is interpolated), and CPU/GPU kernels run such widths
# at full speed while odd ones (e.g. 17) can be slower than 24 (issue 12: at round_to=1 the
# latency=0.5 ResNet-56 was predicted 15-22% too fast at batch 8; at 8, within 6% on every
# thread/batch setting measured).
LATENCY_ROUND_TO = 8

FINETUNE_CHECKPOINT = "finetune.pt"
"""File name of the fine-tuning checkpoint in ``checkpoint_dir``."""


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    model: the compact (physically pruned, BN re-estimated, optionally fine-tuned) model, eval mode.
    plan: JSON-serializable description of the kept channels (``space.plan``); rebuild with
        ``gcnprune_fast.load_pruned(original_model, plan, state_dict)``.
    report: dict with ``flops_before/after``, ``params_before/after``, ``flops_ratio``,
        ``params_ratio``, ``acc_before``, ``acc_pruned`` (after BN re-estimation), ``acc_finetuned``
        (None when not fine-tuned), ``accuracy_set`` (what the accuracies were measured on: one of
        :data:`ACCURACY_SETS`, see :func:`prune`'s ``val_loader``) and ``held_out_images`` (the
        held-out images evaluated; None unless ``accuracy_set`` is ``"held-out"``), ``widths``
        (per group name/before/after), ``method``, ``allocation`` (the criteria's, else the
        method name), ``search_time_s``, ``episodes``, ``reward_curve`` (search methods: the
        reward of every sampled mask), ``greedy_curve`` (channel-gcn: the reward of the policy's
        greedy mask before every update; both on the search's reward set;
        ``greedy_heldout_curve`` / ``final_greedy_heldout_reward``: the same masks on
        ``heldout_samples`` images of ``val_loader``), ``seed``,
        ``flops_after_measured`` / ``params_after_measured`` (counted on the pruned model),
        ``cost_model_mismatch`` (True when they differ from ``flops_after`` / ``params_after`` by
        more than 1%; None when the count failed) and ``cost_model_error`` (the relative
        difference), ``resumed``.
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
        ``gcnprune_fast.export.export_artifacts``. Returns {artifact name: path}.

        Under torch.distributed only rank 0 writes (each file through a temporary file and an
        atomic rename); the other ranks return the same paths without writing."""
        if isinstance(export_formats, str):
            export_formats = (export_formats,)
        paths = {"plan": os.path.join(directory, "plan.json"),
                 "weights": os.path.join(directory, "weights.pt"),
                 "report": os.path.join(directory, "report.json"),
                 "report_md": os.path.join(directory, "report.md")}
        if distributed.is_distributed():
            if distributed.is_main():
                self._save_atomic(directory, paths, export_formats)
            return paths
        os.makedirs(directory, exist_ok=True)
        with open(paths["plan"], "w") as f:
            json.dump(self.plan, f, indent=1)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, paths["weights"])
        write_json(paths["report"], self.report)
        with open(paths["report_md"], "w") as f:
            f.write(prune_report_markdown(self.report))
        return self._export(directory, paths, export_formats)

    def _save_atomic(self, directory: str, paths: Dict[str, str],
                     export_formats: Sequence[str]) -> Dict[str, str]:
        """:meth:`save` of rank 0 under torch.distributed: every file written atomically."""
        os.makedirs(directory, exist_ok=True)
        distributed.atomic_write_text(paths["plan"], json.dumps(self.plan, indent=1))
        distributed.atomic_save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                                paths["weights"])
        tmp = f"{paths['report']}.tmp{os.getpid()}"
        write_json(tmp, self.report)
        os.replace(tmp, paths["report"])
        distributed.atomic_write_text(paths["report_md"], prune_report_markdown(self.report))
        return self._export(directory, paths, export_formats)

    def _export(self, directory: str, paths: Dict[str, str],
                export_formats: Sequence[str]) -> Dict[str, str]:
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


def _refit_statistics(compact: nn.Module, train_loader, val_loader, bn_batches: int,
                      eval_batches: Optional[int], device):
    """After a least-squares refit: (model, its accuracy, whether BN was re-estimated), keeping
    the original BN statistics or re-estimated ones, whichever scores better on ``val_loader``.
    The refit layers reproduce the original pre-BN outputs, but with less variance (a regression
    shrinks), so which statistics serve better depends on the model: on ResNet-20 at 50% and 30%
    FLOPs keeping them was 0.8-3.2 points better, on a small plain CNN re-estimating was."""
    from gcnprune_fast import training

    kept_acc = training.evaluate(compact, val_loader, device=device, max_batches=eval_batches)
    other = copy.deepcopy(compact)
    training.recalibrate_bn(other, train_loader, num_batches=bn_batches, device=device)
    other.eval()
    other_acc = training.evaluate(other, val_loader, device=device, max_batches=eval_batches)
    logger.info("reconstruct: accuracy %.4f with the original BN statistics, %.4f re-estimated",
                kept_acc, other_acc)
    if other_acc > kept_acc:
        return other, other_acc, True
    return compact, kept_acc, False


def _generator(seed: int) -> torch.Generator:
    """A fresh CPU generator for one phase of one call (every phase starts from ``seed``)."""
    return torch.Generator().manual_seed(int(seed))


def _check_device(model: nn.Module, device) -> torch.device:
    """The working device, or ValueError for one that cannot be used (before any work)."""
    try:
        dev = model_device(model, device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device ({e}); use e.g. 'cpu', "
                         f"'cuda' or 'cuda:1'") from None
    if dev.type == "meta":
        raise ValueError("device='meta' holds no data; pick a real device such as 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(dev)!r} but no CUDA GPU is available "
                             f"(torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(dev)!r} but only {torch.cuda.device_count()} CUDA "
                             f"device(s) exist")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps")
                                    and torch.backends.mps.is_available()):
        raise ValueError("device='mps' but the MPS backend is not available; use device='cpu'")
    return dev


def _check_materialized(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise ValueError(f"the model is on the meta device ({name!r} has no data): build it "
                             f"on a real device or materialize it (model.to_empty(device=...) and "
                             f"load_state_dict) before pruning")


def _plain(obj):
    """JSON round trip: tuples become lists, unknown objects strings (fingerprints compare equal
    after a reload)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _resume_problem(spec, checkpoint_dir: Optional[str], finetune_epochs: int) -> Optional[str]:
    """Why ``resume=True`` cannot work (a message), or None. Checked before any work; also used
    by the command line before it loads data."""
    if checkpoint_dir is None:
        return "resume=True needs checkpoint_dir (where the checkpoints are)"
    ft = os.path.join(checkpoint_dir, FINETUNE_CHECKPOINT)
    if spec.supports_resume:
        found = os.path.isdir(checkpoint_dir) and any(
            f.endswith(".pt") for f in os.listdir(checkpoint_dir))
        if not found:
            return (f"resume=True but {checkpoint_dir} holds no checkpoint: nothing to resume "
                    f"(run without resume to start)")
        return None
    if finetune_epochs <= 0:
        return (f"method {spec.name!r} keeps no search checkpoint (its search is rerun) and there "
                f"is no fine-tuning (finetune_epochs=0): nothing to resume; run without resume")
    if not os.path.isfile(ft):
        return (f"resume=True but {ft} does not exist: nothing to resume (method {spec.name!r} "
                f"keeps no search checkpoint, only the fine-tuning one); run without resume")
    return None


def _check_finetune_checkpoint(path: str, expected: Dict[str, Any]) -> None:
    """Refuse (ValueError, before the search) a fine-tune checkpoint written by other work: the
    keys of ``expected`` (method, options, budget, seed, fine-tune settings) must match."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickled objects, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot read the fine-tune checkpoint {path} ({first}); delete it or "
                         f"run without resume") from e
    theirs = saved.get("fingerprint", {}) if isinstance(saved, dict) else {}
    diff = sorted(k for k in expected if theirs.get(k) != expected[k])
    if diff:
        raise ValueError(f"the fine-tune checkpoint {path} belongs to a different run (differs in "
                         f"{diff}); use another checkpoint_dir or run without resume")


def _plan_digest(plan: Dict[str, Any]) -> str:
    """sha256 (16 hex chars) of the kept channels of every group: the widths and the choice."""
    text = json.dumps([[g["root"], g["size"], g["kept"]] for g in plan["groups"]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


COST_TOLERANCE = 0.01
"""Relative difference above which the predicted cost of the masks and the count on the pruned
model are reported as a cost-model mismatch."""


def _measure_cost(compact: nn.Module, example_inputs: torch.Tensor, flops_pred: int,
                  params_pred: int) -> Dict[str, Any]:
    """Count FLOPs / params on the pruned model itself (a fresh ``PruningSpace``) and compare
    them with what the cost model predicted for the masks; warn when they differ by more than
    :data:`COST_TOLERANCE`."""
    from gcnprune_fast.space import PruningSpace

    try:
        measured = PruningSpace(compact, example_inputs)
        mf, mp = int(measured.base_flops), int(measured.base_params)
    except Exception as e:  # the check must not cost a finished result
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        warnings.warn(f"gcnprune_fast: could not count the pruned model's cost to verify the cost "
                      f"model ({type(e).__name__}: {first})", RuntimeWarning, stacklevel=3)
        return {"flops_after_measured": None, "params_after_measured": None,
                "cost_model_mismatch": None, "cost_model_error": None}
    err = max(abs(mf - flops_pred) / max(mf, 1), abs(mp - params_pred) / max(mp, 1))
    mismatch = err > COST_TOLERANCE
    if mismatch:
        warnings.warn(f"gcnprune_fast: cost model mismatch: the masks were predicted to keep "
                      f"{flops_pred:,} FLOPs (MACs) and {params_pred:,} params, the pruned model "
                      f"counts {mf:,} and {mp:,} ({err:.1%} off); the budget may not hold for "
                      f"this architecture (report['cost_model_mismatch'] is True)",
                      RuntimeWarning, stacklevel=3)
    return {"flops_after_measured": mf, "params_after_measured": mp,
            "cost_model_mismatch": bool(mismatch), "cost_model_error": float(err)}


@torch.no_grad()
def _check_finite_activations(space, example_inputs: torch.Tensor) -> torch.Tensor:
    """Raise ValueError naming the first group whose activations are NaN/inf on the example;
    returns the model's output on it."""
    bad = []

    def hook(g, act):
        if not bad and not torch.isfinite(act).all():
            bad.append(g)

    with space.feature_hooks(hook):
        out = space.model(example_inputs)
    if bad:
        raise non_finite_activation_error(space, bad[0])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return [N, num_classes] logits; on the example inputs "
                         f"it returned {shape}")
    if not torch.isfinite(out).all():
        raise ValueError("the model's output contains NaN/inf on the example inputs")
    return out


def prune(model: nn.Module, loader, *, method: Optional[str] = None, flops: Optional[float] = None,
          params: Optional[float] = None, example_inputs: Optional[torch.Tensor] = None,
          val_loader=None, train_loader=None, finetune_epochs: int = 0, device=None, seed: int = 0,
          checkpoint_dir: Optional[str] = None, progress: bool = True, resume: bool = False,
          round_to: Optional[int] = None, min_channels: int = 1,
          ignored_layers=None, distill: bool = False, finetune_lr: float = 0.01,
          bn_batches: int = 20, eval_batches: Optional[int] = None, accumulate_steps: int = 1,
          amp: Optional[str] = None, sync_bn: bool = False,
          channels_last: Optional[bool] = None, latency: Optional[float] = None,
          latency_device=None, latency_batch: int = 1, latency_threads: Optional[int] = None,
          latency_cache_dir="default", latency_timer=None, reconstruct: Optional[str] = None,
          reconstruct_images: int = RECONSTRUCT_IMAGES, **method_options) -> PruneResult:
    """Prune ``model`` to a FLOPs and/or parameter budget and return the compact model.

    Args:
        model: a trained classifier ``[N, C, H, W] -> [N, classes]``; never modified.
        loader: yields ``(inputs, targets)``: features, the reward set, criteria data, and (when
            no ``train_loader``) BN re-estimation / fine-tuning data. Must be re-iterable (a
            DataLoader, a TensorBatchLoader, a list of batches; not a generator). Without a
            ``val_loader`` part of it is held out for the accuracies (see ``val_loader``).
        method: a registered method name (``gcnprune_fast.methods.method_names()``; ``gcnprune
            methods`` lists them with their options); None = the registry's default method.
        flops / params: keep at most this fraction (in (0, 1]) of the original MACs / parameters;
            they may be combined with ``latency``; with no budget at all ``flops=DEFAULT_FLOPS``
            (0.5) is used, logged, and ``report["budget_defaulted"]`` is True.
        latency: keep at most this fraction (in (0, 1]) of the original model's end-to-end
            latency measured on ``latency_device`` (default "cpu") at batch ``latency_batch`` with
            ``latency_threads`` intra-op threads (None: torch's current count). A latency table of
            the prunable layers is measured there first (cached on disk in ``latency_cache_dir``,
            default ``~/.cache/gcnprune_fast/latency`` or ``$GCNPRUNE_LATENCY_CACHE``; None: no
            cache), see ``gcnprune_fast.latency``; ``latency_timer`` replaces the timer
            (``timer(run, spec) -> seconds``, tests). The report then gains predicted and
            measured latency before and after (``latency_*`` keys).
        example_inputs: tracing input (default: the first 2 samples of ``loader``).
        val_loader: the data ``acc_before`` / ``acc_pruned`` / ``acc_finetuned`` are measured
            on, also given to the method as selection data (``SearchContext.val_loader``, e.g.
            channel-gcn's ``rerank_top``); ``report["accuracy_set"]`` is ``"val_loader"``.
            Default (None): a held-out part of ``loader``, so that the accuracies are not
            measured on the images the search chose its masks on. ``loader`` is split
            deterministically for ``seed`` (``gcnprune_fast.data.split_holdout``): 1/8 of its
            batches (at least one) -- a random set of samples for a TensorBatchLoader or a
            DataLoader with the default samplers (in order and without augmentation), random
            whole batches for lists and other loaders (which holds images out only if such a
            loader yields the same batches on every pass). The features, the search, BN
            re-estimation and fine-tuning (without a ``train_loader``) use the rest; the report
            says ``accuracy_set="held-out"`` and ``held_out_images``. A loader of fewer than 2
            batches cannot be split: then everything uses all of it as before, and
            ``accuracy_set`` is ``"search-set (loader too small to hold out)"``. Methods that
            select with the selection data (``rerank_top``, ``reward_source="val"``) see the
            held-out part too, so their choice is then not independent of it.
        train_loader: BN re-estimation and fine-tuning data (default: ``loader``, or its search
            part when part of it is held out).
        finetune_epochs: fine-tuning epochs after surgery (0 = none; ``acc_finetuned`` is None).
        device: where to work (default: the model's device). The model copy is moved there.
        seed: seeds everything of this call (sampling, initialization, random criterion, loader
            shuffling and augmentation, dropout).
        checkpoint_dir: where checkpoints go: the search checkpoint of methods whose registry
            entry has ``supports_resume``, and the fine-tuning checkpoint ``finetune.pt`` (after
            every epoch). Each is fingerprinted (method, options, budget, seed, the pruning plan,
            fine-tune settings) and read only when ``resume=True``; without ``resume`` existing
            files are ignored and overwritten.
        progress: tqdm bars for features, search and fine-tuning.
        resume: continue an interrupted run from ``checkpoint_dir``. Resumable methods continue
            their search from its checkpoint; the others (the criteria: fast and deterministic
            for a seed) rerun their search, saying so in one logged line (logger
            ``gcnprune_fast``, INFO). Fine-tuning then continues from ``finetune.pt`` when it
            exists. A checkpoint written by different work raises ValueError naming what
            differs (checked before the search where possible); ``resume=True`` with nothing to
            resume (no checkpoint in ``checkpoint_dir``, or a non-resumable method without a
            fine-tune checkpoint) raises ValueError before any work. Checkpoints are loaded with
            ``weights_only=True``.
        round_to: kept channel counts are multiples of this (or the whole group). None (default):
            1, or ``LATENCY_ROUND_TO`` (8) with a latency budget; the report's ``round_to``
            says which was used.
        min_channels / ignored_layers: passed to the PruningSpace.
        distill: fine-tune with knowledge distillation from the original model.
        finetune_lr: initial learning rate of fine-tuning (cosine schedule).
        bn_batches: batches for BN re-estimation after surgery.
        reconstruct: refit the layers that read pruned channels by least squares
            (``gcnprune_fast.space.reconstruct``): ``"all"`` every channel-mixing layer (also
            corrects drift from upstream), ``"pruned"`` only those that lose inputs, None
            (default) off. Uses the first ``reconstruct_images`` images of ``train_loader``'s
            data. The refit layers reproduce the original layers' outputs, so the original BN
            statistics fit them, but shrunk: the model keeps them or BN re-estimation, whichever
            scores better on ``val_loader`` (``report["bn_reestimated"]``; that choice makes
            ``acc_pruned`` the better of two). Re-ranking candidates (``rerank_top``) are refit
            the same way (their short fine-tune re-estimates the statistics anyway). The
            calibration images run as one forward pass (no gradients): lower
            ``reconstruct_images`` for large inputs.
        eval_batches: evaluate accuracies on at most this many batches (None = all).
        accumulate_steps / amp / sync_bn / channels_last: fine-tuning with gradient accumulation,
            mixed precision (``"bf16"``, or ``"fp16"`` on CUDA), under DDP on GPUs SyncBatchNorm,
            and the channels_last memory format (None: where it pays, see
            ``training.channels_last_pays``) (``training.train``).
        **method_options: the method's options, validated against its registered options
            dataclass before any work (e.g. ``episodes=300`` for the default method,
            ``allocation="uniform"`` for the criteria).

    Randomness is per call: every phase draws from its own ``torch.Generator`` seeded with
    ``seed``, and standard loaders are given one (``training.with_generator``: DataLoader,
    TensorBatchLoader; the user's loader objects are not modified). Torch's global RNG is only
    used, forked and seeded under a process-wide lock, by fine-tuning (dropout), so prunes running
    concurrently in threads give the results of sequential runs (their fine-tunes take turns), and
    the caller's global RNG state is left as it was. A custom loader that draws from the global
    RNG itself is reproducible only if you seed it.

    Distributed: when the caller has initialized a torch.distributed process group of N > 1
    processes (or the command line runs under ``torchrun``), ``prune`` is a collective -- call
    it on every rank with the same arguments (``device``: this rank's GPU). Features, the
    search's mask scoring, BN re-estimation, evaluation and fine-tuning (DDP) are split across
    the ranks and merged, so every rank returns the single-process result (fine-tuning: the
    same global batch); checkpoints are written by rank 0, read by all on resume. See
    ``gcnprune_fast.distributed`` and the README.

    After surgery the FLOPs / params of the pruned model are counted on the model itself and
    compared with the cost model's prediction for the masks (``flops_after_measured``,
    ``params_after_measured``, ``cost_model_mismatch`` in the report; a RuntimeWarning when they
    differ by more than 1%).

    Returns:
        :class:`PruneResult`.

    Raises:
        ValueError: unknown method, bad option value, missing or out-of-range budget, a budget below what
            ``min_channels``/``round_to`` allow (the message gives the minimum ratio), an empty
            loader, a label outside ``[0, num_classes)`` (the value and range are named), NaN/inf
            activations (the group is named), a model on the meta device, an unusable device
            (e.g. ``"cuda"`` without a GPU), nothing to resume, or a checkpoint of other work.
        TypeError: a loader that does not yield ``(inputs, targets)`` or is a one-shot iterator
            (a generator), a non-module model, unknown method options.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    method = default_method() if method is None else method
    spec = get_method(method)
    options = spec.parse_options(method_options)
    budget_defaulted = flops is None and params is None and latency is None
    if budget_defaulted:
        flops = DEFAULT_FLOPS
        logger.info("no budget given: keeping at most flops=%s of the original MACs (the default; "
                    "pass flops=, params= or latency= to choose)", DEFAULT_FLOPS)
    check_budget_ratios(flops, params, latency)
    if round_to is None:
        round_to = 1 if latency is None else LATENCY_ROUND_TO
    if isinstance(latency_batch, bool) or not isinstance(latency_batch, int) or latency_batch < 1:
        raise ValueError(f"latency_batch must be a positive int, got {latency_batch!r}")
    for kind, value in (("flops", flops), ("params", params), ("latency", latency)):
        if value is not None and kind not in spec.budget_kinds:
            raise ValueError(f"method {method!r} does not support a {kind} budget (it supports "
                             f"{list(spec.budget_kinds)})")
    for name, value, minimum in (("finetune_epochs", finetune_epochs, 0), ("round_to", round_to, 1),
                                 ("min_channels", min_channels, 1), ("seed", seed, 0),
                                 ("bn_batches", bn_batches, 1),
                                 ("accumulate_steps", accumulate_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "positive" if minimum else "non-negative"
            raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if channels_last not in (None, True, False):
        raise ValueError(f"channels_last must be None (auto), True or False, got "
                         f"{channels_last!r}")
    check_reconstruct(reconstruct, reconstruct_images)
    if resume:
        problem = _resume_problem(spec, checkpoint_dir, finetune_epochs)
        if problem:
            raise ValueError(problem)
    if loader is None:
        raise ValueError("loader is required (it provides features and the reward set)")
    for name, value in (("loader", loader), ("val_loader", val_loader),
                        ("train_loader", train_loader)):
        check_reiterable(value, name)
    _check_materialized(model)
    device = _check_device(model, device)
    distributed.log_world()
    progress = bool(progress and distributed.is_main())
    # The accuracies are measured on val_loader, else on a held-out part of loader (split on the
    # whole loader, before any sharding: every rank gets the same split).
    user_loader, user_train_loader = loader, train_loader
    split = None
    if val_loader is not None:
        accuracy_set = VAL_LOADER
    else:
        split = split_holdout(loader, seed=seed, fraction=HOLDOUT_FRACTION)
        if split.held_out is None:
            accuracy_set, val_loader = SEARCH_SET, loader
            logger.info("loader has fewer than 2 batches: nothing can be held out, so the "
                        "accuracies are measured on the search data (pass val_loader= for "
                        "independent ones)")
        else:
            accuracy_set = HELD_OUT
            loader, val_loader = split.search, split.held_out
            logger.info("no val_loader: holding out %d of the loader's images (split by %s) to "
                        "measure the accuracies on", split.held_out_images, split.by)
    if train_loader is None or train_loader is user_loader:
        train_loader = loader

    from gcnprune_fast import training
    from gcnprune_fast.space import PruningSpace, resolve_ignored_layers
    from gcnprune_fast.space.plans import structure_fingerprint

    # Modules of the user's model are mapped to names here, before the model is copied.
    ignored = None if ignored_layers is None else resolve_ignored_layers(model, ignored_layers)
    ft_path = None if checkpoint_dir is None else os.path.join(checkpoint_dir, FINETUNE_CHECKPOINT)
    ft_fingerprint = _plain({
        "kind": "prune-finetune", "method": method, "options": dataclasses.asdict(options),
        "flops_budget": flops, "params_budget": params, "prune_seed": seed,
        "original_model": structure_fingerprint(model), "round_to": round_to,
        "min_channels": min_channels, "ignored_layers": None if ignored is None else sorted(ignored),
        "distill": bool(distill), "finetune_lr": finetune_lr, "bn_batches": bn_batches,
        "finetune_epochs": finetune_epochs, "holdout": split is not None and split.by is not None,
        **({} if reconstruct is None else {"reconstruct": reconstruct,
                                           "reconstruct_images": reconstruct_images}),
        **({} if latency is None else {"latency_budget": latency, "latency_batch": latency_batch,
                                       "latency_device": str(latency_device or "cpu")})})
    resume_finetune = bool(resume and finetune_epochs > 0 and os.path.isfile(ft_path))
    if resume_finetune:
        _check_finetune_checkpoint(ft_path, ft_fingerprint)
    if resume and not spec.supports_resume:
        logger.info("resume: method %r keeps no search checkpoint; rerunning its search "
                    "(deterministic for seed %d), then resuming the fine-tuning from %s",
                    method, seed, ft_path)

    def data(which):  # the loader drawing its shuffling from a fresh generator of this call
        if isinstance(which, BatchSubset):
            return which.map_loader(lambda inner: training.with_generator(inner, _generator(seed)))
        return training.with_generator(which, _generator(seed))

    with training.preserved_global_rng():
        x0, y0 = _first_batch(data(user_loader), "loader")
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
        latency_model = None
        if latency is not None:
            from gcnprune_fast.latency import build_latency_model

            # under torch.distributed rank 0 measures and every rank uses its table (one budget)
            if distributed.is_main():
                latency_model = build_latency_model(
                    space, device=latency_device or "cpu", batch=latency_batch,
                    threads=latency_threads, timer=latency_timer, cache_dir=latency_cache_dir,
                    progress=progress)
            latency_model = distributed.broadcast_object(latency_model)
        budget = Budget.from_ratios(space, flops, params, latency, latency_model)
        check_budget_reachable(space, budget)
        num_classes = int(_check_finite_activations(space, example_inputs).shape[1])
        check_labels(y0, num_classes, "loader")
        if finetune_epochs > 0 and user_train_loader is not None \
                and user_train_loader is not user_loader:
            check_labels(_first_batch(data(train_loader), "train_loader")[1], num_classes,
                         "train_loader")

        acc_before = training.evaluate(work, data(val_loader), device=device,
                                       max_batches=eval_batches)
        # the method's selection data: none when it would be the search data itself
        selection = None if val_loader is loader else data(val_loader)
        ctx = SearchContext(space=space, budget=budget, loader=data(loader), device=device,
                            seed=seed, val_loader=selection,
                            progress=progress, checkpoint_dir=checkpoint_dir,
                            resume=bool(resume and spec.supports_resume), options=options,
                            reconstruct=reconstruct, reconstruct_images=reconstruct_images)
        t0 = time.perf_counter()
        result = spec.run(ctx)
        search_time = result.info.get("search_time_s", time.perf_counter() - t0)
        masks = [m.to(torch.bool).cpu() for m in result.masks]
        # every rank prunes rank 0's masks (replicated searches could differ on GPUs, where
        # kernels need not be deterministic); the identity without a process group
        masks = distributed.broadcast_object(masks)
        space.validate_masks(masks)
        flops_after, params_after = space.cost(masks)
        kept_counts = torch.tensor([int(m.sum()) for m in masks], dtype=torch.long)
        if not bool(budget.feasible_counts(space, kept_counts)):
            raise RuntimeError(f"internal error: method {method!r} returned masks over the budget "
                               f"(flops {flops_after}/{budget.max_flops:.0f}, params "
                               f"{params_after}/{budget.max_params:.0f}"
                               + ("" if latency is None else
                                  f", latency {float(budget.latency_from_counts(kept_counts)):.3g}"
                                  f"/{budget.max_latency:.3g} s") + ")")
        plan = space.plan(masks)

        reconstruct_time = None
        if reconstruct is None:
            compact = space.prune(masks).to(device).eval()
        else:
            t0 = time.perf_counter()
            compact = space_reconstruct(space, masks, reconstruction_batches(
                data(train_loader), reconstruct_images, device), layers=reconstruct,
                seed=seed).to(device).eval()
            reconstruct_time = time.perf_counter() - t0
            logger.info("reconstruct=%s: refit in %.1f s on %d images", reconstruct,
                        reconstruct_time, reconstruct_images)
        cost_check = _measure_cost(compact, example_inputs, int(flops_after), int(params_after))
        bn_reestimated = True
        if reconstruct is None:
            training.recalibrate_bn(compact, data(train_loader),
                                    num_batches=bn_batches, device=device)
            acc_pruned = training.evaluate(compact, data(val_loader), device=device,
                                           max_batches=eval_batches)
        else:  # the refit reproduces the original statistics; re-estimating may still be better
            compact, acc_pruned, bn_reestimated = _refit_statistics(
                compact, data(train_loader), data(val_loader), bn_batches, eval_batches, device)
        acc_finetuned = None
        if finetune_epochs > 0:
            training.train(compact, train_loader, finetune_epochs, lr=finetune_lr, device=device,
                           teacher=work if distill else None, progress=progress,
                           checkpoint_path=ft_path, resume=resume_finetune,
                           fingerprint={**ft_fingerprint, "plan": _plan_digest(plan)}, seed=seed,
                           accumulate_steps=accumulate_steps, amp=amp, sync_bn=sync_bn,
                           channels_last=channels_last)
            compact.eval()
            acc_finetuned = training.evaluate(compact, data(val_loader),
                                              device=device, max_batches=eval_batches)

    report: Dict[str, Any] = {
        "method": method,
        "allocation": result.info.get("allocation", method),
        "seed": seed,
        "flops_budget": flops,
        "budget_defaulted": budget_defaulted,
        "params_budget": params,
        "round_to": round_to,
        "flops_before": int(space.base_flops),
        "flops_after": int(flops_after),
        "params_before": int(space.base_params),
        "params_after": int(params_after),
        "flops_ratio": float(flops_after) / max(float(space.base_flops), 1.0),
        "params_ratio": float(params_after) / max(float(space.base_params), 1.0),
        **cost_check,
        "acc_before": acc_before,
        "acc_pruned": acc_pruned,
        "acc_finetuned": acc_finetuned,
        "accuracy_set": accuracy_set,
        "held_out_images": (split.images_in(eval_batches) if accuracy_set == HELD_OUT else None),
        "finetune_epochs": finetune_epochs,
        "distill": bool(distill),
        "reconstruct": reconstruct,
        "reconstruct_time_s": reconstruct_time,
        "bn_reestimated": bn_reestimated,
        "resumed": bool(resume),
        "widths": [{"name": g.name, "before": int(g.size), "after": int(m.sum())}
                   for g, m in zip(space.groups, masks)],
        "search_time_s": float(search_time),
        "episodes": int(result.info.get("episodes", 0)),
        "reward_curve": list(result.info.get("reward_curve", [])),
        "greedy_curve": list(result.info.get("greedy_curve", [])),
    }
    if latency_model is not None:
        from gcnprune_fast.latency import latency_report

        report["latency_budget"] = latency
        report.update(latency_report(latency_model, compact, kept_counts,
                                     flops_ratio=report["flops_ratio"],
                                     macs_after=float(flops_after) * latency_batch))
    for k, v in result.info.items():
        report.setdefault(k, v)
    return PruneResult(model=compact, plan=plan, report=report, masks=masks,
                       example_inputs=example_inputs.detach().cpu())
