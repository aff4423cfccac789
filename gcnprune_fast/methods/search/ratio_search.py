"""Layer-by-layer keep-ratio search (AMC's environment) shared by the RL searches over groups.

An episode visits the groups in a fixed order (``decision_order``: network depth) and asks an
agent for a keep ratio per group. :class:`RatioEnvironment` turns a ratio into a legal width and
applies AMC's action wall: the width is capped so that the budget stays reachable when every
group still to decide is cut to its *floor* (the width of the smallest allowed action), as AMC's
wall assumes the remaining layers at the action's lower bound. When the budget cannot be met even
with every group at its floor, the floors drop to ``space.min_keep`` (the wall of
:func:`~gcnprune_fast.methods.allocation.action_wall`), so the result always meets the budget.

Legal widths of group g: the full size and the multiples of the group's rounding step from
``space.min_keep(g)`` up (the space's ``round_to``; with ``channel_round`` > 1, the least common
multiple of both for groups at least ``4 * channel_round`` wide: AMC rounds to 8 where a layer is
wide enough). A ratio maps to the nearest legal width.

:func:`run_ratio_search` is the episode loop: any agent with ``act`` / ``observe_episode`` /
``state_dict`` / ``load_state_dict`` (the DDPG of :mod:`.ddpg`, the PPO of :mod:`.ratio_ppo`), a
state function and a scorer; best configuration, reward curve, checkpoints every few episodes
(``SearchCheckpoint``; a resumed search equals an uninterrupted one) and a progress bar.

Batches of episodes: an agent's ``independent_episodes()`` (optional; 1 without it) says how many
next episodes it can play before it needs any of their rewards (PPO: the episodes left until its
update; DDPG: the warm-up episodes left, else 1). The loop plays that many (never across a
checkpoint), scores their distinct configurations together, then lets the agent observe them in
order. That is exactly the episode-by-episode loop (the agent neither draws nor learns while
observing them), so a single process gives the same result as before.

Under torch.distributed (see :mod:`gcnprune_fast.distributed`) the configurations of one batch
are scored split across the ranks (``distributed.map_split``: rank r scores r, r+N, ...) and the
results all-gathered in order; every rank then observes the same rewards and applies the same
update, with the agent's generator seeded identically on every rank. A batch of one (a DDPG
episode after the warm-up, whose actions depend on the previous reward; the final noise-free
episode) is scored on rank 0 and shared: inherently sequential, nothing to split. Each rank
caches the others' scores (``remember``), and the scorer's evaluation count is summed over the
ranks by the methods, so a search on N processes returns the configuration, rewards and counts of
a single process.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from gcnprune_fast import distributed
from gcnprune_fast.methods.allocation import Budget, action_wall
from gcnprune_fast.methods.registry import option
from gcnprune_fast.methods.search.ddpg import DDPGAgent, DDPGConfig
from gcnprune_fast.methods.search.reward import REWARD_KINDS, RewardSet

__all__ = ["RatioEnvironment", "run_ratio_search", "search_facts", "RatioSearchOptions", "make_ddpg",
           "reward_set"]


@dataclass
class RatioSearchOptions:
    """Options of a layer-by-layer DDPG search (a base class of the methods' options)."""

    episodes: int = option(300, "search episodes, warm-up included", minimum=1)
    warmup: int = option(100, "episodes of uniform random actions before the agent learns",
                         minimum=0)
    action_low: float = option(0.05, "smallest keep ratio an action may ask for", minimum=0.01)
    channel_round: int = option(1, "round widths to this many channels where a group is at least "
                                "4x as wide (AMC: 8)", minimum=1)
    noise: float = option(0.5, "initial sigma of the truncated-normal exploration", minimum=0.0)
    noise_decay: float = option(0.95, "sigma decay per episode after the warm-up", minimum=0.0)
    lr_actor: float = option(1e-4, "actor learning rate", minimum=0.0)
    lr_critic: float = option(1e-3, "critic learning rate", minimum=0.0)
    tau: float = option(0.01, "soft target update rate", minimum=0.0)
    discount: float = option(1.0, "discount of the critic targets", minimum=0.0)
    batch_size: int = option(64, "replay batch size", minimum=1)
    replay_episodes: int = option(100, "replay memory, in episodes", minimum=1)
    ddpg_hidden: int = option(300, "actor and critic hidden width", minimum=1)
    reward: str = option("accuracy_bn", "accuracy_bn: top-1 with BN statistics re-estimated on "
                         "the reward set; accuracy: with the original statistics; loss: -CE",
                         choices=REWARD_KINDS)
    reward_samples: int = option(256, "images in the cached reward set", minimum=1)
    reward_batch_size: int = option(256, "forward chunk on the reward set (>= reward_samples: "
                                    "BN statistics of the whole set)", minimum=1)
    reward_source: str = option("loader", "where the reward set comes from",
                                choices=("loader", "val"))
    checkpoint_every: int = option(10, "episodes between search checkpoints", minimum=1)


def make_ddpg(opts: RatioSearchOptions, state_dim: int, steps: int, seed: int) -> DDPGAgent:
    """The DDPG agent of ``opts`` (actions in [action_low, 1])."""
    config = DDPGConfig(hidden=int(opts.ddpg_hidden), lr_actor=float(opts.lr_actor),
                        lr_critic=float(opts.lr_critic), tau=float(opts.tau),
                        discount=float(opts.discount), batch_size=int(opts.batch_size),
                        replay_episodes=int(opts.replay_episodes), warmup=int(opts.warmup),
                        noise=float(opts.noise), noise_decay=float(opts.noise_decay),
                        low=float(opts.action_low), high=1.0)
    return DDPGAgent(state_dim, steps, config, seed=seed)


def reward_set(ctx, opts: RatioSearchOptions) -> RewardSet:
    """The cached reward set of ``opts`` (``reward_source`` "val" uses ``ctx.val_loader`` when
    there is one)."""
    use_val = opts.reward_source == "val" and ctx.val_loader is not None
    return RewardSet.from_loader(ctx.val_loader if use_val else ctx.loader, int(opts.reward_samples),
                                 ctx.device, int(opts.reward_batch_size),
                                 "val_loader" if use_val else "loader")


class RatioEnvironment:
    """Widths and the action wall for a search deciding one keep ratio per group.

    Args:
        space: the pruning space.
        budget: the cost limits.
        order: the groups in decision order.
        low: the smallest action (keep ratio); the floors are its widths.
        channel_round: AMC's channel rounding (1 = the space's ``round_to`` only).
    """

    def __init__(self, space, budget: Budget, order: Sequence[int], low: float,
                 channel_round: int = 1):
        self.space, self.budget = space, budget
        self.order = [int(g) for g in order]
        if sorted(self.order) != list(range(space.num_groups)):
            raise ValueError(f"order must be a permutation of the {space.num_groups} groups")
        self.sizes = [int(g.size) for g in space.groups]
        self.min_keeps = [int(space.min_keep(g)) for g in range(space.num_groups)]
        base = max(int(space.round_to), 1)
        self.steps = []
        for size in self.sizes:
            step = base
            if channel_round > 1 and size >= 4 * channel_round:
                step = base * channel_round // math.gcd(base, channel_round)
            self.steps.append(step)
        self.widths = [self._legal(g) for g in range(space.num_groups)]
        floors = [self.nearest(g, low) for g in range(space.num_groups)]
        self.floors_feasible = bool(budget.feasible_counts(
            space, torch.tensor([floors], dtype=torch.long))[0])
        self.floors = floors if self.floors_feasible else list(self.min_keeps)

    def _legal(self, g: int) -> torch.Tensor:
        size, mk, step = self.sizes[g], self.min_keeps[g], self.steps[g]
        w = {size} | {c for c in range(mk, size + 1) if c % step == 0}
        return torch.tensor(sorted(w), dtype=torch.long)

    def nearest(self, g: int, ratio: float) -> int:
        """The legal width of group ``g`` nearest to ``ratio * size`` (ties to the wider)."""
        w = self.widths[g]
        d = (w.double() - float(ratio) * self.sizes[g]).abs()
        best = d.min()
        return int(w[(d <= best + 1e-9).nonzero()[-1]])

    def wall(self, counts: Sequence[int], step: int) -> int:
        """The widest legal width of group ``order[step]`` such that the budget holds with the
        groups decided before it at ``counts`` and the groups after it at their floors."""
        g = self.order[step]
        row = list(self.floors)
        for h in self.order[:step]:
            row[h] = int(counts[h])
        widths = self.widths[g]
        rows = torch.tensor(row, dtype=torch.long).repeat(widths.numel(), 1)
        rows[:, g] = widths
        ok = self.budget.feasible_counts(self.space, rows)
        if not bool(ok.any()):
            # cannot happen when the floors were feasible; the classic wall (others at min_keep)
            return action_wall(self.space, self._index_order(counts, step), g, self.budget)
        return int(widths[ok.nonzero()[-1]])

    def _index_order(self, counts: Sequence[int], step: int) -> List[int]:
        """Counts for ``allocation.action_wall`` (which reads groups before g by index)."""
        out = list(counts)
        for h in self.order[step:]:
            out[h] = self.min_keeps[h]
        return out

    def step(self, counts: List[int], step: int, ratio: float) -> Tuple[int, float]:
        """Set the width of ``order[step]`` from ``ratio`` (nearest legal width, capped by the
        wall) in ``counts``; returns (width, executed ratio = width / size)."""
        g = self.order[step]
        c = min(self.nearest(g, ratio), self.wall(counts, step))
        counts[g] = c
        return c, c / self.sizes[g]


def run_ratio_search(env: RatioEnvironment, agent, state_fn: Callable[..., torch.Tensor],
                     score_fn: Callable[[List[int]], Tuple[float, float, float]], *,
                     episodes: int, checkpoint=None, resume: bool = False,
                     checkpoint_every: int = 10, progress: bool = False,
                     desc: str = "search",
                     remember: Optional[Callable[[List[int], Tuple[float, float, float]], None]]
                     = None, keep_top: int = 1) -> Dict[str, Any]:
    """Run (or continue) an episodic search.

    Args:
        env: the environment (widths, wall).
        agent: ``act(state, explore) -> ratio``, ``observe_episode(states, actions, next_states,
            reward)``, ``state_dict()`` / ``load_state_dict()``.
        state_fn: ``state_fn(step, counts, previous_action) -> Tensor [state_dim]`` (``counts``
            holds the decided widths of ``env.order[:step]``, the full size elsewhere).
        score_fn: ``score_fn(counts) -> (reward, accuracy, loss)``.
        episodes: total episodes (a resumed search continues up to this number).
        checkpoint: a ``SearchCheckpoint`` (or None); saved every ``checkpoint_every`` episodes
            and at the end.
        resume: continue from the checkpoint.
        remember: ``remember(counts, result)`` caches a score computed by another rank (under
            torch.distributed; e.g. ``MaskScorer.remember`` of the counts' masks).
        keep_top: how many of the best distinct configurations to return (``top``).

    Returns:
        facts: ``best_counts``, ``best_reward``, ``reward_curve`` (per episode), ``episodes``,
        ``greedy_counts`` / ``greedy_reward`` (the agent's noise-free episode at the end),
        ``top``: the ``keep_top`` best distinct configurations as ``(counts, reward)``, best
        first (the final noise-free episode included), ``search_loop_s``.
    """
    state: Dict[str, Any] = {"episode": 0, "best_key": None, "best_counts": None,
                             "reward_curve": [], "accuracy_curve": [], "scored": []}
    saved = checkpoint.load(resume) if checkpoint is not None else None
    if saved is not None:
        agent.load_state_dict(saved["agent"])
        state = saved["state"]
    t0 = time.perf_counter()

    def consider(counts: List[int], result: Tuple[float, float, float]) -> None:
        key = [float(result[0]), -float(result[2])]
        if state["best_key"] is None or key > list(state["best_key"]):
            state["best_key"], state["best_counts"] = key, list(counts)
        # every distinct configuration scored, in order: ``top`` is derived from it at the end,
        # so a checkpoint serves any keep_top (an option outside the search's fingerprint)
        scored = state.setdefault("scored", [])
        if not any(list(c) == list(counts) for _, c in scored):
            scored.append([key, list(counts)])

    def play(explore: bool):
        counts = list(env.sizes)
        states, actions, prev = [], [], 1.0
        for t in range(len(env.order)):
            s = state_fn(t, counts, prev)
            ratio = agent.act(s, explore=explore)
            _, executed = env.step(counts, t, ratio)
            states.append(s)
            actions.append(executed)
            prev = executed
        return counts, torch.stack(states), torch.tensor(actions, dtype=torch.float32)

    def score_all(configs: List[List[int]]) -> List[Tuple[float, float, float]]:
        """Scores of ``configs`` in order. Distributed: the distinct ones split across the ranks
        (see the module docstring), every rank caching the others' scores."""
        if not distributed.is_distributed():
            return [score_fn(c) for c in configs]
        keys = list(dict.fromkeys(tuple(int(v) for v in c) for c in configs))
        results = distributed.map_split(lambda k: tuple(score_fn(list(k))), keys)
        if remember is not None:
            for k, r in zip(keys, results):
                remember(list(k), r)
        by_key = dict(zip(keys, results))
        return [by_key[tuple(int(v) for v in c)] for c in configs]

    every = max(int(checkpoint_every), 1)
    # a checkpoint holds the agent as it is after the episodes observed so far: batches end there
    bounded = checkpoint is not None and getattr(checkpoint, "path", "") is not None
    ahead = getattr(agent, "independent_episodes", None)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=episodes, initial=min(state["episode"], episodes), desc=desc, unit="ep",
                   leave=False)
    try:
        while state["episode"] < episodes:
            n = min(int(ahead()) if ahead is not None else 1, episodes - state["episode"])
            if bounded:
                n = min(n, every - state["episode"] % every)
            played = [play(explore=True) for _ in range(max(n, 1))]
            results = score_all([p[0] for p in played])
            for (counts, states, actions), result in zip(played, results):
                next_states = torch.cat([states[1:], states[-1:]])
                agent.observe_episode(states, actions, next_states, float(result[0]))
                consider(counts, result)
                state["reward_curve"].append(float(result[0]))
                state["accuracy_curve"].append(float(result[1]))
                state["episode"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{result[0]:.4f}", best=f"{state['best_key'][0]:.4f}")
                if checkpoint is not None and (state["episode"] % every == 0
                                               or state["episode"] == episodes):
                    checkpoint.save(agent=agent.state_dict(), state=state)
    finally:
        if bar is not None:
            bar.close()
    greedy_counts, _, _ = play(explore=False)
    greedy = score_all([greedy_counts])[0]
    consider(greedy_counts, greedy)
    return {"best_counts": list(state["best_counts"]), "best_reward": float(state["best_key"][0]),
            "reward_curve": list(state["reward_curve"]),
            "accuracy_curve": list(state["accuracy_curve"]), "episodes": int(state["episode"]),
            "greedy_counts": greedy_counts, "greedy_reward": float(greedy[0]),
            # best first; ties keep the earlier configuration first (a stable sort)
            "top": [(list(c), float(k[0])) for k, c in sorted(
                state["scored"], key=lambda kc: tuple(kc[0]), reverse=True)[:max(int(keep_top), 1)]],
            "search_loop_s": time.perf_counter() - t0}


def search_facts(facts: Dict[str, Any], space, order: Sequence[int]) -> Dict[str, Any]:
    """The report facts every ratio search shares, from :func:`run_ratio_search`'s result."""
    counts = facts["best_counts"]
    return {
        "episodes": facts["episodes"],
        "reward_curve": facts["reward_curve"],
        "accuracy_curve": facts["accuracy_curve"],
        "best_reward": facts["best_reward"],
        "final_greedy_reward": facts["greedy_reward"],
        "ratios": {g.name: c / g.size for g, c in zip(space.groups, counts)},
        "decision_order": [space.groups[g].name for g in order],
    }
