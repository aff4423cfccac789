"""PPO-clip for layer-by-layer keep-ratio searches: the alternative to :mod:`.ddpg` with the same
agent interface (``act`` / ``observe_episode`` / ``state_dict`` / ``load_state_dict``).

Policy: a Gaussian over the keep ratio, mean ``low + (high - low) * sigmoid(MLP(s))`` (s -> hidden
-> hidden -> 1, ReLU), one learned log standard deviation; samples are clipped to [low, high].
Every ``episodes_per_update`` episodes, the advantages are the episodes' final rewards minus a
moving-average baseline, scaled by their standard deviation (floored at 0.01), shared by all the
steps of an episode; then ``epochs`` PPO-clip passes with an entropy bonus. The log-probability is
that of the *executed* action (after the action wall), as for the policy gradient of channel-gcn.

Under torch.distributed (see :mod:`gcnprune_fast.distributed`): the episodes of one update are
sampled from the same policy and do not depend on each other's rewards
(:meth:`RatioPPOAgent.independent_episodes`), so the search plays them all, scores them split
across the ranks and every rank applies the same update (the Gaussian noise comes from the
agent's generator, seeded identically on every rank).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast.methods.search.policy_gradient import (MovingBaseline, check_action_bounds,
                                                          normalized_advantages)

__all__ = ["PPOConfig", "RatioPPOAgent"]


@dataclass
class PPOConfig:
    """PPO settings; ``low`` / ``high`` bound the action."""

    hidden: int = 300
    lr: float = 3e-4
    episodes_per_update: int = 10
    epochs: int = 4
    clip: float = 0.2
    entropy_coef: float = 0.001
    init_std: float = 0.2
    baseline_momentum: float = 0.9
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        check_action_bounds(self.low, self.high)
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std!r}")


class _Policy(nn.Module):
    def __init__(self, state_dim: int, hidden: int, init_std: float, generator: torch.Generator):
        super().__init__()
        self.fc1 = nn.Linear(state_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer, bound in ((self.fc1, 1 / math.sqrt(state_dim)), (self.fc2, 1 / math.sqrt(hidden)),
                                 (self.fc3, 3e-3)):
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()
        self.log_std = nn.Parameter(torch.tensor(math.log(init_std)))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Unit-interval mean [N]."""
        return torch.sigmoid(self.fc3(F.relu(self.fc2(F.relu(self.fc1(s)))))).squeeze(-1)


class RatioPPOAgent:
    """PPO-clip agent for episodes of ``steps_per_episode`` keep ratios (see the module docstring)."""

    def __init__(self, state_dim: int, steps_per_episode: int, config: Optional[PPOConfig] = None,
                 seed: int = 0):
        self.config = config or PPOConfig()
        c = self.config
        self.state_dim, self.steps = int(state_dim), int(steps_per_episode)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.policy = _Policy(self.state_dim, c.hidden, c.init_std, self.generator)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=c.lr)
        self.baseline = MovingBaseline(c.baseline_momentum)
        self.pending: List[Dict[str, torch.Tensor]] = []
        self.episode = 0

    def _mean(self, s: torch.Tensor) -> torch.Tensor:
        c = self.config
        return c.low + (c.high - c.low) * self.policy(s)

    def independent_episodes(self) -> int:
        """How many next episodes can be played before the agent needs the reward of any of them:
        the episodes left until the next update (the policy does not change before it)."""
        return max(self.config.episodes_per_update - len(self.pending), 1)

    @torch.no_grad()
    def act(self, state: torch.Tensor, explore: bool = True) -> float:
        c = self.config
        mu = self._mean(state.float()[None])[0]
        if not explore:
            return float(mu.clamp(c.low, c.high))
        eps = torch.randn((), generator=self.generator)
        return float((mu + self.policy.log_std.exp() * eps).clamp(c.low, c.high))

    def _log_prob(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        log_std = self.policy.log_std
        z = (a - self._mean(s)) / log_std.exp()
        return -0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)

    def observe_episode(self, states: torch.Tensor, actions: torch.Tensor,
                        next_states: torch.Tensor, reward: float) -> None:
        """Store the episode; every ``episodes_per_update`` episodes run the PPO update."""
        self.pending.append({"s": states.float().clone(), "a": actions.float().clone(),
                             "r": torch.tensor(float(reward))})
        self.episode += 1
        if len(self.pending) >= self.config.episodes_per_update:
            self.update()

    def update(self) -> None:
        c = self.config
        if not self.pending:
            return
        s = torch.cat([p["s"] for p in self.pending])
        a = torch.cat([p["a"] for p in self.pending])
        r = torch.stack([p["r"] for p in self.pending])
        adv_ep = normalized_advantages(r, self.baseline.advantages(r))
        adv = torch.cat([adv_ep[i].expand(p["a"].numel()) for i, p in enumerate(self.pending)])
        with torch.no_grad():
            old = self._log_prob(s, a)
        for _ in range(c.epochs):
            ratio = torch.exp(self._log_prob(s, a) - old)
            pg = -torch.minimum(ratio * adv, ratio.clamp(1 - c.clip, 1 + c.clip) * adv).mean()
            entropy = self.policy.log_std + 0.5 * math.log(2 * math.pi * math.e)
            loss = pg - c.entropy_coef * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.baseline.update(r)
        self.pending = []

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly (a deep copy: nothing shared with this agent)."""
        return copy.deepcopy({"config": asdict(self.config), "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "baseline": self.baseline.value, "pending": list(self.pending),
                "episode": self.episode})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError("PPO state was saved with a different configuration")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline.value = state["baseline"]
        self.pending = list(state["pending"])
        self.episode = int(state["episode"])
