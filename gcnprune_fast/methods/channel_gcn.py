"""Method A, "channel-gcn": channel graphs with per-layer GCN agents trained by RL.

Pipeline (see ``docs/METHODS.md`` of the shared docs, Method A):

1. channel features with ``gap_stats`` (:func:`gcnprune_fast.features.collect_features`);
2. ONE batched ``ops.knn_graph`` call over all groups (segments = group offsets; centered cosine,
   k = 8), then ``ops.gcn_norm``: a block-diagonal graph of every layer's channels;
3. node features [N, d]: L1, L2, |gamma|, activation statistics, graph features (degree, strength,
   mean neighbour similarity), each standardized within its group, plus the group's context (share
   of FLOPs and params, budget, depth);
4. agents: :class:`~gcnprune_fast.methods.agents.ChannelGCNPolicy` (per-group 2-layer GCN + head);
5. RL: each episode samples m ~ Bernoulli(pi) for all groups jointly, the action wall
   (:func:`~gcnprune_fast.methods.allocation.project_to_budget`, lowest pi removed first, then
   by default the budget is filled with the highest-pi dropped channels); reward = top-1 accuracy
   of the masked network on a cached reward set (by default with BN statistics re-estimated on
   that set); REINFORCE with a moving-average baseline and an entropy bonus (or PPO-clip),
   several episodes per update; a checkpoint after every update;
6. result: the best feasible mask seen, or the greedy mask from pi if it scores higher.

Design choices not fixed by the spec (all options, see :data:`DEFAULTS`):
- warm start: the policy starts as a soft global-L1 ranking (pi > 0.5 exactly for the channels
  global L1 ranking keeps, sharpness ``warm_start_scale``), so exploration concentrates at the
  decision boundary and the greedy mask of update 0 is the L1 baseline; the search can only
  improve on it (on the reward set).
- the log-probability in the policy gradient is that of the *projected* mask (the action the
  environment executed), as in AMC's action wall.
- evaluated masks are cached by content, so repeated samples cost no forward pass.
- reward "accuracy_bn" (default) instead of plain masked accuracy: the final model is scored after
  BN re-estimation, and masked accuracy with the *original* BN statistics ranks masks poorly (on a
  trained SimpleCNN at 30% FLOPs the search with plain accuracy drifted below its L1 warm start,
  with accuracy_bn it gained +5 to +12 points over L1). It costs no extra forward: BN runs with
  the reward set's batch statistics (see :meth:`RewardSet.evaluate_with_bn`).
- masked evaluation runs in channels_last (measured 1.46x less CPU time on ResNet-56).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast import ops
from gcnprune_fast.features import ChannelFeatures, collect_features, iterate_inputs
from gcnprune_fast.methods.agents import ChannelGCNPolicy
from gcnprune_fast.methods.allocation import Budget, project_to_budget, standardize
from gcnprune_fast.methods.context import MethodResult, SearchContext

__all__ = ["DEFAULTS", "RewardSet", "build_channel_graph", "node_features", "search",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "channel_gcn_search.pt"

DEFAULTS: Dict[str, Any] = {
    "episodes": 300,             # total sampled masks
    "episodes_per_update": 10,   # masks per policy update
    "k": 8,                      # kNN neighbours per channel
    "hidden": 32,                # GCN width
    "shared": False,             # one shared GCN + group embedding instead of one per group
    "lr": 0.005,                 # Adam learning rate of the agents
    "entropy_coef": 0.01,        # weight of the mean per-channel entropy bonus
    "baseline_momentum": 0.9,    # moving-average reward baseline
    # "accuracy_bn": top-1 with BN statistics re-estimated on the reward set (default; one forward
    # with batch statistics), "accuracy": top-1 with the original BN statistics, "loss": -CE.
    "reward": "accuracy_bn",
    "reward_samples": 256,       # images in the cached reward set
    "reward_batch_size": 256,    # forward chunk for masked evaluation
    "reward_source": "loader",   # "loader" | "val" (val_loader)
    "feature_samples": 512,      # images for the GAP features
    "ppo": False,                # PPO-clip instead of REINFORCE
    "ppo_epochs": 4,
    "ppo_clip": 0.2,
    "warm_start": "l1",          # "l1" | "none"
    "warm_start_scale": 3.0,     # logit slope per standard deviation of L1 at the warm start
    "fill_budget": True,         # after the action wall, add back top-pi channels while feasible
    "channels_last": True,       # run masked evaluation in channels_last (1.3-1.7x faster on CPU)
}

NODE_FEATURES = ("l1", "l2", "bn_gamma", "act_mean", "act_var", "act_abs_mean", "act_zero_frac",
                 "act_max", "degree", "strength", "mean_neighbour_sim", "flops_share",
                 "params_share", "budget", "depth")


def _check_options(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown channel-gcn option(s) {unknown}; valid options: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    for name in ("episodes", "episodes_per_update", "k", "hidden", "reward_samples",
                 "reward_batch_size", "feature_samples", "ppo_epochs"):
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"channel-gcn option {name} must be a positive int, got {v!r}")
    if opts["reward"] not in ("accuracy", "loss", "accuracy_bn"):
        raise ValueError(f"reward must be 'accuracy', 'loss' or 'accuracy_bn', got {opts['reward']!r}")
    if opts["reward_source"] not in ("loader", "val"):
        raise ValueError(f"reward_source must be 'loader' or 'val', got {opts['reward_source']!r}")
    if opts["warm_start"] not in ("l1", "none", None):
        raise ValueError(f"warm_start must be 'l1' or 'none', got {opts['warm_start']!r}")
    return opts


# ----------------------------------------------------------------------------------------------
# reward set and masked evaluation


class RewardSet:
    """A few hundred images cached once as tensors on the device; scores masks by one forward.

    x: [R, ...] inputs, y: [R] targets (int64), on ``device``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256):
        self.x, self.y, self.batch_size = x, y.long(), int(batch_size)

    @classmethod
    def from_loader(cls, loader, num_samples: int, device, batch_size: int = 256,
                    loader_name: str = "loader") -> "RewardSet":
        xs, ys, n = [], [], 0
        for x, y in iterate_inputs(loader, loader_name):
            xs.append(x[: num_samples - n])
            ys.append(y[: num_samples - n])
            n += xs[-1].shape[0]
            if n >= num_samples:
                break
        return cls(torch.cat(xs).to(device), torch.cat(ys).to(device), batch_size)

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


