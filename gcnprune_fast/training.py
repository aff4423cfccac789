"""Training, evaluation and BatchNorm re-estimation for classification CNNs.

Loaders yield ``(inputs [B, C, H, W], targets [B] int64)`` tuples or lists. ``device=None``
everywhere means "the device of the model's first parameter" (CPU for a parameterless model).

Randomness is per call: :func:`train` draws shuffling and augmentation from its own
``torch.Generator`` (see :func:`with_generator`), and only what cannot take a generator (dropout,
custom loaders) uses torch's global RNG, forked, seeded and held under one process-wide lock
(:data:`GLOBAL_RNG_LOCK`) so that concurrent seeded runs in threads equal sequential ones.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import threading
import time
from typing import Any, Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast import distributed as _dist
from gcnprune_fast.data import TensorBatchLoader, check_labels, check_reiterable, split_batch
from gcnprune_fast.utils import model_device

GLOBAL_RNG_LOCK = threading.RLock()
"""Held while torch's global RNG is forked, seeded and used (fine-tuning with dropout) and while
:func:`preserved_global_rng` saves or restores it: threads never interleave draws there."""

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def _saved_modes(model: nn.Module):
    return [(m, m.training) for m in model.modules()]


def _restore_modes(saved):
    for m, mode in saved:
        m.training = mode


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device=None, max_batches: Optional[int] = None,
             distributed: Optional[bool] = None) -> float:
    """Top-1 accuracy of ``model`` on ``loader``.

    Runs in eval mode without gradients and restores every module's previous train/eval mode.

    Distributed (a process group of N > 1 processes is initialized, and ``distributed`` is not
    False): a collective -- call it on every rank. Rank r evaluates batches r, r+N, ... of the
    loader (``distributed.shard``; ``max_batches`` counts batches of the whole loader) and the
    counts are all-reduced: every rank returns the single-process accuracy.

    Args:
        model: classifier mapping ``[B, C, H, W]`` to logits ``[B, num_classes]``.
        loader: yields ``(inputs, targets)``.
        device: where to run (default: the model's device); inputs are moved there.
        max_batches: evaluate only the first ``max_batches`` batches (None: all).

    Returns:
        accuracy in ``[0, 1]`` (float).

    Raises:
        ValueError: the loader (or its first ``max_batches``) yields no samples, or a label is
            outside ``[0, num_classes)`` (the value and the range are named).
    """
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    dev = model_device(model, device)
    w = _dist.active(distributed)
    if w.distributed:
        loader = _dist.shard(loader)
    saved = _saved_modes(model)
    model.eval()
    correct = total = 0
    error = None
    try:
        for i, batch in enumerate(loader):
            if w.distributed:
                i = _dist.global_batch_index(i, w)
            if max_batches is not None and i >= max_batches:
                break
            x, y = split_batch(batch, "evaluate: loader")
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(x)
            if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                raise ValueError(f"evaluate: model output must be [B, num_classes] logits with B = "
                                 f"{y.shape[0]}, got {tuple(logits.shape)}")
            check_labels(y, logits.shape[1], "evaluate: loader")
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
    except Exception as e:
        if not w.distributed:
            raise
        error = e  # raised by all_reduce_checked, after telling the other ranks
    finally:
        _restore_modes(saved)
    if w.distributed:
        correct, total = _dist.all_reduce_checked([correct, total], error, "evaluate")
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int = 20, device=None,
                   distributed: Optional[bool] = None) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/variance in place from ``num_batches`` batches.

    Running statistics are reset and accumulated as an exact cumulative average (``momentum=None``)
    with only the BatchNorm layers in train mode (dropout etc. stay in eval mode), without
    gradients. Momentum and all train/eval modes are restored afterwards. Useful after pruning,
    when the remaining channels' input statistics have changed.

    Args:
        model: the network (modified in place).
        loader: yields ``(inputs, targets)``; targets are ignored.
        num_batches: batches to use (>= 1; fewer if the loader is shorter).
        device: where to run (default: the model's device).
        distributed: None (auto) or True: with an initialized process group of N > 1 processes
            this is a collective -- rank r forwards batches r, r+N, ... of the first
            ``num_batches`` and every BatchNorm's statistics (the cumulative averages weighted
            by their batch counts) are all-reduced, so every rank ends with the single-process
            statistics. False: this rank alone.

    Returns:
        ``model`` (for chaining).
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not bns:
        return model
    dev = model_device(model, device)
    w = _dist.active(distributed)
    if w.distributed:
        loader = _dist.shard(loader)
    saved = _saved_modes(model)
    momenta = [(m, m.momentum) for m in bns]
    seen = 0
    error = None
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i, batch in enumerate(loader):
            if w.distributed:
                i = _dist.global_batch_index(i, w)
            if i >= num_batches:
                break
            x, _ = split_batch(batch, "recalibrate_bn: loader")
            model(x.to(dev, non_blocking=True))
            seen += 1
    except Exception as e:
        if not w.distributed:
            raise
        error = e
    finally:
        for m, mom in momenta:
            m.momentum = mom
        _restore_modes(saved)
    if w.distributed:
        seen = int(_dist.all_reduce_checked([seen], error, "recalibrate_bn")[0])
        if seen:
            _merge_bn_statistics(bns)
    if seen == 0:
        raise ValueError("recalibrate_bn: the loader yielded no batches")
    return model


@torch.no_grad()
def _merge_bn_statistics(bns) -> None:
    """All-reduce the BatchNorms' cumulative averages (momentum=None) weighted by their batch
    counts: afterwards every rank holds the average over all ranks' batches."""
    parts = []
    for m in bns:
        k = float(m.num_batches_tracked)
        parts += [m.running_mean.double().reshape(-1) * k, m.running_var.double().reshape(-1) * k,
                  torch.tensor([k], dtype=torch.float64, device=m.running_mean.device)]
    flat = _dist.all_reduce(torch.cat(parts))
    pos = 0
    for m in bns:
        c = m.running_mean.numel()
        mean, var, k = flat[pos:pos + c], flat[pos + c:pos + 2 * c], float(flat[pos + 2 * c])
        pos += 2 * c + 1
        if k > 0:
            m.running_mean.copy_((mean / k).view_as(m.running_mean))
            m.running_var.copy_((var / k).view_as(m.running_var))
        m.num_batches_tracked.fill_(int(round(k)))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float = 0.5, temperature: float = 4.0) -> torch.Tensor:
    """``(1 - alpha) * CE(student, targets) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Args:
        student_logits, teacher_logits: ``[B, K]``.
        targets: ``[B]`` int64.
        alpha: weight of the distillation term in [0, 1].
        temperature: softmax temperature T > 0.
    """
    ce = F.cross_entropy(student_logits, targets)
    if alpha == 0:
        return ce
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    return (1 - alpha) * ce + alpha * kl


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Half-cosine decay from ``base_lr`` at step 0 to 0 at ``total_steps``."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def with_generator(loader, generator: torch.Generator):
    """``loader`` drawing its shuffling and augmentation from ``generator`` instead of torch's
    global RNG. The user's loader is never modified:

    - a :class:`~gcnprune_fast.data.TensorBatchLoader` without its own generator: a shallow copy
      with ``generator``;
    - a ``torch.utils.data.DataLoader`` (the class itself, not a subclass) without its own
      generator: an equivalent DataLoader with ``generator`` (a default ``RandomSampler`` draws its
      order from it, and worker seeds come from it);
    - anything else (lists, loaders with their own generator, other classes): ``loader`` itself.
      A custom loader that draws from torch's global RNG is reproducible sequentially only if
      you seed it, and is not isolated between threads.
    """
    if isinstance(loader, TensorBatchLoader):
        if loader.generator is not None:
            return loader
        out = copy.copy(loader)
        out.generator = generator
        return out
    from torch.utils.data import DataLoader

    if type(loader) is DataLoader and loader.generator is None:
        return _rebuild_dataloader(loader, generator)
    return loader


