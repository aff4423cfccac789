"""Baseline channel-importance criteria: one score per channel, higher = more important.

Each criterion is a function ``score(space, ctx) -> list[Tensor[C_g]]`` (float64, CPU, one per
group in ``space.groups`` order). ``ctx`` is the :class:`~gcnprune_fast.methods.context.SearchContext`
(data, device, seed, options). The allocation (uniform / global ranking) is done separately in
:mod:`gcnprune_fast.methods.allocation`, so selection and allocation can be compared apart.

Every criterion is registered as a method of its own (score, then allocate the budget; option
``allocation``), at the end of this module.

- ``l1`` / ``l2``: filter norms summed over the group's producing layers (Li et al. 2017).
- ``fpgm``: distance to the other filters (He et al. 2019): filters near the geometric median are
  replaceable, so the score is the sum of Euclidean distances to all filters of the group.
- ``hrank``: average rank of the channel's feature maps over a few batches (Lin et al. 2020).
- ``taylor``: first-order Taylor expansion of the loss w.r.t. a multiplicative channel gate
  (Molchanov et al. 2019): mean over batches of (dL/dm_c)^2 at m = 1.
- ``bn-scale``: |BN gamma| (network slimming, Liu et al. 2017); groups without BN fall back to l1.
- ``random``: uniform random scores from the seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from gcnprune_fast.data import iterate_inputs
from gcnprune_fast.features import is_preactivation
from gcnprune_fast.methods.allocation import ALLOCATIONS, allocate
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.registry import get_method, option, register_method

__all__ = ["CRITERIA", "l1_scores", "l2_scores", "fpgm_scores", "hrank_scores", "taylor_scores",
           "bn_scale_scores", "random_scores"]


def _weight_stat(space, key: str) -> List[torch.Tensor]:
    stats = space.weight_stats()
    return [s[key].detach().to(torch.float64).cpu() for s in stats]


def l1_scores(space, ctx=None) -> List[torch.Tensor]:
    """Sum over the group's producing layers of each output filter's L1 norm."""
    return _weight_stat(space, "l1")


def l2_scores(space, ctx=None) -> List[torch.Tensor]:
    """Sum over the group's producing layers of each output filter's L2 norm."""
    return _weight_stat(space, "l2")


def bn_scale_scores(space, ctx=None) -> List[torch.Tensor]:
    """|gamma| of the group's BatchNorm; groups without one use the L1 norm (standardized per group
    by the allocation, so the mix of scales does not matter)."""
    stats = space.weight_stats()
    out = []
    for s in stats:
        v = s.get("bn_gamma")
        out.append((v if v is not None else s["l1"]).detach().abs().to(torch.float64).cpu())
    return out


def fpgm_scores(space, ctx=None) -> List[torch.Tensor]:
    """Sum of Euclidean distances from each filter to every other filter of the group [C_g]."""
    out = []
    for g in range(space.num_groups):
        w = space.filter_matrix(g).detach().to(torch.float64).cpu()
        out.append(torch.cdist(w, w).sum(dim=1))
    return out


def random_scores(space, ctx=None) -> List[torch.Tensor]:
    """Uniform random scores, reproducible from ``ctx.seed``."""
    gen = torch.Generator().manual_seed(0 if ctx is None else int(ctx.seed))
    return [torch.rand(g.size, generator=gen, dtype=torch.float64) for g in space.groups]


@torch.no_grad()
def hrank_scores(space, ctx) -> List[torch.Tensor]:
    """Average matrix rank of each channel's [H, W] feature map over up to
    ``ctx.options.hrank_samples`` images (default 128). 1-D features (Linear) use mean |x|."""
    max_samples = int(get_method("hrank").resolve_options(ctx.options).hrank_samples)
    sums = [torch.zeros(g.size, dtype=torch.float64) for g in space.groups]
    relu = [is_preactivation(g) for g in space.groups]
    seen = 0

    def hook(g, act):
        act = act.detach().float()
        if relu[g]:
            act = torch.relu(act)
        if act.dim() == 4:
            r = torch.linalg.matrix_rank(act).to(torch.float64)  # [N, C]
        else:
            r = act.abs().reshape(act.shape[0], act.shape[1], -1).mean(-1).to(torch.float64)
        sums[g] += r.sum(0).cpu()

    with space.feature_hooks(hook):
        for x, _ in iterate_inputs(ctx.loader):
            x = x[: max_samples - seen]
            space.model(x.to(ctx.device))
            seen += x.shape[0]
            if seen >= max_samples:
                break
    return [s / seen for s in sums]


def taylor_scores(space, ctx) -> List[torch.Tensor]:
    """Mean over up to ``ctx.options.taylor_batches`` batches (default 8) of (dL/dm_c)^2, with
    float gates m_c = 1 applied through ``space.masked`` and L the cross-entropy."""
    num_batches = int(get_method("taylor").resolve_options(ctx.options).taylor_batches)
    sums = [torch.zeros(g.size, dtype=torch.float64) for g in space.groups]
    gates = [torch.ones(g.size, device=ctx.device, requires_grad=True) for g in space.groups]
    count = 0
    for x, y in iterate_inputs(ctx.loader):
        with torch.enable_grad(), space.masked(gates):
            loss = F.cross_entropy(space.model(x.to(ctx.device)), y.to(ctx.device))
            grads = torch.autograd.grad(loss, gates, allow_unused=True)
        for s, gr in zip(sums, grads):
            if gr is not None:
                s += gr.detach().to(torch.float64).cpu() ** 2
        count += 1
        if count >= num_batches:
            break
    return [s / count for s in sums]


@dataclass
class CriterionOptions:
    """Options every criterion method has."""

    allocation: str = option("global", "global: per-group standardized scores ranked together; "
                             "uniform: the same keep ratio in every group", choices=ALLOCATIONS)


@dataclass
class HRankOptions(CriterionOptions):
    hrank_samples: int = option(128, "images whose feature-map ranks are averaged", minimum=1)


@dataclass
class TaylorOptions(CriterionOptions):
    taylor_batches: int = option(8, "batches whose squared gate gradients are averaged", minimum=1)


# name -> (score function, options, needs data, one-line summary)
_CRITERIA = {
    "l1": (l1_scores, CriterionOptions, False, "filter L1 norms (Li et al. 2017)"),
    "l2": (l2_scores, CriterionOptions, False, "filter L2 norms"),
    "fpgm": (fpgm_scores, CriterionOptions, False, "distance to the group's other filters, "
             "geometric-median pruning (He et al. 2019)"),
    "hrank": (hrank_scores, HRankOptions, True, "average feature-map rank (Lin et al. 2020)"),
    "taylor": (taylor_scores, TaylorOptions, True, "first-order Taylor importance of a channel "
               "gate (Molchanov et al. 2019)"),
    "bn-scale": (bn_scale_scores, CriterionOptions, False, "|BN gamma|, network slimming "
                 "(Liu et al. 2017)"),
    "random": (random_scores, CriterionOptions, False, "uniform random scores (a sanity floor)"),
}
CRITERIA: Dict[str, Callable] = {name: entry[0] for name, entry in _CRITERIA.items()}


def _criterion_method(name: str, score: Callable) -> Callable[[SearchContext], MethodResult]:
    def run(ctx: SearchContext) -> MethodResult:
        t0 = time.perf_counter()
        scores = score(ctx.space, ctx)
        masks = allocate(ctx.space, scores, ctx.budget, allocation=ctx.options.allocation)
        return MethodResult(masks, {"search_time_s": time.perf_counter() - t0, "episodes": 0,
                                    "allocation": ctx.options.allocation})
    run.__name__ = f"run_{name.replace('-', '_')}"
    run.__doc__ = f"Baseline {name!r}: score channels, then allocate the budget."
    return run


for _name, (_score, _options, _needs_data, _summary) in _CRITERIA.items():
    register_method(_name, options=_options, needs_data=_needs_data, summary=_summary,
                    in_demo=_name == "l1")(_criterion_method(_name, _score))