def _mask_key(masks: List[torch.Tensor]) -> bytes:
    return hashlib.sha1(torch.cat([m.to(torch.uint8) for m in masks]).numpy().tobytes()).digest()


class _MaskScorer:
    """Scores masks on the reward set (masked evaluation), with a cache by mask content."""

    def __init__(self, space, rewards: RewardSet, kind: str, device):
        self.space, self.rewards, self.kind = space, rewards, kind
        self.device, self.cache, self.evaluations = device, {}, 0

    def __call__(self, masks: List[torch.Tensor]) -> Tuple[float, float, float]:
        """(reward, accuracy, loss) of the masked network."""
        key = _mask_key(masks)
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


# ----------------------------------------------------------------------------------------------
# graph and node features


def group_offsets(space) -> torch.Tensor:
    """int64 [G + 1]: row offsets of each group in the stacked channel dimension."""
    sizes = torch.tensor([g.size for g in space.groups], dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])


def build_channel_graph(features: ChannelFeatures, offsets: torch.Tensor, k: int = 8
                        ) -> Tuple[ops.CSRGraph, ops.CSRGraph]:
    """One batched kNN call over every group's GAP matrix; returns (raw graph with weights
    max(cos, 0) and no self loops, GCN-normalized graph D^-1/2 (A + I) D^-1/2). Both [N, N]
    block-diagonal, N = total channels."""
    f = torch.cat(features.gap, dim=0).float()  # [N, B]
    raw = ops.knn_graph(f, k, segments=offsets, center=True)
    return raw, ops.gcn_norm(raw, add_self_loops=True)


