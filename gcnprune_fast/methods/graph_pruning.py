"""Method B, "graph-pruning": the network as a graph, a GCN aggregator, a PruningNet and an RL
search over per-group keep ratios (GraphPruning, Rong et al.; see the shared docs, Method B).

Pipeline:

1. network graph: ``space.group_graph()`` (groups as nodes; producer-consumer and shortcut edges),
   normalized with ``ops.gcn_norm``;
2. node features: AMC's layer embedding (:mod:`.search.layer_features`) + the group's activation
   statistics summary (``gap_stats`` via ``collect_features``) + the current keep ratio;
3. aggregator: a 2-layer shared-weight GCN giving h_i per group;
4. PruningNet (:mod:`.search.pruningnet`): per prunable layer a generator from (h_in, h_out,
   in-ratio, out-ratio) to the layer's weights, on top of shared base weights initialized from the
   trained model; trained end to end on random widths from the grid 0.1..1.0 (step 0.05) with
   cross-entropy on the training loader; large layers (or ``weights="supernet"``) share sliced
   weights instead;
5. search: one decision per group in network order; state = h_i (aggregated with the widths
   decided so far, undecided groups full) + FLOPs removed so far, FLOPs left, previous action;
   action = keep ratio in [0.05, 1] with the action wall (:mod:`.search.ratio_search`); reward =
   accuracy of the PruningNet sub-network on the reward set with BN statistics re-estimated on
   that set (``reward_weights="sliced"``: the original weights sliced by importance instead);
   agent DDPG as in AMC (:mod:`.search.ddpg`), or PPO (``agent="ppo"``);
6. final selection: the search's ``final_candidates`` best distinct configurations (the final
   noise-free episode among them), each grown to use the budget it leaves unused (``fill_budget``:
   every keep ratio scaled by a common factor), are re-scored with the weights the user gets, the
   original channels sliced by importance, after BN re-estimation, on the selection data
   (``val_loader``; the reward set without one); the best wins. Why: the search ranks
   configurations by the PruningNet's weights, the deployed network has the sliced originals, and
   an under-used budget is accuracy given away (on the trained ResNet-20 one seed's best
   configuration kept 0.36 of the FLOPs at a 0.5 budget). ``final_candidates=0``: the search's
   best as scored during the search, unchanged. With ``rerank_top`` > 0 the best of them (by that
   score) and the plain criteria's allocations are re-ranked by selection accuracy after a short
   fine-tune (:mod:`.search.rerank`, as channel-gcn);
7. result: masks keeping the most important original channels (default); BN re-estimation and
   fine-tuning follow in ``prune()``. With ``final_weights="pruningnet"`` the generated weights of
   that configuration are also written to ``checkpoint_dir/graph_pruning_weights.pt`` (a full-size
   state_dict of the original architecture; see :func:`load_pruningnet_weights`).

Checkpoints (``checkpoint_dir``): ``graph_pruning_pruningnet.pt`` (PruningNet training, every
``pruningnet_checkpoint_every`` steps; a finished one is reused on resume) and
``graph_pruning_search.pt`` (every ``checkpoint_every`` episodes). ``resume=True`` after a kill in
either phase gives the same result as an uninterrupted run.

Under torch.distributed: PruningNet training is data-parallel (each rank its shard of the loader,
gradients averaged: a step's global batch is N loader batches, see :func:`.search.pruningnet.
train_pruningnet`); the search scores the episodes of a PPO update and the DDPG warm-up split
across the ranks, a later DDPG episode on rank 0, and every rank applies the same update (see
:mod:`.search.ratio_search`). Rank 0 writes the checkpoints and the weights file.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn

from gcnprune_fast import distributed
from gcnprune_fast.methods.allocation import grow_counts_to_budget
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.registry import get_method, option, register_method
from gcnprune_fast.methods.search import MaskScorer, SearchCheckpoint
from gcnprune_fast.methods.search.layer_features import decision_order, dynamic_features
from gcnprune_fast.methods.search.pruningnet import (PruningNetOptions, PruningNetScorer,
                                                     prepare_pruningnet)
from gcnprune_fast.methods.search.ratio_ppo import PPOConfig, RatioPPOAgent
from gcnprune_fast.methods.search.ratio_search import (RatioEnvironment, RatioSearchOptions,
                                                       make_ddpg, reward_set, run_ratio_search,
                                                       search_facts)
from gcnprune_fast.methods.search.rerank import (RERANK_OPTIONS, RerankOptions,
                                                  check_rerank_options, rerank_search_candidates)
from gcnprune_fast.methods.search.reward import RewardSet

__all__ = ["NAME", "GraphPruningOptions", "search", "load_pruningnet_weights",
           "PRUNINGNET_CHECKPOINT", "SEARCH_CHECKPOINT", "WEIGHTS_FILE"]

NAME = "graph-pruning"
PRUNINGNET_CHECKPOINT = "graph_pruning_pruningnet.pt"
SEARCH_CHECKPOINT = "graph_pruning_search.pt"
WEIGHTS_FILE = "graph_pruning_weights.pt"


@dataclass
class GraphPruningOptions(RatioSearchOptions, PruningNetOptions, RerankOptions):
    """Options of graph-pruning (``prune(..., episodes=200)`` or ``--option episodes=200``); the
    re-ranking options come from :class:`~gcnprune_fast.methods.search.rerank.RerankOptions`."""

    agent: str = option("ddpg", "search agent: DDPG as in AMC, or PPO-clip", choices=("ddpg", "ppo"))
    ppo_episodes_per_update: int = option(10, "PPO: episodes per update", minimum=1)
    ppo_lr: float = option(3e-4, "PPO: Adam learning rate", minimum=0.0)
    reward_weights: str = option("pruningnet", "weights scored during the search: the PruningNet "
                                 "sub-network, or the original weights sliced by importance",
                                 choices=("pruningnet", "sliced"))
    final_weights: str = option("sliced", "sliced: masks only (the original weights, sliced by "
                                "importance); pruningnet: also write the generated weights of the "
                                "chosen configuration to checkpoint_dir", choices=("sliced",
                                                                                   "pruningnet"))
    final_candidates: int = option(8, "the search's best distinct configurations re-scored with "
                                   "the sliced original weights on the selection data; the best "
                                   "wins (0: the search's best as scored in the search)",
                                   minimum=0)
    fill_budget: bool = option(True, "grow each final candidate to use the budget it leaves "
                               "unused (keep ratios scaled by a common factor)")
    selection_samples: int = option(1024, "images of the selection data (val_loader, else the "
                                    "search loader) the final candidates are scored on",
                                    minimum=1)


# options read only after the search: a search checkpoint serves runs that differ in them
FINAL_SELECTION_OPTIONS = ("final_candidates", "fill_budget", "selection_samples", "final_weights",
                           *RERANK_OPTIONS)


def _search_fingerprint(space, ctx: SearchContext, opts: GraphPruningOptions) -> Dict[str, Any]:
    """What a search checkpoint must match (``episodes`` may grow on resume)."""
    fp = {k: v for k, v in dataclasses.asdict(opts).items()
          if k not in ("episodes", "checkpoint_every", "pruningnet_checkpoint_every")
          + FINAL_SELECTION_OPTIONS}
    fp.update(seed=int(ctx.seed), sizes=[int(g.size) for g in space.groups],
              budget_flops=ctx.budget.flops, budget_params=ctx.budget.params, **ctx.budget.fingerprint_extra(),
              round_to=int(space.round_to), min_channels=int(space.min_channels))
    return fp


def _agent(opts: GraphPruningOptions, state_dim: int, steps: int, seed: int):
    if opts.agent == "ppo":
        config = PPOConfig(hidden=int(opts.ddpg_hidden), lr=float(opts.ppo_lr),
                           episodes_per_update=int(opts.ppo_episodes_per_update),
                           low=float(opts.action_low), high=1.0)
        return RatioPPOAgent(state_dim, steps, config, seed=seed)
    return make_ddpg(opts, state_dim, steps, seed)


def search(space, ctx: SearchContext) -> MethodResult:
    """Run graph-pruning on ``space`` with ``ctx`` (options: :class:`GraphPruningOptions` or a
    dict of overrides) and return its masks and report facts."""
    opts = get_method(NAME).resolve_options(ctx.options)
    check_rerank_options(NAME, opts)
    if not opts.action_low < 1.0:
        raise ValueError(f"method {NAME!r} option action_low must be < 1, got {opts.action_low!r}")
    if opts.final_weights == "pruningnet" and ctx.checkpoint_dir is None:
        raise ValueError(f"method {NAME!r}: final_weights='pruningnet' writes the generated weights "
                         f"to checkpoint_dir; give checkpoint_dir")
    if opts.final_weights == "pruningnet" and opts.rerank_top > 0:
        raise ValueError(f"method {NAME!r}: final_weights='pruningnet' and rerank_top > 0 do not "
                         f"combine (re-ranking may choose a criterion's mask, which has no "
                         f"PruningNet weights); set one of them off")
    t_start = time.perf_counter()
    seed, device = int(ctx.seed), ctx.device
    # The reward set is drawn before PruningNet training reads the loader: a run resumed after the
    # training draws the same images as an uninterrupted one.
    rewards = reward_set(ctx, opts)
    pnet, info = prepare_pruningnet(space, ctx.loader, opts, seed=seed, device=device,
                                    checkpoint_dir=ctx.checkpoint_dir,
                                    checkpoint_name=PRUNINGNET_CHECKPOINT, resume=ctx.resume,
                                    progress=ctx.progress)
    pnet.eval()
    t_search = time.perf_counter()
    if opts.reward_weights == "pruningnet":
        score = PruningNetScorer(pnet, rewards, opts.reward)
        score_fn, remember = score, score.remember
    else:
        score = MaskScorer(space, rewards, opts.reward, device)

        def score_fn(counts):
            return score(pnet.masks(counts))

        def remember(counts, result):
            score.remember(pnet.masks(counts), result)

    order = decision_order(space)
    env = RatioEnvironment(space, ctx.budget, order, low=float(opts.action_low),
                           channel_round=int(opts.channel_round))
    sizes = torch.tensor([g.size for g in space.groups], dtype=torch.float32)

    @torch.no_grad()
    def state_fn(t: int, counts: List[int], previous: float) -> torch.Tensor:
        ratios = torch.tensor(counts, dtype=torch.float32) / sizes
        h = pnet.embed(ratios.to(pnet.static.device))[order[t]].float().cpu()
        dyn = dynamic_features(space, counts, order[:t], order[t:], previous)
        return torch.cat([h, dyn])

    state_dim = int(opts.hidden) + 3
    agent = _agent(opts, state_dim, space.num_groups, seed)
    checkpoint = SearchCheckpoint(ctx.checkpoint_dir, SEARCH_CHECKPOINT,
                                  _search_fingerprint(space, ctx, opts))
    facts = run_ratio_search(env, agent, state_fn, score_fn, episodes=int(opts.episodes),
                             checkpoint=checkpoint, resume=ctx.resume,
                             checkpoint_every=int(opts.checkpoint_every), progress=ctx.progress,
                             desc=f"{NAME} search", remember=remember,
                             keep_top=max(int(opts.final_candidates), int(opts.rerank_top), 1))
    counts, selection_rows = facts["best_counts"], None
    ranked = [c for c, _ in facts["top"]]  # best first
    if opts.final_candidates > 0:
        counts, selection_rows = _final_selection(space, ctx, opts, pnet, facts["top"])
        by_score = sorted(selection_rows, key=lambda r: (-r["selection_acc"], r["selection_loss"]))
        ranked = [r["grown_counts"] for r in by_score]
    masks = pnet.masks(counts)
    if opts.rerank_top > 0:
        masks = rerank_search_candidates(NAME, space, ctx, opts, [pnet.masks(c) for c in ranked],
                                         info)
        counts = [int(m.sum()) for m in masks]
    facts["best_counts"] = counts  # the report's ratios are those of the chosen configuration
    info.update({
        **search_facts(facts, space, order),
        "final_selection": selection_rows,
        "agent": opts.agent,
        "reward": opts.reward,
        "reward_weights": opts.reward_weights,
        "reward_samples": len(rewards),
        "masked_evaluations": int(distributed.all_reduce_numbers([score.evaluations])[0]),
        "search_loop_time_s": time.perf_counter() - t_search,
        "graph_edges": int(pnet.aggregator.indices.numel()),
    })
    if opts.final_weights == "pruningnet":
        path = os.path.join(ctx.checkpoint_dir, WEIGHTS_FILE)
        distributed.atomic_save({k: v.cpu() for k, v in pnet.full_state_dict(counts).items()},
                                path)  # rank 0 writes
        distributed.barrier()  # the file exists for every rank once search() returns
        info["pruningnet_weights_path"] = path
    info["search_time_s"] = time.perf_counter() - t_start
    return MethodResult(masks, info)


def _final_selection(space, ctx: SearchContext, opts: GraphPruningOptions, pnet, top
                     ) -> Tuple[List[int], List[Dict[str, Any]]]:
    """The chosen configuration among the search's best (``top``: ``(counts, search reward)``,
    best first) and one report row per candidate (see the module docstring, step 6)."""
    source = ctx.val_loader if ctx.val_loader is not None else ctx.loader
    n = int(opts.selection_samples)
    data = RewardSet.from_loader(source, n, ctx.device, n,
                                 "val_loader" if ctx.val_loader is not None else "loader")
    scorer = MaskScorer(space, data, "accuracy_bn", ctx.device)
    rows, best = [], None
    for i, (counts, search_reward) in enumerate(top[:int(opts.final_candidates)]):
        grown = (grow_counts_to_budget(space, counts, ctx.budget) if opts.fill_budget
                 else list(counts))
        acc, loss = scorer(pnet.masks(grown))[1:]
        flops, _ = space.cost_from_counts(torch.tensor([grown], dtype=torch.long))
        rows.append({"rank": i, "search_reward": float(search_reward), "counts": list(counts),
                     "grown_counts": grown, "selection_acc": float(acc),
                     "selection_loss": float(loss),
                     "flops_kept": float(flops[0]) / max(float(space.base_flops), 1.0),
                     "chosen": False})
        if best is None or (acc, -loss) > (rows[best]["selection_acc"],
                                           -rows[best]["selection_loss"]):
            best = i
    rows[best]["chosen"] = True
    return list(rows[best]["grown_counts"]), rows


def load_pruningnet_weights(model: nn.Module, result) -> nn.Module:
    """The compact model of a graph-pruning ``PruneResult`` run with ``final_weights="pruningnet"``
    carrying PruningNet's generated weights instead of the sliced originals.

    ``model`` is the original (unpruned) model; returns a new compact model (BN statistics are
    those of the original: re-estimate them, e.g. ``training.recalibrate_bn``, then fine-tune)."""
    import copy

    from gcnprune_fast import load_pruned

    path = result.report.get("pruningnet_weights_path")
    if not path:
        raise ValueError("this result has no PruningNet weights; prune with "
                         f"method={NAME!r}, final_weights='pruningnet' and a checkpoint_dir")
    full = copy.deepcopy(model)
    full.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return load_pruned(full, result.plan)


@register_method(NAME, options=GraphPruningOptions, supports_resume=True,
                 summary="method B: network graph, GCN aggregator, PruningNet and DDPG search over "
                 "per-group keep ratios (GraphPruning)")
def run(ctx: SearchContext) -> MethodResult:
    """Method B on ``ctx.space`` (see the module docstring)."""
    return search(ctx.space, ctx)
