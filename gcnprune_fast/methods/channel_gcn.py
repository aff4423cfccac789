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

Design choices not fixed by the spec (all options, see :class:`ChannelGCNOptions`):
- warm start: the policy starts as a soft global-L1 ranking (pi > 0.5 exactly for the channels
  global L1 ranking keeps, sharpness ``warm_start_scale``), so exploration concentrates at the
  decision boundary and the greedy mask of update 0 keeps every channel the L1 baseline keeps
  (the budget fill, in the order of the logits, may add a few more where rounding leaves room:
  tests/test_search_learns.py); the search can only improve on it (on the reward set).
- the log-probability in the policy gradient is that of the *projected* mask (the action the
  environment executed), as in AMC's action wall.
- evaluated masks are cached by content, so repeated samples cost no forward pass.
- reward "accuracy_bn" (default) instead of plain masked accuracy: the final model is scored after
  BN re-estimation, and masked accuracy with the *original* BN statistics ranks masks poorly (on a
  trained SimpleCNN at 30% FLOPs the search with plain accuracy drifted below its L1 warm start,
  with accuracy_bn it gained +5 to +12 points over L1). It costs no extra forward: BN runs with
  the reward set's batch statistics (see :meth:`RewardSet.evaluate_with_bn`).
- masked evaluation runs in channels_last (measured 1.46x less CPU time on ResNet-56).

The reward set, mask scorer, checkpointing and the policy-gradient step are the shared search
parts of :mod:`gcnprune_fast.methods.search`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from gcnprune_fast import distributed, ops
from gcnprune_fast.features import ChannelFeatures, collect_features
from gcnprune_fast.methods.agents import ChannelGCNPolicy
from gcnprune_fast.methods.allocation import Budget, project_to_budget, standardize
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.registry import get_method, option, register_method
from gcnprune_fast.methods.search import (REWARD_KINDS, MaskScorer, MovingBaseline, RewardSet,
                                          SearchCheckpoint, bernoulli_policy_update,
                                          channels_last_evaluation, leave_one_out_advantages,
                                          mask_key, normalized_advantages)
from gcnprune_fast.methods.search.rerank import (RERANK_AFTER_SEARCH_OPTIONS, RerankOptions,
                                                  check_rerank_options, rerank_search_candidates)
from gcnprune_fast.utils import format_duration

logger = logging.getLogger("gcnprune_fast")

__all__ = ["NAME", "ChannelGCNOptions", "build_channel_graph", "node_features", "search",
           "CHECKPOINT_NAME", "NODE_FEATURES", "default_episodes"]

NAME = "channel-gcn"
CHECKPOINT_NAME = "channel_gcn_search.pt"


