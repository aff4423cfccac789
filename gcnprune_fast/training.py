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
def evaluate(model: nn.Module, loader: Iterable, device=None, max_batches: Optional[int] = None) -> float:
    """Top-1 accuracy of ``model`` on ``loader``.

    Runs in eval mode without gradients and restores every module's previous train/eval mode.

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
    saved = _saved_modes(model)
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(loader):
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
    finally:
        _restore_modes(saved)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int = 20, device=None) -> nn.Module:
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

    Returns:
        ``model`` (for chaining).
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not bns:
        return model
    dev = model_device(model, device)
    saved = _saved_modes(model)
    momenta = [(m, m.momentum) for m in bns]
    seen = 0
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i, batch in enumerate(loader):
            if i >= num_batches:
                break
            x, _ = split_batch(batch, "recalibrate_bn: loader")
            model(x.to(dev, non_blocking=True))
            seen += 1
    finally:
        for m, mom in momenta:
            m.momentum = mom
        _restore_modes(saved)
    if seen == 0:
        raise ValueError("recalibrate_bn: the loader yielded no batches")
    return model


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


def _cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
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
          max_steps_per_epoch: Optional[int] = None) -> dict:
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
        max_steps_per_epoch: cut every epoch after this many batches (short fine-tuning budgets).

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
    history = {"loss": [], "acc": [], "val_acc": [], "lr": [], "epoch_time_s": [], "epochs": 0,
               "resumed_from": None}
    if epochs == 0:
        return history
    check_reiterable(loader, "train: loader")
    try:
        steps_per_epoch = len(loader)
    except TypeError:
        raise TypeError("train: the loader must have len() (a DataLoader or TensorBatchLoader)") from None
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError("train: the loader is empty (0 batches)")
    total_steps = steps_per_epoch * epochs
    dev = model_device(model, device)
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

    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=momentum > 0)
    generator = torch.Generator().manual_seed(seed)
    loader = with_generator(loader, generator)
    start_epoch = 0
    teacher_modes = None
    bar = None
    with _seeded_global_rng(seed, dev):
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator_state"])
            torch.set_rng_state(saved["rng_state"])
            if dev.type == "cuda" and saved.get("cuda_rng_state") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng_state"], dev)
            history = saved["history"]
            start_epoch = history["epochs"]
            history["resumed_from"] = start_epoch
        if teacher is not None:  # used under no_grad in eval mode; its modes are restored at the end
            teacher_modes = _saved_modes(teacher)
            teacher.to(dev).eval()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc="train",
                       unit="step", dynamic_ncols=True, leave=False)
        try:
            for epoch in range(start_epoch, epochs):
                _train_epoch(model, loader, opt, history, epoch, epochs, steps_per_epoch, lr,
                             total_steps, dev, teacher, kd_alpha, kd_temperature, val_loader, bar,
                             progress)
                if checkpoint is not None:
                    checkpoint.save(model=model.state_dict(), optimizer=opt.state_dict(),
                                    generator_state=generator.get_state(),
                                    rng_state=torch.get_rng_state(),
                                    cuda_rng_state=torch.cuda.get_rng_state(dev)
                                    if dev.type == "cuda" else None,
                                    history=history)
        finally:
            if bar is not None:
                bar.close()
            if teacher_modes is not None:
                _restore_modes(teacher_modes)
    model.eval()
    return history


def _train_epoch(model, loader, opt, history, epoch, epochs, steps_per_epoch, lr, total_steps, dev,
                 teacher, kd_alpha, kd_temperature, val_loader, bar, progress) -> None:
    t0 = time.perf_counter()
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    step_in_epoch = 0
    for batch in loader:
        if step_in_epoch >= steps_per_epoch:
            break
        x, y = split_batch(batch, "train: loader")
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        step = epoch * steps_per_epoch + step_in_epoch
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(lr, step, total_steps)
        logits = model(x)
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
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
    if seen == 0:
        raise ValueError(f"train: the loader yielded no batches in epoch {epoch + 1}")
    history["loss"].append(loss_sum / seen)
    history["acc"].append(correct / seen)
    history["lr"].append(opt.param_groups[0]["lr"])
    if val_loader is not None:
        history["val_acc"].append(evaluate(model, val_loader, device=dev))
    history["epoch_time_s"].append(time.perf_counter() - t0)
    history["epochs"] = epoch + 1
    if progress:
        msg = (f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f} "
               f"train acc {history['acc'][-1]:.4f}")
        if val_loader is not None:
            msg += f" val acc {history['val_acc'][-1]:.4f}"
        msg += f" ({history['epoch_time_s'][-1]:.1f} s)"
        (bar.write if bar is not None else print)(msg)


__all__ = ["evaluate", "recalibrate_bn", "train", "distillation_loss", "with_generator",
           "preserved_global_rng", "train_fingerprint", "GLOBAL_RNG_LOCK"]