def _cost_shares(space) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per group: share of the network's FLOPs / params removed by shrinking that group alone to
    its minimum width. float64 [G] each."""
    sizes = [g.size for g in space.groups]
    num = len(sizes)
    counts = torch.tensor(sizes, dtype=torch.long).repeat(num + 1, 1)
    for g in range(num):
        counts[g + 1, g] = space.min_keep(g)
    f, p = space.cost_from_counts(counts)
    f, p = f.to(torch.float64), p.to(torch.float64)
    return (f[0] - f[1:]) / max(float(space.base_flops), 1.0), \
        (p[0] - p[1:]) / max(float(space.base_params), 1.0)


def node_features(space, features: ChannelFeatures, raw: ops.CSRGraph, offsets: torch.Tensor,
                  budget: Budget) -> torch.Tensor:
    """Node features float32 [N, len(NODE_FEATURES)] (per-channel columns z-scored within group)."""
    stats = space.weight_stats()
    deg = raw.indptr.diff().to(torch.float64)
    rows = torch.repeat_interleave(torch.arange(raw.num_rows), raw.indptr.diff())
    strength = torch.zeros(raw.num_rows, dtype=torch.float64).index_add_(
        0, rows, raw.values.detach().to(torch.float64).cpu())
    mean_sim = strength / deg.clamp_min(1)
    flops_share, params_share = _cost_shares(space)
    num = space.num_groups
    cols: List[List[torch.Tensor]] = []
    for g in range(num):
        a, b = int(offsets[g]), int(offsets[g + 1])
        gamma = stats[g].get("bn_gamma")
        per_channel = [stats[g]["l1"], stats[g]["l2"],
                       gamma.abs() if gamma is not None else torch.zeros(b - a),
                       features.mean[g], features.var[g], features.abs_mean[g],
                       features.zero_frac[g], features.max[g], deg[a:b], strength[a:b],
                       mean_sim[a:b]]
        z = standardize([c.detach().reshape(-1).cpu() for c in per_channel])
        ctx = [torch.full((b - a,), float(v), dtype=torch.float64) for v in
               (flops_share[g] * 10, params_share[g] * 10, budget.keep_ratio,
                g / max(num - 1, 1))]
        cols.append(z + ctx)
    x = torch.cat([torch.stack(c, dim=1) for c in cols], dim=0)
    return x.float()


# ----------------------------------------------------------------------------------------------
# the search


def _split(flat: torch.Tensor, offsets: torch.Tensor) -> List[torch.Tensor]:
    return [flat[int(offsets[g]):int(offsets[g + 1])] for g in range(offsets.numel() - 1)]


def _fingerprint(space, budget: Budget, ctx: SearchContext, opts: Dict[str, Any]) -> Dict[str, Any]:
    fp = {k: v for k, v in opts.items() if k != "episodes"}
    fp.update(seed=int(ctx.seed), sizes=[int(g.size) for g in space.groups],
              budget_flops=budget.flops, budget_params=budget.params, round_to=int(ctx.round_to))
    return fp


def _save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def search(space, ctx: SearchContext, features: Optional[ChannelFeatures] = None) -> MethodResult:
    """Run method A and return its keep-masks (bool [C_g] per group) and search facts.

    ``ctx.options`` may override any key of :data:`DEFAULTS`. With ``ctx.checkpoint_dir`` a
    checkpoint (agents, optimizer, sampler RNG, baseline, best mask, episode count, reward curve)
    is written after every update; ``ctx.resume=True`` continues from it, giving the same result as
    an uninterrupted run (for the same data order; ``prune`` seeds loader shuffling).
    """
    opts = _check_options(ctx.options)
    t_start = time.perf_counter()
    budget, device = ctx.budget, ctx.device
    if features is None:
        features = collect_features(space, ctx.loader, max_samples=opts["feature_samples"],
                                    device=device, progress=ctx.progress)
    offsets = group_offsets(space)
    raw, graph = build_channel_graph(features, offsets, k=opts["k"])
    x = node_features(space, features, raw, offsets, budget)
    sizes = [g.size for g in space.groups]

    gen = torch.Generator().manual_seed(int(ctx.seed))
    policy = ChannelGCNPolicy(sizes, x.shape[1], hidden=opts["hidden"], shared=opts["shared"],
                              generator=gen)
    if opts["warm_start"] == "l1":
        col = NODE_FEATURES.index("l1")
        z = _split(x[:, col].double(), offsets)
        target = project_to_budget(space, space.full_masks(), z, budget, round_to=ctx.round_to,
                                   fill=True)
        thresholds = torch.zeros(len(sizes), dtype=torch.float64)
        for g, (zg, mg) in enumerate(zip(z, target)):
            kept, dropped = zg[mg], zg[~mg]
            if dropped.numel() == 0:
                thresholds[g] = kept.min() - 1.0
            elif kept.numel() == 0:
                thresholds[g] = dropped.max() + 1.0
            else:
                thresholds[g] = 0.5 * (kept.min() + dropped.max())
        policy.warm_start(col, thresholds, float(opts["warm_start_scale"]))
    else:
        with torch.no_grad():
            policy.bias.fill_(math.log(budget.keep_ratio / max(1 - budget.keep_ratio, 1e-3)))
    optimizer = torch.optim.Adam(policy.parameters(), lr=float(opts["lr"]))

    source = ctx.val_loader if (opts["reward_source"] == "val" and ctx.val_loader is not None) else ctx.loader
    rewards = RewardSet.from_loader(source, opts["reward_samples"], device, opts["reward_batch_size"],
                                    "val_loader" if source is ctx.val_loader else "loader")
    four_d = (rewards.x.dim() == 4 and opts["channels_last"]
              and all(p.is_contiguous() for p in space.model.parameters() if p.dim() == 4))
    if four_d:
        # Only strides change (values are identical); undone in the finally below.
        space.model.to(memory_format=torch.channels_last)
        rewards.x = rewards.x.contiguous(memory_format=torch.channels_last)
    try:
        return _search_loop(space, ctx, opts, budget, raw, graph, x, offsets, policy, optimizer,
                            gen, rewards, t_start)
    finally:
        if four_d:
            space.model.to(memory_format=torch.contiguous_format)


def _search_loop(space, ctx, opts, budget, raw, graph, x, offsets, policy, optimizer, gen,
                 rewards, t_start) -> MethodResult:
    device = ctx.device
    scorer = _MaskScorer(space, rewards, opts["reward"], device)
    ax = None if opts["shared"] else ops.spmm(graph, x)

    def policy_logits() -> torch.Tensor:
        return policy(graph, x, ax)

    def feasible(masks_flat: torch.Tensor, scores_flat: torch.Tensor) -> List[torch.Tensor]:
        return project_to_budget(space, _split(masks_flat, offsets), _split(scores_flat, offsets),
                                 budget, round_to=ctx.round_to, fill=bool(opts["fill_budget"]))

    def greedy(logits: torch.Tensor) -> List[torch.Tensor]:
        return feasible(logits > 0, logits.double())

    state: Dict[str, Any] = dict(update=0, episodes=0, baseline=None, best_masks=None,
                                 best_key=None, reward_curve=[], greedy_curve=[])
    fingerprint = _fingerprint(space, budget, ctx, opts)
    ckpt_path = None
    if ctx.checkpoint_dir is not None:
        os.makedirs(ctx.checkpoint_dir, exist_ok=True)
        ckpt_path = os.path.join(ctx.checkpoint_dir, CHECKPOINT_NAME)
    if ctx.resume and ckpt_path is not None and os.path.exists(ckpt_path):
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if saved["fingerprint"] != fingerprint:
            diff = sorted(k for k in set(saved["fingerprint"]) | set(fingerprint)
                          if saved["fingerprint"].get(k) != fingerprint.get(k))
            raise ValueError(f"checkpoint {ckpt_path} belongs to a different search (differs in "
                             f"{diff}); use another checkpoint_dir or resume=False")
        policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["rng"])
        state = saved["state"]

    def consider(masks: List[torch.Tensor], result: Tuple[float, float, float]) -> None:
        key = (result[0], -result[2])  # reward, then lower loss breaks ties
        if state["best_key"] is None or key > tuple(state["best_key"]):
            state["best_key"] = list(key)
            state["best_masks"] = [m.clone() for m in masks]

    per_update = opts["episodes_per_update"]
    total_updates = math.ceil(opts["episodes"] / per_update)
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=opts["episodes"], initial=min(state["episodes"], opts["episodes"]),
                   desc="channel-gcn search", unit="ep", leave=False)
    while state["update"] < total_updates:
        n_ep = min(per_update, opts["episodes"] - state["update"] * per_update)
        with torch.no_grad():
            logits = policy_logits()
            g_masks = greedy(logits)
            g_res = scorer(g_masks)
            consider(g_masks, g_res)
            state["greedy_curve"].append(g_res[0])
            pi = torch.sigmoid(logits)
        flat_masks, rewards_e = [], []
        for _ in range(n_ep):
            sample = torch.bernoulli(pi, generator=gen).bool()
            masks = feasible(sample, logits.double())
            res = scorer(masks)
            consider(masks, res)
            flat_masks.append(torch.cat(masks))
            rewards_e.append(res[0])
            state["reward_curve"].append(res[0])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{res[0]:.4f}", best=f"{state['best_key'][0]:.4f}")
        r = torch.tensor(rewards_e, dtype=torch.float32)
        if state["baseline"] is None:
            state["baseline"] = float(r.mean())
        adv = r - state["baseline"]
        # unit-scale advantages; the floor (1 point of accuracy) keeps near-identical rewards
        # from being blown up into large updates
        adv = adv / max(float(r.std(unbiased=False)) if n_ep > 1 else 0.0, 1e-2)
        actions = torch.stack(flat_masks).float()  # [E, N]
        old_logp = None
        for _epoch in range(opts["ppo_epochs"] if opts["ppo"] else 1):
            logits_t = policy_logits()
            logp = -F.binary_cross_entropy_with_logits(
                logits_t.expand_as(actions), actions, reduction="none")  # [E, N]
            p = torch.sigmoid(logits_t)
            # mean Bernoulli entropy per channel (differentiable through p and the logs)
            entropy = -(p * F.logsigmoid(logits_t) + (1 - p) * F.logsigmoid(-logits_t)).mean()
            if opts["ppo"]:
                if old_logp is None:
                    old_logp = logp.detach()
                ratio = torch.exp(logp - old_logp)
                clipped = ratio.clamp(1 - opts["ppo_clip"], 1 + opts["ppo_clip"])
                pg = -torch.minimum(ratio * adv[:, None], clipped * adv[:, None]).mean()
            else:
                pg = -(adv[:, None] * logp).mean()
            loss = pg - float(opts["entropy_coef"]) * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        m = float(opts["baseline_momentum"])
        state["baseline"] = m * state["baseline"] + (1 - m) * float(r.mean())
        state["update"] += 1
        state["episodes"] += n_ep
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, {"fingerprint": fingerprint, "policy": policy.state_dict(),
                                         "optimizer": optimizer.state_dict(),
                                         "rng": gen.get_state(), "state": state})
    if bar is not None:
        bar.close()
    with torch.no_grad():
        final_logits = policy_logits()
        g_masks = greedy(final_logits)
        g_res = scorer(g_masks)
        consider(g_masks, g_res)
    best = state["best_masks"]
    info = {
        "episodes": state["episodes"],
        "updates": state["update"],
        "reward_curve": [float(v) for v in state["reward_curve"]],
        "greedy_curve": [float(v) for v in state["greedy_curve"]],
        "best_reward": float(state["best_key"][0]),
        "final_greedy_reward": float(g_res[0]),
        "reward": opts["reward"],
        "reward_samples": len(rewards),
        "masked_evaluations": scorer.evaluations,
        "graph_edges": int(raw.nnz),
        "search_time_s": time.perf_counter() - t_start,
    }
    return MethodResult([m.clone() for m in best], info)