@dataclass
class ChannelGCNOptions(RerankOptions):
    """Options of channel-gcn (``prune(..., episodes=100)`` or ``--option episodes=100``); the
    re-ranking options (choose by accuracy after a short fine-tune) come from
    :class:`~gcnprune_fast.methods.search.rerank.RerankOptions`."""

    episodes: Optional[int] = option(None, "total sampled masks; None = auto: on the CPU the "
                                     "time of 300 episodes of ResNet-56 on CIFAR-10, between 50 "
                                     "and 600 episodes (default_episodes); 600 on a GPU",
                                     minimum=1)
    episodes_per_update: int = option(10, "masks per policy update", minimum=1)
    k: int = option(8, "kNN neighbours per channel", minimum=1)
    similarity: str = option("cosine", "channel-graph similarity: centered cosine, or kl = "
                             "exp(-symmetric KL) of the softmax of each channel's z-scored GAP "
                             "values (Jiang et al. 2022)", choices=("cosine", "kl"))
    hidden: int = option(32, "GCN width", minimum=1)
    shared: bool = option(False, "one shared GCN + group embedding instead of one per group")
    lr: float = option(0.005, "Adam learning rate of the agents", minimum=0.0)
    entropy_coef: float = option(0.01, "weight of the mean per-channel entropy bonus")
    baseline: str = option("moving", "the policy gradient's reward baseline: moving = a moving "
                           "average over updates (momentum baseline_momentum); leave_one_out = "
                           "the mean of the other episodes of the same update",
                           choices=("moving", "leave_one_out"))
    baseline_momentum: float = option(0.9, "moving-average reward baseline", minimum=0.0)
    reward: str = option("accuracy_bn", "accuracy_bn: top-1 with BN statistics re-estimated on "
                         "the reward set; accuracy: with the original BN statistics; loss: -CE",
                         choices=REWARD_KINDS)
    reward_samples: int = option(256, "images in the cached reward set", minimum=1)
    reward_batch_size: int = option(256, "forward chunk for masked evaluation", minimum=1)
    reward_source: str = option("loader", "where the reward set comes from", choices=("loader", "val"))
    feature_samples: int = option(512, "images for the GAP features", minimum=1)
    heldout_samples: int = option(512, "images of val_loader on which the greedy mask of every "
                                  "update is also scored (the report's held-out curve: does what "
                                  "the search learns hold on data it never saw?); chooses "
                                  "nothing unless rerank_greedy; 0 = off", minimum=0)
    rerank_greedy: bool = option(False, "re-ranking also considers the greedy mask with the best "
                                 "held-out score over the search (candidate 'greedy-heldout'; "
                                 "needs heldout_samples > 0, rerank_top > 0 and the RL search)")
    ppo: bool = option(False, "PPO-clip instead of REINFORCE")
    ppo_epochs: int = option(4, "PPO epochs per update", minimum=1)
    ppo_clip: float = option(0.2, "PPO clip range", minimum=0.0)
    warm_start: Optional[str] = option("l1", "start as a soft global-L1 ranking, or from the "
                                       "budget's keep ratio", choices=("l1", "none", None))
    warm_start_scale: float = option(3.0, "logit slope per standard deviation of L1 at the "
                                     "warm start")
    fill_budget: bool = option(True, "after the action wall, add back top-pi channels while "
                               "feasible")
    channels_last: bool = option(True, "run masked evaluation in channels_last (1.3-1.7x faster "
                                 "on CPU)")
    # ablations (docs/METHODS.md): each switches off one design choice
    gcn: bool = option(True, "ablation: False drops the GCN branch (a linear policy on the node "
                       "features: skip + bias only)")
    graph: str = option("knn", "ablation: 'identity' propagates over the identity graph (an MLP "
                        "on the same node features) instead of the kNN channel graph",
                        choices=("knn", "identity"))
    search: str = option("rl", "ablation: 'random' replaces the policy-gradient search by a "
                         "matched-compute random search (the warm start plus random per-group "
                         "width changes, the same number of scored masks)",
                         choices=("rl", "random"))
    random_width_step: float = option(0.1, "search=random: largest per-group width change, as a "
                                      "fraction of the group", minimum=0.0)


# ``episodes=None``: each episode is one forward of the reward set, so on the CPU the default is
# a time budget: the time of 300 episodes of a 130M-MAC model (ResNet-56 on CIFAR-10, about 4
# minutes on 2 cores). Cheaper models get more episodes, up to 600 (ResNet-20 at 30% FLOPs: the
# held-out greedy curve still rises at 300, and 600 keep more accuracy after fine-tuning,
# docs/QUALITY.md), costlier ones fewer, at least 50 (a torchvision ResNet-18 at 64 px, 149M,
# took 11 minutes for 300 in issue 9; a ResNet-50 at 224 px costs 32 times more per image). On
# a GPU 300 episodes of a ResNet-50 take about a minute (README): the full 600 there.
AUTO_EPISODES, AUTO_EPISODES_REFERENCE_FLOPS = 300, 130e6
AUTO_EPISODES_MIN, AUTO_EPISODES_MAX = 50, 600


def default_episodes(base_flops: float, episodes_per_update: int, device="cpu") -> int:
    """Episodes of ``episodes=None``: 600 on an accelerator; on the CPU 300 scaled by 130M /
    MACs per image (the same search time as 300 episodes of ResNet-56 on CIFAR-10), rounded to
    whole updates, between 50 and 600."""
    if torch.device(device).type != "cpu":
        return AUTO_EPISODES_MAX
    scaled = AUTO_EPISODES * AUTO_EPISODES_REFERENCE_FLOPS / max(float(base_flops), 1.0)
    per = max(int(episodes_per_update), 1)
    return int(min(AUTO_EPISODES_MAX, max(AUTO_EPISODES_MIN, round(scaled / per) * per)))


