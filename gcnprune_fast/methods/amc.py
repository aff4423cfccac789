"""AMC (He et al. 2018, mit-han-lab/amc) as a method of its own: DDPG over hand-crafted layer
states, one keep ratio per pruning group, L1 slicing, reward after BN re-estimation.

- state of the group decided at step t: AMC's static layer embedding (index, type, in / out
  channels, kernel, stride, feature-map size, FLOPs, params; min-max scaled, see
  :mod:`.search.layer_features`) plus FLOPs removed so far, FLOPs left and the previous action;
- action: keep ratio in [0.2, 1] (AMC's bounds), widths rounded to multiples of 8 where a group is
  at least 32 channels wide (``channel_round``), AMC's action wall for the budget
  (:class:`~gcnprune_fast.methods.search.ratio_search.RatioEnvironment`);
- reward: top-1 accuracy on the cached reward set of the network sliced by filter L1 (the original
  weights, the top-L1 channels of each group), with BN statistics re-estimated on the set
  (``reward="accuracy_bn"``; AMC used 0.01 x top-5 accuracy without re-estimation);
- agent: AMC's DDPG (:mod:`.search.ddpg`): 300-300 actor / critic, lr 1e-4 / 1e-3, tau 0.01,
  warm-up episodes of random actions, truncated-normal noise 0.5 decaying 0.95 per episode;
- result: the best configuration seen (or the final noise-free episode if it scores higher);
  with ``rerank_top`` > 0 the best distinct configurations and the plain criteria's allocations
  are re-ranked by selection accuracy after a short fine-tune (:mod:`.search.rerank`, as
  channel-gcn and graph-pruning), so the ancestor can be compared with them on equal terms.

Defaults shorten AMC's schedule (100 warm-up + 800 episodes) to 100 + 300 for a CPU budget;
``episodes`` / ``warmup`` restore it. Checkpoint ``amc_search.pt`` every ``checkpoint_every``
episodes; ``resume=True`` continues exactly.

Under torch.distributed the warm-up episodes are scored split across the ranks and each later
episode on rank 0 (its actions depend on the previous reward); every rank runs the same agent, so
the result is the one of a single process (see :mod:`.search.ratio_search`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from gcnprune_fast import distributed
from gcnprune_fast.methods.allocation import masks_from_counts
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.registry import get_method, option, register_method
from gcnprune_fast.methods.search import MaskScorer, SearchCheckpoint, channels_last_evaluation
from gcnprune_fast.methods.search.layer_features import (decision_order, dynamic_features,
                                                         layer_embedding)
from gcnprune_fast.methods.search.ratio_search import (RatioEnvironment, RatioSearchOptions,
                                                       make_ddpg, reward_set, run_ratio_search,
                                                       search_facts)
from gcnprune_fast.methods.search.rerank import (RERANK_OPTIONS, RerankOptions,
                                                  check_rerank_options, rerank_search_candidates)

__all__ = ["NAME", "AMCOptions", "search", "CHECKPOINT_NAME"]

NAME = "amc"
CHECKPOINT_NAME = "amc_search.pt"


@dataclass
class AMCOptions(RatioSearchOptions, RerankOptions):
    """Options of amc (AMC's defaults where they exist; re-ranking, off by default, from
    :class:`~gcnprune_fast.methods.search.rerank.RerankOptions`)."""

    episodes: int = option(400, "search episodes, warm-up included (AMC: 900)", minimum=1)
    action_low: float = option(0.2, "smallest keep ratio an action may ask for (AMC: 0.2)",
                               minimum=0.01)
    channel_round: int = option(8, "round widths to this many channels where a group is at least "
                                "4x as wide (AMC: 8)", minimum=1)
    channels_last: bool = option(True, "run masked evaluation in channels_last (faster on CPU)")


def _fingerprint(space, ctx: SearchContext, opts: AMCOptions) -> Dict[str, Any]:
    fp = {k: v for k, v in dataclasses.asdict(opts).items()
          if k not in ("episodes", "checkpoint_every") + RERANK_OPTIONS}
    fp.update(seed=int(ctx.seed), sizes=[int(g.size) for g in space.groups],
              budget_flops=ctx.budget.flops, budget_params=ctx.budget.params, **ctx.budget.fingerprint_extra(),
              round_to=int(space.round_to), min_channels=int(space.min_channels))
    return fp


def search(space, ctx: SearchContext) -> MethodResult:
    """Run amc on ``space`` (options :class:`AMCOptions` or a dict of overrides)."""
    opts = get_method(NAME).resolve_options(ctx.options)
    check_rerank_options(NAME, opts)
    if not opts.action_low < 1.0:
        raise ValueError(f"method {NAME!r} option action_low must be < 1, got {opts.action_low!r}")
    t_start = time.perf_counter()
    order = decision_order(space)
    embedding = layer_embedding(space, order)
    scores = [s["l1"].detach().to(torch.float64).cpu() for s in space.weight_stats()]
    rewards = reward_set(ctx, opts)
    scorer = MaskScorer(space, rewards, opts.reward, ctx.device)

    def score_fn(counts: List[int]):
        return scorer(masks_from_counts(scores, counts))

    def remember(counts: List[int], result) -> None:
        scorer.remember(masks_from_counts(scores, counts), result)

    def state_fn(t: int, counts: List[int], previous: float) -> torch.Tensor:
        dyn = dynamic_features(space, counts, order[:t], order[t:], previous)
        return torch.cat([embedding[order[t]], dyn])

    env = RatioEnvironment(space, ctx.budget, order, low=float(opts.action_low),
                           channel_round=int(opts.channel_round))
    agent = make_ddpg(opts, embedding.shape[1] + 3, space.num_groups, int(ctx.seed))
    checkpoint = SearchCheckpoint(ctx.checkpoint_dir, CHECKPOINT_NAME, _fingerprint(space, ctx, opts))
    with channels_last_evaluation(space, rewards, opts.channels_last):
        facts = run_ratio_search(env, agent, state_fn, score_fn, episodes=int(opts.episodes),
                                 checkpoint=checkpoint, resume=ctx.resume,
                                 checkpoint_every=int(opts.checkpoint_every),
                                 progress=ctx.progress, desc=f"{NAME} search",
                                 remember=remember, keep_top=max(int(opts.rerank_top), 1))
    masks, info = masks_from_counts(scores, facts["best_counts"]), {}
    if opts.rerank_top > 0:
        masks = rerank_search_candidates(NAME, space, ctx, opts,
                                         [masks_from_counts(scores, c) for c, _ in facts["top"]],
                                         info)
        # the report's ratios are those of the chosen configuration
        facts["best_counts"] = [int(m.sum()) for m in masks]
    info.update({
        **search_facts(facts, space, order),
        "floors_feasible": env.floors_feasible,
        "reward": opts.reward,
        "reward_samples": len(rewards),
        "masked_evaluations": int(distributed.all_reduce_numbers([scorer.evaluations])[0]),
        "search_time_s": time.perf_counter() - t_start,
    })
    return MethodResult(masks, info)


@register_method(NAME, options=AMCOptions, supports_resume=True,
                 summary="AMC: DDPG over hand-crafted layer states choosing per-group keep ratios, "
                 "L1 slicing (He et al. 2018)")
def run(ctx: SearchContext) -> MethodResult:
    """amc on ``ctx.space`` (see the module docstring)."""
    return search(ctx.space, ctx)
