"""Training, evaluation and BatchNorm re-estimation for classification CNNs.

Loaders yield ``(inputs [B, C, H, W], targets [B] int64)`` tuples or lists. ``device=None``
everywhere means "the device of the model's first parameter" (CPU for a parameterless model).
"""
from __future__ import annotations

import math
import os
import time
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast.data import split_batch
from gcnprune_fast.utils import model_device

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
        ValueError: the loader (or its first ``max_batches``) yields no samples.
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


def train(model: nn.Module, loader: Iterable, epochs: int, *, lr: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 5e-4, device=None, teacher: Optional[nn.Module] = None,
          kd_alpha: float = 0.5, kd_temperature: float = 4.0, val_loader: Optional[Iterable] = None,
          progress: bool = True, checkpoint_path: Optional[str] = None, seed: int = 0,
          max_steps_per_epoch: Optional[int] = None) -> dict:
    """Train ``model`` in place with SGD (Nesterov) and a cosine learning rate over all steps.

    Args:
        model: the classifier (modified in place; left in eval mode at the end).
        loader: training batches ``(inputs, targets)``; must have ``len()``.
        epochs: number of epochs (>= 0; 0 returns an empty history).
        lr, momentum, weight_decay: SGD settings (weight decay on all parameters).
        device: where to train (default: the model's device).
        teacher: optional model for knowledge distillation, run in eval mode without gradients
            (moved to ``device``; its train/eval modes are restored at the end); the loss is
            :func:`distillation_loss` with ``kd_alpha`` and ``kd_temperature``.
        val_loader: evaluated after every epoch (``val_acc`` in the history).
        progress: show a tqdm bar.
        checkpoint_path: after every epoch, model + optimizer + RNG state + history are saved there
            (atomically); if the file exists at the start, training resumes after its last epoch
            and gives the same result as an uninterrupted run (for loaders that draw their
            randomness from torch's global RNG).
        seed: seeds torch's global RNG at the start (shuffling, augmentation, dropout).
        max_steps_per_epoch: cut every epoch after this many batches (short fine-tuning budgets).

    Returns:
        history dict: ``loss`` (mean training loss per epoch), ``acc`` (training top-1 per epoch,
        on augmented batches), ``val_acc`` (per epoch, or empty without ``val_loader``), ``lr``
        (at the end of each epoch), ``epoch_time_s``, ``epochs`` (completed) and ``resumed_from``.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
        ValueError: bad arguments or an empty loader.
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
    history = {"loss": [], "acc": [], "val_acc": [], "lr": [], "epoch_time_s": [], "epochs": 0,
               "resumed_from": None}
    if epochs == 0:
        return history
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
    teacher_modes = None
    if teacher is not None:  # used under no_grad in eval mode; its modes are restored at the end
        teacher_modes = _saved_modes(teacher)
        teacher.to(dev).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters")
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=momentum > 0)
    torch.manual_seed(seed)
    start_epoch = 0
    if checkpoint_path and os.path.isfile(checkpoint_path):
        ckpt = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        if ckpt.get("total_epochs") != epochs or ckpt.get("steps_per_epoch") != steps_per_epoch:
            raise ValueError(f"train: checkpoint {checkpoint_path} was written for {ckpt.get('total_epochs')} "
                             f"epochs x {ckpt.get('steps_per_epoch')} steps, this run has {epochs} x "
                             f"{steps_per_epoch}; delete it or pass another checkpoint_path")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_state"])
        history = ckpt["history"]
        start_epoch = history["epochs"]
        history["resumed_from"] = start_epoch

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc="train",
                   unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start_epoch, epochs):
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
            if checkpoint_path:
                _save_checkpoint(checkpoint_path, model, opt, history, epochs, steps_per_epoch)
    finally:
        if bar is not None:
            bar.close()
        if teacher_modes is not None:
            _restore_modes(teacher_modes)
    model.eval()
    return history


def _save_checkpoint(path, model, opt, history, epochs, steps_per_epoch):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng_state": torch.get_rng_state(), "history": history, "total_epochs": epochs,
                "steps_per_epoch": steps_per_epoch}, tmp)
    os.replace(tmp, path)


__all__ = ["evaluate", "recalibrate_bn", "train", "distillation_loss"]