NODE_FEATURES = ("l1", "l2", "bn_gamma", "act_mean", "act_var", "act_abs_mean", "act_zero_frac",
                 "act_max", "degree", "strength", "mean_neighbour_sim", "flops_share",
                 "params_share", "budget", "depth")


# ----------------------------------------------------------------------------------------------
# graph and node features


def build_channel_graph(features: ChannelFeatures, offsets: torch.Tensor, k: int = 8,
                        similarity: str = "cosine") -> Tuple[ops.CSRGraph, ops.CSRGraph]:
    """One batched kNN call over every group's GAP matrix; returns (raw graph with weights
    max(cos, 0) -- or the KL similarity in [0, 1] with ``similarity="kl"`` -- and no self loops,
    GCN-normalized graph D^-1/2 (A + I) D^-1/2). Both [N, N] block-diagonal, N = total channels."""
    f = torch.cat(features.gap, dim=0).float()  # [N, B]
    raw = ops.knn_graph(f, k, segments=offsets, center=True, similarity=similarity)
    return raw, ops.gcn_norm(raw, add_self_loops=True)


def identity_graph(num_nodes: int) -> ops.CSRGraph:
    """The normalized graph of an ablation without propagation: A_norm = I."""
    idx = torch.arange(num_nodes, dtype=torch.long)
    return ops.CSRGraph(torch.arange(num_nodes + 1, dtype=torch.long), idx,
                        torch.ones(num_nodes, dtype=torch.float32))


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


# options that never change what the search does: left out of its checkpoint fingerprint
_NOT_FINGERPRINTED = (("episodes", "heldout_samples", "rerank_greedy")
                      + tuple(RERANK_AFTER_SEARCH_OPTIONS))


def _fingerprint(space, budget: Budget, seed: int, opts: ChannelGCNOptions) -> Dict[str, Any]:
    """What the checkpoint must match to be resumed (``episodes`` may grow on resume; the
    re-ranking options other than ``rerank_top``, which sets how many best masks the search
    keeps, are read after the search, so a finished search serves runs that differ in them;
    ``heldout_samples`` only adds a diagnostic curve)."""
    fp = {k: v for k, v in dataclasses.asdict(opts).items() if k not in _NOT_FINGERPRINTED}
    fp.update(seed=int(seed), sizes=[int(g.size) for g in space.groups],
              budget_flops=budget.flops, budget_params=budget.params, **budget.fingerprint_extra(), round_to=int(space.round_to))
    return fp


def _warm_start(policy: ChannelGCNPolicy, space, x: torch.Tensor, offsets: torch.Tensor,
                budget: Budget, opts: ChannelGCNOptions) -> None:
    """Start the policy as a soft global-L1 ranking (or from the budget's keep ratio)."""
    if opts.warm_start == "l1":
        col = NODE_FEATURES.index("l1")
        z = _split(x[:, col].double(), offsets)
        target = project_to_budget(space, space.full_masks(), z, budget, fill=True)
        thresholds = torch.zeros(space.num_groups, dtype=torch.float64)
        for g, (zg, mg) in enumerate(zip(z, target)):
            kept, dropped = zg[mg], zg[~mg]
            if dropped.numel() == 0:
                thresholds[g] = kept.min() - 1.0
            elif kept.numel() == 0:
                thresholds[g] = dropped.max() + 1.0
            else:
                thresholds[g] = 0.5 * (kept.min() + dropped.max())
        policy.warm_start(col, thresholds, float(opts.warm_start_scale))
    else:
        with torch.no_grad():
            policy.bias.fill_(math.log(budget.keep_ratio / max(1 - budget.keep_ratio, 1e-3)))


