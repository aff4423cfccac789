"""DDPG for layer-by-layer keep-ratio searches, as in AMC (He et al. 2018, mit-han-lab/amc).

An episode decides one continuous action (a keep ratio) per step; only the last step is rewarded,
and, as in AMC, every transition of the episode is stored with that final reward. Defaults are
AMC's:

- actor  s -> 300 -> 300 -> 1, ReLU, sigmoid output in [0, 1] (then clipped to [low, high]);
- critic relu(W_s s + W_a a) -> 300 -> 1;
- Adam, actor lr 1e-4, critic lr 1e-3; soft target updates tau = 0.01; discount 1;
- replay memory of ``replay_episodes`` episodes, batches of 64, one update per stored transition
  once the warm-up is over;
- rewards minus a moving average of the batch mean reward (alpha 0.5);
- exploration: ``warmup`` episodes of uniform random actions, then the actor's action plus
  truncated-normal noise (truncated to [low, high]) with sigma ``noise`` * ``noise_decay`` ** (episodes
  since the warm-up).

Everything random draws from the agent's own ``torch.Generator`` and the whole agent (networks,
optimizers, replay, generator, counters) is in :meth:`DDPGAgent.state_dict`, so a search resumed
from a checkpoint continues exactly as an uninterrupted one.

Under torch.distributed (see :mod:`gcnprune_fast.distributed`): the warm-up episodes do not depend
on any reward (uniform actions; :meth:`DDPGAgent.independent_episodes` says how many are left), so
the search plays them ahead and scores them split across the ranks. After the warm-up an
episode's actions come from the actor updated with the previous episode's reward: inherently
sequential. Each such episode is scored on rank 0 and its reward shared, and every rank holds the
same agent (same seed, same generator draws, same rewards, same updates), so every rank takes the
same decisions.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast.methods.search.policy_gradient import check_action_bounds

__all__ = ["DDPGConfig", "DDPGAgent", "ReplayBuffer", "truncated_normal"]


@dataclass
class DDPGConfig:
    """DDPG settings (AMC's defaults). ``low`` / ``high`` bound the action."""

    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    replay_episodes: int = 100
    warmup: int = 100
    noise: float = 0.5
    noise_decay: float = 0.95
    baseline_alpha: float = 0.5
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        check_action_bounds(self.low, self.high)
        for name in ("hidden", "batch_size", "replay_episodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")


def truncated_normal(mu: torch.Tensor, sigma: float, low: float, high: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Samples of N(mu, sigma^2) truncated to [low, high] (inverse-CDF, float64 inside); sigma <= 0
    returns ``mu`` clipped."""
    mu64 = mu.detach().to(torch.float64)
    if sigma <= 0:
        return mu64.clamp(low, high).to(mu.dtype)
    a = torch.special.ndtr((low - mu64) / sigma)
    b = torch.special.ndtr((high - mu64) / sigma)
    u = a + (b - a) * torch.rand(mu64.shape, generator=generator, dtype=torch.float64)
    x = mu64 + sigma * torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12))
    return x.clamp(low, high).to(mu.dtype)


def _init_linear(layer: nn.Linear, bound: float, generator: torch.Generator) -> nn.Linear:
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class _Actor(nn.Module):
    def __init__(self, state_dim: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.fc1 = _init_linear(nn.Linear(state_dim, hidden), 1 / math.sqrt(state_dim), generator)
        self.fc2 = _init_linear(nn.Linear(hidden, hidden), 1 / math.sqrt(hidden), generator)
        self.fc3 = _init_linear(nn.Linear(hidden, 1), 3e-3, generator)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc3(F.relu(self.fc2(F.relu(self.fc1(s)))))).squeeze(-1)


class _Critic(nn.Module):
    def __init__(self, state_dim: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.fc_s = _init_linear(nn.Linear(state_dim, hidden), 1 / math.sqrt(state_dim), generator)
        self.fc_a = _init_linear(nn.Linear(1, hidden), 1.0, generator)
        self.fc2 = _init_linear(nn.Linear(hidden, hidden), 1 / math.sqrt(hidden), generator)
        self.fc3 = _init_linear(nn.Linear(hidden, 1), 3e-3, generator)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc_s(s) + self.fc_a(a[:, None]))
        return self.fc3(F.relu(self.fc2(h))).squeeze(-1)


class ReplayBuffer:
    """Ring buffer of transitions (s, a, r, s', nonterminal) as float32 tensors."""

    def __init__(self, capacity: int, state_dim: int):
        self.capacity, self.size, self.pos = int(capacity), 0, 0
        self.s = torch.zeros(self.capacity, state_dim)
        self.a = torch.zeros(self.capacity)
        self.r = torch.zeros(self.capacity)
        self.s2 = torch.zeros(self.capacity, state_dim)
        self.nonterminal = torch.zeros(self.capacity)

    def push(self, s: torch.Tensor, a: float, r: float, s2: torch.Tensor, done: bool) -> None:
        i = self.pos
        self.s[i], self.a[i], self.r[i] = s, float(a), float(r)
        self.s2[i], self.nonterminal[i] = s2, 0.0 if done else 1.0
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator):
        idx = torch.randint(0, self.size, (int(batch_size),), generator=generator)
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.nonterminal[idx]

    def state_dict(self) -> Dict[str, Any]:
        return {"s": self.s.clone(), "a": self.a.clone(), "r": self.r.clone(), "s2": self.s2.clone(),
                "nonterminal": self.nonterminal.clone(), "size": self.size, "pos": self.pos,
                "capacity": self.capacity}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity {state['capacity']} != {self.capacity}")
        for name in ("s", "a", "r", "s2", "nonterminal"):
            getattr(self, name).copy_(state[name])
        self.size, self.pos = int(state["size"]), int(state["pos"])


class DDPGAgent:
    """AMC's DDPG agent for episodes of ``steps_per_episode`` continuous actions.

    Use: ``a = agent.act(s)`` at every step (``explore=False`` for the greedy action), then
    ``agent.observe_episode(states, actions, next_states, reward)`` once the episode's reward is
    known; that stores the transitions and, after the warm-up, runs one update per transition.
    """

    def __init__(self, state_dim: int, steps_per_episode: int, config: Optional[DDPGConfig] = None,
                 seed: int = 0):
        self.config = config or DDPGConfig()
        c = self.config
        self.state_dim, self.steps = int(state_dim), int(steps_per_episode)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.actor = _Actor(self.state_dim, c.hidden, self.generator)
        self.critic = _Critic(self.state_dim, c.hidden, self.generator)
        self.actor_target = _Actor(self.state_dim, c.hidden, self.generator)
        self.critic_target = _Critic(self.state_dim, c.hidden, self.generator)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.lr_critic)
        self.replay = ReplayBuffer(c.replay_episodes * self.steps, self.state_dim)
        self.episode = 0              # episodes observed so far
        self.moving_average: Optional[float] = None
        self.last_losses = (float("nan"), float("nan"))

    # ------------------------------------------------------------------ acting
    @property
    def sigma(self) -> float:
        """The exploration noise of the current episode (0 during the warm-up, which is random)."""
        c = self.config
        return c.noise * c.noise_decay ** max(self.episode - c.warmup, 0)

    @property
    def warming_up(self) -> bool:
        return self.episode < self.config.warmup

    def independent_episodes(self) -> int:
        """How many next episodes can be played before the agent needs the reward of any of them:
        the warm-up episodes left (uniform actions; observing them draws nothing and updates
        nothing), else 1."""
        return self.config.warmup - self.episode if self.warming_up else 1

    @torch.no_grad()
    def act(self, state: torch.Tensor, explore: bool = True) -> float:
        """The action for ``state`` [state_dim]: uniform in [low, high] during the warm-up, then
        the actor's output plus truncated-normal noise; ``explore=False``: the actor's output."""
        c = self.config
        if explore and self.warming_up:
            u = torch.rand((), generator=self.generator, dtype=torch.float64)
            return float(c.low + (c.high - c.low) * u)
        mu = self.actor(state.float()[None])[0]
        if explore:
            return float(truncated_normal(mu, self.sigma, c.low, c.high, self.generator))
        return float(mu.clamp(c.low, c.high))

    # ------------------------------------------------------------------ learning
    def observe_episode(self, states: torch.Tensor, actions: torch.Tensor,
                        next_states: torch.Tensor, reward: float) -> None:
        """Store an episode (states / next_states [T, state_dim], executed actions [T]; the last
        transition is terminal) with its final ``reward``; after the warm-up, one update per
        transition."""
        num = states.shape[0]
        for t in range(num):
            self.replay.push(states[t], float(actions[t]), float(reward), next_states[t],
                             done=t == num - 1)
        if not self.warming_up:
            for _ in range(num):
                self.update()
        self.episode += 1

    def update(self) -> None:
        """One DDPG step on a replay batch (AMC's update_policy)."""
        c = self.config
        s, a, r, s2, nonterminal = self.replay.sample(c.batch_size, self.generator)
        batch_mean = float(r.mean())
        if self.moving_average is None:
            self.moving_average = batch_mean
        else:
            self.moving_average += c.baseline_alpha * (batch_mean - self.moving_average)
        r = r - self.moving_average
        with torch.no_grad():
            target = r + c.discount * nonterminal * self.critic_target(s2, self.actor_target(s2))
        critic_loss = F.mse_loss(self.critic(s, a), target)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, q in zip(net.parameters(), tgt.parameters()):
                    q.mul_(1 - c.tau).add_(p, alpha=c.tau)
        self.last_losses = (float(critic_loss.detach()), float(actor_loss.detach()))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain values only; a deep copy, so
        that an agent loading it shares no tensor, e.g. optimizer moments, with this one)."""
        return copy.deepcopy({"config": asdict(self.config), "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(), "actor_target": self.actor_target.state_dict(),
                "critic_target": self.critic_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "replay": self.replay.state_dict(), "generator": self.generator.get_state(),
                "episode": self.episode, "moving_average": self.moving_average})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError("DDPG state was saved with a different configuration")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.replay.load_state_dict(state["replay"])
        self.generator.set_state(state["generator"])
        self.episode = int(state["episode"])
        self.moving_average = state["moving_average"]
