"""The reward set and the mask scorer: how a search scores a candidate keep-mask.

A few hundred images are cached once as tensors on the device (:class:`RewardSet`); a mask is
scored by ONE forward pass of the masked network (``space.masked``), optionally with every
BatchNorm normalizing with the set's own statistics (BN re-estimation for free), and scores are
cached by mask content (:class:`MaskScorer`).
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast.data import iterate_inputs
from gcnprune_fast.distributed import broadcast_if_different

__all__ = ["REWARD_KINDS", "RewardSet", "MaskScorer", "mask_key", "channels_last_evaluation"]

# "accuracy_bn": top-1 with BN statistics re-estimated on the reward set; "accuracy": top-1 with
# the original BN statistics; "loss": minus the cross-entropy.
REWARD_KINDS = ("accuracy_bn", "accuracy", "loss")


class RewardSet:
    """Cached inputs x [R, ...] and int64 targets y [R] on the device; scores a model in chunks of
    ``batch_size``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256):
        self.x, self.y, self.batch_size = x, y.long(), int(batch_size)

    @classmethod
    def from_loader(cls, loader, num_samples: int, device, batch_size: int = 256,
                    loader_name: str = "loader") -> "RewardSet":
        """The first ``num_samples`` samples of ``loader``."""
        xs, ys, n = [], [], 0
        for x, y in iterate_inputs(loader, loader_name):
            xs.append(x[: num_samples - n])
            ys.append(y[: num_samples - n])
            n += xs[-1].shape[0]
            if n >= num_samples:
                break
        # under torch.distributed every rank must score on the same set (verified by digest)
        x, y = broadcast_if_different(torch.cat(xs), torch.cat(ys))
        return cls(x.to(device), y.to(device), batch_size)

    def __len__(self) -> int:
        return self.y.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Tuple[float, float]:
        """(top-1 accuracy in [0, 1], mean cross-entropy) of ``model`` on the set."""
        correct, loss = 0, 0.0
        for i in range(0, len(self), self.batch_size):
            out = model(self.x[i:i + self.batch_size])
            y = self.y[i:i + self.batch_size]
            correct += int((out.argmax(1) == y).sum())
            loss += float(F.cross_entropy(out.float(), y, reduction="sum"))
        return correct / len(self), loss / len(self)

    @torch.no_grad()
    def evaluate_with_bn(self, model: nn.Module) -> Tuple[float, float]:
        """Like :meth:`evaluate`, but every BatchNorm normalizes with the statistics of the
        forwarded chunk (the whole set when ``batch_size >= len(self)``). That equals re-estimating
        BN statistics on the reward set and then evaluating (up to the n/(n-1) variance factor), in
        ONE forward pass. BN buffers and modes are restored afterwards."""
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.momentum, [b.clone() for b in m.buffers()]) for m in bns]
        try:
            for m in bns:
                m.train()
                m.momentum = 0.0
            return self.evaluate(model)
        finally:
            for m, (training, momentum, bufs) in zip(bns, saved):
                m.train(training)
                m.momentum = momentum
                for b, v in zip(m.buffers(), bufs):
                    b.copy_(v)


def mask_key(masks: List[torch.Tensor]) -> bytes:
    """A digest of the masks' content (the scorer's cache key)."""
    return hashlib.sha1(torch.cat([m.to(torch.uint8) for m in masks]).numpy().tobytes()).digest()


class MaskScorer:
    """Scores keep-masks on the reward set by masked evaluation, with a cache by mask content.

    ``kind`` is one of :data:`REWARD_KINDS`; calling returns ``(reward, accuracy, loss)``.
    ``evaluations`` counts the forward passes actually run (cache misses)."""

    def __init__(self, space, rewards: RewardSet, kind: str, device):
        if kind not in REWARD_KINDS:
            raise ValueError(f"reward kind must be one of {list(REWARD_KINDS)}, got {kind!r}")
        self.space, self.rewards, self.kind = space, rewards, kind
        self.device, self.evaluations = device, 0
        self.cache: Dict[bytes, Tuple[float, float, float]] = {}

    def __call__(self, masks: List[torch.Tensor]) -> Tuple[float, float, float]:
        key = mask_key(masks)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        dev_masks = [m.to(self.device) for m in masks]
        with self.space.masked(dev_masks):
            if self.kind == "accuracy_bn":
                acc, loss = self.rewards.evaluate_with_bn(self.space.model)
            else:
                acc, loss = self.rewards.evaluate(self.space.model)
        reward = -loss if self.kind == "loss" else acc
        self.evaluations += 1
        self.cache[key] = (reward, acc, loss)
        return self.cache[key]

    def remember(self, masks: List[torch.Tensor], result: Tuple[float, float, float]) -> None:
        """Cache a score computed elsewhere (by another rank of a distributed search)."""
        self.cache.setdefault(mask_key(masks), tuple(result))


@contextlib.contextmanager
def channels_last_evaluation(space, rewards: RewardSet, enabled: bool = True) -> Iterator[bool]:
    """Run masked evaluation in channels_last while inside (measured 1.3-1.7x less CPU time on
    ResNet-56). Only strides change, values are identical; the model is restored on exit.
    Yields whether the switch was made (4-D inputs and contiguous 4-D weights only)."""
    switch = (enabled and rewards.x.dim() == 4
              and all(p.is_contiguous() for p in space.model.parameters() if p.dim() == 4))
    if switch:
        space.model.to(memory_format=torch.channels_last)
        rewards.x = rewards.x.contiguous(memory_format=torch.channels_last)
    try:
        yield switch
    finally:
        if switch:
            space.model.to(memory_format=torch.contiguous_format)