def search(space, ctx: SearchContext, features: Optional[ChannelFeatures] = None) -> MethodResult:
    """Run method A and return its keep-masks (bool [C_g] per group) and search facts.

    ``ctx.options`` is a :class:`ChannelGCNOptions` (or a dict of overrides). With
    ``ctx.checkpoint_dir`` a checkpoint (agents, optimizer, sampler RNG, baseline, best mask,
    episode count, reward curve) is written after every update; ``ctx.resume=True`` continues from
    it, giving the same result as an uninterrupted run (for the same data order; ``prune`` seeds
    loader shuffling).
    """
    opts = get_method(NAME).resolve_options(ctx.options)
    check_rerank_options(NAME, opts)
    if opts.rerank_greedy and (opts.rerank_top == 0 or opts.heldout_samples == 0
                               or opts.search == "random"):
        raise ValueError(f"{NAME}: rerank_greedy=True re-ranks the RL search's best held-out "
                         f"greedy mask: it needs rerank_top > 0 and heldout_samples > 0 and "
                         f"search='rl' (got rerank_top={opts.rerank_top}, heldout_samples="
                         f"{opts.heldout_samples}, search={opts.search!r})")
    if opts.episodes is None:
        opts = dataclasses.replace(opts, episodes=default_episodes(
            space.base_flops, opts.episodes_per_update, ctx.device))
        logger.info("%s: %d episodes (the default for %.0fM MACs per image on %s; episodes= to "
                    "change)", NAME, opts.episodes, float(space.base_flops) / 1e6,
                    torch.device(ctx.device).type)
    t_start = time.perf_counter()
    budget, device = ctx.budget, ctx.device
    if features is None:
        features = collect_features(space, ctx.loader, max_samples=opts.feature_samples,
                                    device=device, progress=ctx.progress)
    offsets = space.group_offsets()
    raw, graph = build_channel_graph(features, offsets, k=opts.k, similarity=opts.similarity)
    x = node_features(space, features, raw, offsets, budget)
    if opts.graph == "identity":
        graph = identity_graph(int(offsets[-1]))

    gen = torch.Generator().manual_seed(int(ctx.seed))
    policy = ChannelGCNPolicy([g.size for g in space.groups], x.shape[1], hidden=opts.hidden,
                              shared=opts.shared, use_gcn=opts.gcn, generator=gen)
    _warm_start(policy, space, x, offsets, budget, opts)
    optimizer = torch.optim.Adam(policy.parameters(), lr=float(opts.lr))

    use_val = opts.reward_source == "val" and ctx.val_loader is not None
    rewards = RewardSet.from_loader(ctx.val_loader if use_val else ctx.loader, opts.reward_samples,
                                    device, opts.reward_batch_size,
                                    "val_loader" if use_val else "loader")
    heldout = _heldout_scorer(space, ctx, opts)
    run = _ChannelSearch(space=space, ctx=ctx, opts=opts, offsets=offsets, raw=raw, graph=graph,
                         x=x, policy=policy, optimizer=optimizer, gen=gen,
                         scorer=MaskScorer(space, rewards, opts.reward, device),
                         heldout=heldout)
    with channels_last_evaluation(space, rewards, opts.channels_last) as switched:
        if switched and heldout is not None and heldout.rewards.x.dim() == 4:
            heldout.rewards.x = heldout.rewards.x.contiguous(memory_format=torch.channels_last)
        info = run.random_search() if opts.search == "random" else run.loop()
    masks = [m.clone() for m in run.state["best_masks"]]
    if opts.rerank_top > 0:
        masks = _rerank(run, masks, info)
    info["search_time_s"] = time.perf_counter() - t_start
    return MethodResult(masks, info)


def _heldout_scorer(space, ctx: SearchContext, opts: ChannelGCNOptions) -> Optional[MaskScorer]:
    """The scorer of the held-out greedy curve: the first ``heldout_samples`` images of
    ``val_loader``, scored with the search's reward kind (so ``accuracy_bn`` re-estimates BN on
    that set). None when off, without a ``val_loader`` distinct from the search loader (``prune``
    passes the loader itself when it is too small to hold anything out), or when the reward set
    comes from ``val_loader`` (``reward_source="val"``): nothing would be held out."""
    if (opts.heldout_samples == 0 or ctx.val_loader is None or ctx.val_loader is ctx.loader
            or opts.reward_source == "val"):
        return None
    images = RewardSet.from_loader(ctx.val_loader, opts.heldout_samples, ctx.device,
                                   opts.reward_batch_size, "val_loader")
    return MaskScorer(space, images, opts.reward, ctx.device)