def _rebuild_dataloader(dl, generator: torch.Generator):
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler

    kw = dict(num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
              timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
              multiprocessing_context=dl.multiprocessing_context, generator=generator,
              prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers,
              pin_memory_device=dl.pin_memory_device)
    if hasattr(dl, "in_order"):
        kw["in_order"] = dl.in_order
    if isinstance(dl.dataset, IterableDataset):
        return DataLoader(dl.dataset, batch_size=dl.batch_size, drop_last=dl.drop_last, **kw)
    sampler = dl.sampler
    if type(sampler) is RandomSampler and sampler.generator is None:
        sampler = RandomSampler(sampler.data_source, replacement=sampler.replacement,
                                num_samples=sampler._num_samples, generator=generator)
    batches = dl.batch_sampler
    if batches is None:  # no automatic batching
        return DataLoader(dl.dataset, batch_size=None, sampler=sampler, **kw)
    if type(batches) is BatchSampler and batches.sampler is dl.sampler:
        return DataLoader(dl.dataset, batch_size=dl.batch_size, drop_last=dl.drop_last,
                          sampler=sampler, **kw)
    return DataLoader(dl.dataset, batch_sampler=batches, **kw)


@contextlib.contextmanager
def preserved_global_rng():
    """Leave torch's global CPU RNG state as it was on entry (saved and restored under
    :data:`GLOBAL_RNG_LOCK`, so a restore never lands inside another thread's seeded section)."""
    with GLOBAL_RNG_LOCK:
        state = torch.get_rng_state()
    try:
        yield
    finally:
        with GLOBAL_RNG_LOCK:
            torch.set_rng_state(state)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    """Hold :data:`GLOBAL_RNG_LOCK`, fork the global RNG (CPU and ``device``'s CUDA generator)
    and seed it: dropout and loaders without a generator draw reproducibly inside."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _plain(obj):
    """JSON round trip: tuples become lists, so fingerprints compare equal after a reload."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def train_fingerprint(model: nn.Module, *, epochs: int, steps_per_epoch: int, lr: float,
                      momentum: float, weight_decay: float, kd_alpha: float, kd_temperature: float,
                      teacher: bool, seed: int) -> Dict[str, Any]:
    """What a training checkpoint must match to be resumed: the settings and the model's
    parameter names and shapes."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}|{tuple(t.shape)}\n".encode())
    return _plain({"kind": "train", "epochs": epochs, "steps_per_epoch": steps_per_epoch, "lr": lr,
                   "momentum": momentum, "weight_decay": weight_decay,
                   "kd_alpha": kd_alpha if teacher else None,
                   "kd_temperature": kd_temperature if teacher else None, "teacher": teacher,
                   "seed": seed, "model": h.hexdigest()[:16]})


def train(model: nn.Module, loader: Iterable, epochs: int, *, lr: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 5e-4, device=None, teacher: Optional[nn.Module] = None,
          kd_alpha: float = 0.5, kd_temperature: float = 4.0, val_loader: Optional[Iterable] = None,
          progress: bool = True, checkpoint_path: Optional[str] = None, resume: bool = False,
          fingerprint: Optional[Dict[str, Any]] = None, seed: int = 0,
          max_steps_per_epoch: Optional[int] = None, accumulate_steps: int = 1,
          amp: Optional[str] = None, sync_bn: bool = False,
          distributed: Optional[bool] = None, channels_last: Optional[bool] = None) -> dict:
    """Train ``model`` in place with SGD (Nesterov) and a cosine learning rate over all steps.

    Args:
        model: the classifier (modified in place; left in eval mode at the end).
        loader: training batches ``(inputs, targets)``; must have ``len()`` and be re-iterable.
        epochs: number of epochs (>= 0; 0 returns an empty history).
        lr, momentum, weight_decay: SGD settings (weight decay on all parameters).
        device: where to train (default: the model's device).
        teacher: optional model for knowledge distillation, run in eval mode without gradients
            (moved to ``device``; its train/eval modes are restored at the end); the loss is
            :func:`distillation_loss` with ``kd_alpha`` and ``kd_temperature``.
        val_loader: evaluated after every epoch (``val_acc`` in the history).
        progress: show a tqdm bar.
        checkpoint_path: after every epoch, model + optimizer + RNG states + history are saved
            there atomically, with a fingerprint of the work (:func:`train_fingerprint` plus
            ``fingerprint``), as a ``methods.search.SearchCheckpoint``.
        resume: continue from ``checkpoint_path`` after its last completed epoch (the result equals
            an uninterrupted run). The checkpoint is loaded with ``weights_only=True`` and only
            when its fingerprint matches; without ``resume`` an existing file is ignored and
            overwritten.
        fingerprint: extra plain values the checkpoint must match (e.g. the pruning plan).
        seed: seeds this call's RNG: shuffling and augmentation come from a ``torch.Generator``
            (:func:`with_generator`), dropout from torch's global RNG, forked and seeded under
            :data:`GLOBAL_RNG_LOCK` (the caller's global RNG state is left as it was).
        max_steps_per_epoch: cut every epoch after this many batches (short fine-tuning budgets;
            distributed: steps of N batches).
        accumulate_steps: sum the gradients of this many consecutive batches before each
            optimizer step (a k times larger effective batch; the learning-rate schedule counts
            optimizer steps). Under DDP the gradient all-reduce runs once per optimizer step.
        amp: mixed precision: ``"bf16"`` (CUDA or CPU autocast) or ``"fp16"`` (CUDA only, with a
            gradient scaler); None = full precision.
        sync_bn: under DDP, BatchNorm statistics over the global batch (``nn.SyncBatchNorm``, CUDA
            only; the model's BatchNorm modules are restored afterwards). Ignored on one process.
        channels_last: train in the channels_last memory format (the model's 4-D weights and the
            4-D input batches; the weights are back in the default format at the end, values
            untouched by the switch). None (default): on the CPU when every convolution's output
            width is a multiple of 16 (:func:`channels_last_pays`), else off. Only the order of
            floating-point operations changes, and dropout on 4-D activations, whose mask is
            drawn in memory order, makes another draw of the same distribution.
        distributed: None (auto) or True: with an initialized process group of N > 1 processes,
            a collective -- the model is trained with ``DistributedDataParallel``: rank r takes
            batches r, r+N, ... of every epoch's order (drawn from the same seeded generator on
            every rank, so epochs are reshuffled without ``set_epoch``; a loader with a
            ``DistributedSampler`` is used as it is, with ``set_epoch(epoch)``), every rank does
            ``len(loader) // N`` steps per epoch, gradients are averaged, and a step equals a
            single-process step over the same N batches (exactly without BatchNorm, or with
            ``sync_bn``). History values are all-reduced; rank 0 writes the checkpoint, every
            rank reads it on resume. False: this rank alone.

    Returns:
        history dict: ``loss`` (mean training loss per epoch), ``acc`` (training top-1 per epoch,
        on augmented batches), ``val_acc`` (per epoch, or empty without ``val_loader``), ``lr``
        (at the end of each epoch), ``epoch_time_s``, ``epochs`` (completed) and ``resumed_from``.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
        FileNotFoundError: ``resume`` without a checkpoint at ``checkpoint_path``.
        ValueError: bad arguments, an empty loader, a label outside the model's classes, or a
            checkpoint written for different work (the differing settings are named).
        TypeError: a one-shot loader (a generator) or one without ``len()``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    for arg, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{arg} must be a finite number >= 0, got {v!r}")
    if not 0.0 <= kd_alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {kd_alpha!r}")
    if not kd_temperature > 0:
        raise ValueError(f"kd_temperature must be > 0, got {kd_temperature!r}")
    if max_steps_per_epoch is not None and (not isinstance(max_steps_per_epoch, int)
                                            or max_steps_per_epoch < 1):
        raise ValueError(f"max_steps_per_epoch must be a positive int or None, got {max_steps_per_epoch!r}")
    if resume and not checkpoint_path:
        raise ValueError("train: resume=True needs checkpoint_path")
    if isinstance(accumulate_steps, bool) or not isinstance(accumulate_steps, int) \
            or accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be a positive int, got {accumulate_steps!r}")
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if channels_last not in (None, True, False):
        raise ValueError(f"channels_last must be None (auto), True or False, got "
                         f"{channels_last!r}")
    w = _dist.active(distributed)
    progress = bool(progress and w.main)
    history = {"loss": [], "acc": [], "val_acc": [], "lr": [], "epoch_time_s": [], "epochs": 0,
               "resumed_from": None}
    if epochs == 0:
        return history
    check_reiterable(loader, "train: loader")
    try:
        steps_per_epoch = len(loader)
    except TypeError:
        raise TypeError("train: the loader must have len() (a DataLoader or TensorBatchLoader)") from None
    if w.distributed and not _dist.is_sharded(loader):
        if 0 < steps_per_epoch < w.size:
            raise ValueError(f"train: the loader has {steps_per_epoch} batch(es), fewer than the "
                             f"{w.size} processes")
        steps_per_epoch //= w.size
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError("train: the loader is empty (0 batches)")
    total_steps = steps_per_epoch * epochs
    dev = model_device(model, device)
    if amp == "fp16" and dev.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device (use amp='bf16' on the CPU)")
    if sync_bn and w.distributed and dev.type != "cuda":
        raise ValueError("sync_bn=True needs CUDA devices (torch's SyncBatchNorm has no CPU "
                         "kernel); train without it on the CPU")
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters")

    checkpoint = saved = None
    if checkpoint_path:
        from gcnprune_fast.methods.search.checkpoint import SearchCheckpoint

        fp = train_fingerprint(model, epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr,
                               momentum=momentum, weight_decay=weight_decay, kd_alpha=kd_alpha,
                               kd_temperature=kd_temperature, teacher=teacher is not None, seed=seed)
        fp.update(_plain(fingerprint or {}))
        if w.distributed:  # single-process fingerprints stay as they were
            fp.update(world_size=w.size, accumulate_steps=accumulate_steps)
        elif accumulate_steps != 1:
            fp.update(accumulate_steps=accumulate_steps)
        folder = os.path.dirname(os.path.abspath(checkpoint_path))
        checkpoint = SearchCheckpoint(folder, os.path.basename(checkpoint_path), fp)
        if resume:
            if not os.path.isfile(checkpoint.path):
                raise FileNotFoundError(f"train: resume=True but there is no checkpoint at "
                                        f"{checkpoint_path}; run without resume")
            try:
                saved = checkpoint.load(True)
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(f"train: cannot read the checkpoint {checkpoint_path} ({first}); "
                                 f"delete it or run without resume") from e

    if channels_last is None:
        channels_last = dev.type == "cpu" and channels_last_pays(model)
    # before the optimizer and the resumed state: both then hold tensors of the same strides
    channels_last = channels_last and _to_channels_last(model)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=momentum > 0)
    generator = torch.Generator().manual_seed(seed)
    loader = with_generator(loader, generator)
    if w.distributed:
        loader = _dist.shard(loader, even=True)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    start_epoch = 0
    teacher_modes = None
    bar = None
    net, restore_bn = model, []
    # dropout: rank r draws from seed + r (rank 0 as a single process)
    with _seeded_global_rng(seed + w.rank, dev):
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator_state"])
            torch.set_rng_state(saved["rng_state"])
            if dev.type == "cuda" and saved.get("cuda_rng_state") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng_state"], dev)
            ranks = saved.get("rank_rng_states")
            if w.distributed and ranks is not None and len(ranks) == w.size:
                torch.set_rng_state(ranks[w.rank][0])
                if dev.type == "cuda" and ranks[w.rank][1] is not None:
                    torch.cuda.set_rng_state(ranks[w.rank][1], dev)
            if scaler is not None and saved.get("scaler") is not None:
                scaler.load_state_dict(saved["scaler"])
            history = saved["history"]
            start_epoch = history["epochs"]
            history["resumed_from"] = start_epoch
        if teacher is not None:  # used under no_grad in eval mode; its modes are restored at the end
            teacher_modes = _saved_modes(teacher)
            teacher.to(dev).eval()
        if w.distributed:
            net, restore_bn = _ddp(model, dev, sync_bn)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc="train",
                       unit="step", dynamic_ncols=True, leave=False)
        try:
            for epoch in range(start_epoch, epochs):
                _set_epoch(loader, epoch)
                _train_epoch(model, loader, opt, history, epoch, epochs, steps_per_epoch, lr,
                             total_steps, dev, teacher, kd_alpha, kd_temperature, val_loader, bar,
                             progress, net=net, w=w, accumulate=accumulate_steps, amp=amp,
                             scaler=scaler, channels_last=channels_last)
                if checkpoint is not None:
                    extra = {}
                    if w.distributed:  # every rank's dropout RNG; rank 0 writes
                        extra["rank_rng_states"] = _dist.all_gather_object(
                            (torch.get_rng_state(),
                             torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None))
                    if scaler is not None:
                        extra["scaler"] = scaler.state_dict()
                    checkpoint.save(model=model.state_dict(), optimizer=opt.state_dict(),
                                    generator_state=generator.get_state(),
                                    rng_state=torch.get_rng_state(),
                                    cuda_rng_state=torch.cuda.get_rng_state(dev)
                                    if dev.type == "cuda" else None,
                                    history=history, **extra)
        finally:
            if bar is not None:
                bar.close()
            if teacher_modes is not None:
                _restore_modes(teacher_modes)
            for parent, name, bn in restore_bn:
                setattr(parent, name, bn)
            del net
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def channels_last_pays(model: nn.Module) -> bool:
    """Whether training ``model`` on the CPU is expected to run faster in channels_last: it has
    convolutions and each one's output width is a multiple of 16.

    Measured with ``benchmarks/bench_channels_last.py`` (2 threads, batch 128, float32 and bf16
    autocast): 1.18-1.40x faster for ResNet-20 and ResNet-56 (widths 16/32/64) and 1.25x for a
    ResNet-20 pruned with ``round_to=16``, but 0.53-1.01x for the same model pruned with
    ``round_to`` 1, 4 or 8 (slowest under bf16): the widths a fine-tune after pruning usually
    meets. (MobileNetV2, with 24-wide layers, gained 1.22x; the rule is conservative.)
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.out_channels % 16 == 0 for m in convs)


def _to_channels_last(model: nn.Module) -> bool:
    """Switch ``model``'s 4-D weights to channels_last; False (nothing done) without any."""
    if not any(p.dim() == 4 for p in model.parameters()):
        return False
    model.to(memory_format=torch.channels_last)
    return True


