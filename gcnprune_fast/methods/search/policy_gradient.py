"""Policy-gradient updates for a factorized Bernoulli policy (one keep-probability per unit).

The policy is given as a function returning logits [N]; actions are the executed 0/1 decisions
[E, N] of E episodes and ``advantages`` [E] their centred, scaled rewards."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["MovingBaseline", "leave_one_out_advantages", "normalized_advantages",
           "bernoulli_policy_update", "check_action_bounds"]


def check_action_bounds(low: float, high: float) -> None:
    """A continuous action (keep ratio) range must satisfy 0 <= low < high <= 1."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"action bounds must satisfy 0 <= low < high <= 1, got "
                         f"low={low}, high={high}")


class MovingBaseline:
    """Exponential moving average of the mean reward per update (the first update sets it)."""

    def __init__(self, momentum: float, value: Optional[float] = None):
        self.momentum, self.value = float(momentum), value

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.value is None:
            self.value = float(rewards.mean())
        return rewards - self.value

    def update(self, rewards: torch.Tensor) -> None:
        m = self.momentum
        self.value = m * self.value + (1 - m) * float(rewards.mean())


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Each episode's reward minus the mean of the OTHER episodes of its update (an unbiased
    baseline that needs no history, unlike :class:`MovingBaseline`, which lags a policy whose
    rewards move). A single episode gets 0."""
    n = rewards.numel()
    if n < 2:
        return torch.zeros_like(rewards)
    return (rewards - (rewards.sum() - rewards) / (n - 1))


def normalized_advantages(rewards: torch.Tensor, advantages: torch.Tensor,
                          floor: float = 1e-2) -> torch.Tensor:
    """Unit-scale advantages: divided by the rewards' standard deviation, floored at ``floor`` (one
    point of accuracy) so that near-identical rewards are not blown up into large updates."""
    n = rewards.numel()
    return advantages / max(float(rewards.std(unbiased=False)) if n > 1 else 0.0, floor)


def bernoulli_policy_update(optimizer: torch.optim.Optimizer, logits_fn: Callable[[], torch.Tensor],
                            actions: torch.Tensor, advantages: torch.Tensor, *,
                            entropy_coef: float, ppo: bool = False, ppo_epochs: int = 4,
                            ppo_clip: float = 0.2) -> float:
    """One REINFORCE step (or ``ppo_epochs`` PPO-clip steps) with a mean-entropy bonus.

    Returns the last loss value."""
    old_logp = None
    loss = torch.zeros(())
    for _epoch in range(ppo_epochs if ppo else 1):
        logits = logits_fn()
        logp = -F.binary_cross_entropy_with_logits(
            logits.expand_as(actions), actions, reduction="none")  # [E, N]
        p = torch.sigmoid(logits)
        # mean Bernoulli entropy per unit (differentiable through p and the logs)
        entropy = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
        if ppo:
            if old_logp is None:
                old_logp = logp.detach()
            ratio = torch.exp(logp - old_logp)
            clipped = ratio.clamp(1 - ppo_clip, 1 + ppo_clip)
            pg = -torch.minimum(ratio * advantages[:, None], clipped * advantages[:, None]).mean()
        else:
            pg = -(advantages[:, None] * logp).mean()
        loss = pg - float(entropy_coef) * entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