def _rerank(run: "_ChannelSearch", best: List[torch.Tensor], info: Dict[str, Any]
            ) -> List[torch.Tensor]:
    """The search's best distinct masks (and the criteria's allocations) re-ranked by selection
    accuracy after a short fine-tune (:func:`~gcnprune_fast.methods.search.rerank.
    rerank_search_candidates`)."""
    # the best distinct masks, best first (``best`` heads the list: see _ChannelSearch.consider)
    found = [masks for _, masks in run.state.get("top", [])] or [best]
    extra = []
    if run.opts.rerank_greedy:
        greedy = run.state.get("best_heldout")
        if greedy is None:
            logger.warning("%s: rerank_greedy: no greedy mask was scored on held-out data (no "
                           "val_loader, or a search resumed from a checkpoint without them)", NAME)
        else:  # rerank() scores it once, under the search's name, if it is one of their masks
            extra.append(("greedy-heldout", greedy[1]))
    return rerank_search_candidates(NAME, run.space, run.ctx, run.opts, found, info, extra=extra)


@dataclass
class _ChannelSearch:
    """Everything one channel-gcn search works with; :meth:`loop` runs it."""

    space: Any
    ctx: SearchContext
    opts: ChannelGCNOptions
    offsets: torch.Tensor
    raw: ops.CSRGraph
    graph: ops.CSRGraph
    x: torch.Tensor
    policy: ChannelGCNPolicy
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    scorer: MaskScorer
    heldout: Optional[MaskScorer] = None  # the held-out greedy curve's scorer (None = off)

    def __post_init__(self) -> None:
        # x is constant during the search: the first layer's aggregation A X is computed once.
        self.ax = None if self.opts.shared else ops.spmm(self.graph, self.x)
        self.state: Dict[str, Any] = dict(update=0, episodes=0, baseline=None, best_masks=None,
                                          best_key=None, reward_curve=[], greedy_curve=[], top=[],
                                          greedy_heldout_curve=[], best_heldout=None)

    def record_greedy(self, masks: List[torch.Tensor], result: Tuple[float, float, float]) -> None:
        """Append a greedy mask's reward to the greedy curve, and its held-out reward to the
        held-out curve when one is kept."""
        self.state["greedy_curve"].append(result[0])
        if self.heldout is not None:
            self.state["greedy_heldout_curve"].append(self.note_heldout(masks))

    def note_heldout(self, masks: List[torch.Tensor]) -> float:
        """A greedy mask's held-out reward; the best such mask so far is kept in the state
        (``best_heldout``: (reward, masks), the 'greedy-heldout' candidate of rerank_greedy)."""
        reward = self.heldout(masks)[0]
        best = self.state.get("best_heldout")
        if best is None or reward > best[0]:
            self.state["best_heldout"] = (reward, [m.clone() for m in masks])
        return reward

    def greedy_info(self, final: Tuple[List[torch.Tensor], Tuple[float, float, float]]
                    ) -> Dict[str, Any]:
        """The report's greedy-mask entries; ``final`` = (masks, score) after the last update.
        Held-out entries are None for updates run before a resume by a search that kept no
        held-out curve."""
        info = {"greedy_curve": [float(v) for v in self.state["greedy_curve"]],
                "final_greedy_reward": float(final[1][0])}
        if self.heldout is not None:
            curve = self.state["greedy_heldout_curve"]
            info.update(greedy_heldout_curve=[None if v is None else float(v) for v in curve],
                        final_greedy_heldout_reward=float(self.note_heldout(final[0])),
                        heldout_samples=len(self.heldout.rewards))
        return info

    def logits(self) -> torch.Tensor:
        return self.policy(self.graph, self.x, self.ax)

    def feasible(self, masks_flat: torch.Tensor, scores_flat: torch.Tensor) -> List[torch.Tensor]:
        """The action wall applied to a flat proposal (lowest-scored channels removed first)."""
        return project_to_budget(self.space, _split(masks_flat, self.offsets),
                                 _split(scores_flat, self.offsets), self.ctx.budget,
                                 fill=bool(self.opts.fill_budget))

    def greedy(self, logits: torch.Tensor) -> List[torch.Tensor]:
        return self.feasible(logits > 0, logits.double())

    def score_proposals(self, proposals: List[torch.Tensor], scores_flat: torch.Tensor
                        ) -> List[Tuple[List[torch.Tensor], Tuple[float, float, float]]]:
        """(feasible masks, score) of each flat proposal, in order. Under torch.distributed the
        proposals are split across the ranks (projection and scoring; rank r takes proposals r,
        r+N, ...) and the results all-gathered, so every rank gets the same list; each rank
        caches the others' scores too."""
        def one(proposal: torch.Tensor):
            masks = self.feasible(proposal, scores_flat)
            return masks, self.scorer(masks)

        out = distributed.map_split(one, proposals)
        if distributed.is_distributed():
            for masks, res in out:
                self.scorer.remember(masks, res)
        return out

    def consider(self, masks: List[torch.Tensor], result: Tuple[float, float, float]) -> None:
        """Keep the best mask seen: highest reward, then lowest loss."""
        key = (result[0], -result[2])
        if self.state["best_key"] is None or key > tuple(self.state["best_key"]):
            self.state["best_key"] = list(key)
            self.state["best_masks"] = [m.clone() for m in masks]
        if self.opts.rerank_top > 0:  # the best distinct masks, for re-ranking
            top = self.state.setdefault("top", [])
            if mask_key(masks) not in {mask_key(t[1]) for t in top}:
                top.append([list(key), [m.clone() for m in masks]])
                top.sort(key=lambda t: tuple(t[0]), reverse=True)
                del top[self.opts.rerank_top:]

    def random_search(self) -> Dict[str, Any]:
        """The matched-compute ablation of the RL search: the warm start's greedy mask, then
        ``episodes`` masks that change every group's width by a random amount (up to
        ``random_width_step`` of the group, channels ranked by the warm start's logits) and are
        projected onto the budget; the best scored mask wins. No checkpoint (it is cheap to rerun
        and never the default)."""
        opts, state = self.opts, self.state
        with torch.no_grad():
            logits = self.logits()
        start = self.greedy(logits)
        start_res = self.scorer(start)
        self.consider(start, start_res)
        self.record_greedy(start, start_res)
        scores = _split(logits.double(), self.offsets)
        proposals = []
        for _ in range(opts.episodes):
            masks = []
            for g, (m, sc) in enumerate(zip(start, scores)):
                size = m.numel()
                step = max(int(round(opts.random_width_step * size)), 1)
                delta = int(torch.randint(-step, step + 1, (1,), generator=self.gen))
                count = min(max(int(m.sum()) + delta, 1), size)
                keep = torch.zeros(size, dtype=torch.bool)
                keep[torch.argsort(sc, descending=True, stable=True)[:count]] = True
                masks.append(keep)
            proposals.append(torch.cat(masks))
        for masks, res in self.score_proposals(proposals, logits.double()):
            self.consider(masks, res)
            state["reward_curve"].append(res[0])
            state["episodes"] += 1
        return {
            "episodes": state["episodes"], "updates": 0,
            "reward_curve": [float(v) for v in state["reward_curve"]],
            **self.greedy_info((start, start_res)),
            "best_reward": float(state["best_key"][0]), "reward": opts.reward, "reward_samples": len(self.scorer.rewards),
            "masked_evaluations": self.evaluations(), "graph_edges": int(self.raw.nnz),
        }

    def loop(self) -> Dict[str, Any]:
        opts, state = self.opts, self.state
        checkpoint = SearchCheckpoint(self.ctx.checkpoint_dir, CHECKPOINT_NAME,
                                      _fingerprint(self.space, self.ctx.budget, self.ctx.seed, opts))
        saved = checkpoint.load(self.ctx.resume)
        if saved is not None:
            self.policy.load_state_dict(saved["policy"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.gen.set_state(saved["rng"])
            state = self.state = saved["state"]
            # a checkpoint written without the held-out curve (off, or older code): None where
            # its greedy masks were not scored on held-out images
            curve = state.setdefault("greedy_heldout_curve", [])
            curve.extend([None] * (len(state["greedy_curve"]) - len(curve)))
            state.setdefault("best_heldout", None)
        per_update = opts.episodes_per_update
        total_updates = math.ceil(opts.episodes / per_update)
        baseline = MovingBaseline(opts.baseline_momentum, state["baseline"])
        bar = None
        if self.ctx.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=opts.episodes, initial=min(state["episodes"], opts.episodes),
                       desc=f"{NAME} search", unit="ep", leave=False)
        first_update = state["update"]
        t_first = time.perf_counter()
        while state["update"] < total_updates:
            if state["update"] == first_update + 1 and state["update"] < total_updates:
                # the first update run here tells what the rest will take
                left = total_updates - state["update"]
                took = time.perf_counter() - t_first
                logger.info("%s: an update (%d episodes) took %s; about %s for the %d updates "
                            "left (episodes= to shorten)", NAME, per_update,
                            format_duration(took), format_duration(took * left), left)
            n_ep = min(per_update, opts.episodes - state["update"] * per_update)
            with torch.no_grad():
                logits = self.logits()
                pi = torch.sigmoid(logits)
            # every rank draws all samples from the same generator; the greedy mask and the
            # samples are projected and scored split across the ranks (one process: in order)
            samples = [torch.bernoulli(pi, generator=self.gen).bool() for _ in range(n_ep)]
            scored = self.score_proposals([logits > 0] + samples, logits.double())
            g_masks, g_res = scored[0]
            self.consider(g_masks, g_res)
            self.record_greedy(g_masks, g_res)
            flat_masks, rewards_e = [], []
            for masks, res in scored[1:]:
                self.consider(masks, res)
                flat_masks.append(torch.cat(masks))
                rewards_e.append(res[0])
                state["reward_curve"].append(res[0])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{res[0]:.4f}", best=f"{state['best_key'][0]:.4f}")
            r = torch.tensor(rewards_e, dtype=torch.float32)
            moving = opts.baseline == "moving"
            adv = normalized_advantages(r, baseline.advantages(r) if moving
                                        else leave_one_out_advantages(r))
            # the log-probability is that of the executed (projected) mask, as in AMC's action wall
            bernoulli_policy_update(self.optimizer, self.logits, torch.stack(flat_masks).float(), adv,
                                    entropy_coef=opts.entropy_coef, ppo=opts.ppo,
                                    ppo_epochs=opts.ppo_epochs, ppo_clip=opts.ppo_clip)
            if moving:
                baseline.update(r)
                state["baseline"] = baseline.value
            state["update"] += 1
            state["episodes"] += n_ep
            checkpoint.save(policy=self.policy.state_dict(), optimizer=self.optimizer.state_dict(),
                            rng=self.gen.get_state(), state=state)
        if bar is not None:
            bar.close()
        with torch.no_grad():
            logits = self.logits()
        (g_masks, g_res), = self.score_proposals([logits > 0], logits.double())
        self.consider(g_masks, g_res)
        return {
            "episodes": state["episodes"],
            "updates": state["update"],
            "reward_curve": [float(v) for v in state["reward_curve"]],
            **self.greedy_info((g_masks, g_res)),
            "best_reward": float(state["best_key"][0]),
            "reward": opts.reward,
            "reward_samples": len(self.scorer.rewards),
            "masked_evaluations": self.evaluations(),
            "graph_edges": int(self.raw.nnz),
        }

    def evaluations(self) -> int:
        """Forward passes run by the scorer (summed over the ranks of a distributed search)."""
        return int(distributed.all_reduce_numbers([self.scorer.evaluations])[0])


@register_method(NAME, options=ChannelGCNOptions, supports_resume=True, is_default=True,
                 in_demo=True, summary="method A: channel graphs with per-layer GCN agents trained "
                 "by RL (Jiang et al. 2022)")
def run(ctx: SearchContext) -> MethodResult:
    """Method A on ``ctx.space`` (see the module docstring)."""
    return search(ctx.space, ctx)