@torch.no_grad()
def _average_buffers(model: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks: each
    rank's last forwards updated them from its own batches; afterwards every rank holds the same
    model."""
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = _dist.all_reduce(torch.cat([b.double().reshape(-1) for b in bufs]))
    flat /= _dist.world().size
    pos = 0
    for b in bufs:
        b.copy_(flat[pos:pos + b.numel()].view_as(b))
        pos += b.numel()


def _set_epoch(loader, epoch: int) -> None:
    """``set_epoch`` on a user's DistributedSampler (its per-epoch shuffling)."""
    for sampler in (getattr(loader, "sampler", None),
                    getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return


def _ddp(model: nn.Module, dev: torch.device, sync_bn: bool):
    """``DistributedDataParallel`` over ``model`` (its parameters are the model's own, so training
    the wrapper trains ``model`` in place); with ``sync_bn`` the BatchNorm children are swapped
    for ``SyncBatchNorm`` modules sharing their parameters and buffers. Returns (the wrapper,
    [(parent, name, original BatchNorm)] to put back)."""
    from torch.nn.parallel import DistributedDataParallel

    restore = []
    if sync_bn:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _BN_TYPES) and not isinstance(child, nn.SyncBatchNorm):
                    setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                    restore.append((parent, name, child))
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids), restore


def _train_epoch(model, loader, opt, history, epoch, epochs, steps_per_epoch, lr, total_steps, dev,
                 teacher, kd_alpha, kd_temperature, val_loader, bar, progress, net=None,
                 w=_dist.SINGLE, accumulate=1, amp=None, scaler=None,
                 channels_last=False) -> None:
    t0 = time.perf_counter()
    net = model if net is None else net
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    step_in_epoch = 0
    # the cosine schedule counts optimizer steps (= batches without accumulation)
    opt_per_epoch = math.ceil(steps_per_epoch / accumulate)
    autocast = contextlib.nullcontext() if amp is None else torch.autocast(
        dev.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    for batch in loader:
        if step_in_epoch >= steps_per_epoch:
            break
        x, y = split_batch(batch, "train: loader")
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        micro = step_in_epoch % accumulate
        if micro == 0:
            step = epoch * opt_per_epoch + step_in_epoch // accumulate
            for group in opt.param_groups:
                group["lr"] = cosine_lr(lr, step, opt_per_epoch * epochs)
        with autocast:
            logits = net(x)
            if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                raise ValueError(f"train: model output must be [B, num_classes] logits with B = "
                                 f"{y.shape[0]}, got {tuple(logits.shape)}")
            check_labels(y, logits.shape[1], "train: loader")
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = distillation_loss(logits, t_logits, y, kd_alpha, kd_temperature)
            else:
                loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"train: the loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                f"{step_in_epoch + 1} (lr {opt.param_groups[0]['lr']:.4g}); lower the "
                f"learning rate or check the inputs for NaN/Inf")
        group_start = step_in_epoch - micro
        group_len = min(accumulate, steps_per_epoch - group_start)
        last = micro == group_len - 1
        if micro == 0:
            opt.zero_grad(set_to_none=True)
        scaled = loss if group_len == 1 else loss / group_len
        if scaler is not None:
            scaled = scaler.scale(scaled)
        # DDP all-reduces the gradients on the last batch of an accumulation group only
        with (net.no_sync() if w.distributed and not last else contextlib.nullcontext()):
            scaled.backward()
        if last:
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        n = y.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += n
        step_in_epoch += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss_sum / seen:.3f}",
                            acc=f"{correct / seen:.3f}")
    if w.distributed:  # the epoch's loss and accuracy over every rank's samples
        loss_sum, correct, seen = _dist.all_reduce_numbers([loss_sum, correct, seen])
        correct, seen = int(correct), int(seen)
        _average_buffers(model)
    if seen == 0:
        raise ValueError(f"train: the loader yielded no batches in epoch {epoch + 1}")
    history["loss"].append(loss_sum / seen)
    history["acc"].append(correct / seen)
    history["lr"].append(opt.param_groups[0]["lr"])
    if val_loader is not None:
        history["val_acc"].append(evaluate(model, val_loader, device=dev,
                                           distributed=w.distributed))
    history["epoch_time_s"].append(time.perf_counter() - t0)
    history["epochs"] = epoch + 1
    if progress:
        msg = (f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f} "
               f"train acc {history['acc'][-1]:.4f}")
        if val_loader is not None:
            msg += f" val acc {history['val_acc'][-1]:.4f}"
        msg += f" ({history['epoch_time_s'][-1]:.1f} s)"
        (bar.write if bar is not None else print)(msg)


__all__ = ["evaluate", "recalibrate_bn", "train", "channels_last_pays", "distillation_loss",
           "with_generator", "cosine_lr", "preserved_global_rng", "train_fingerprint",
           "GLOBAL_RNG_LOCK"]
