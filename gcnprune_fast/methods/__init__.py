"""Pruning methods: each turns a :class:`~gcnprune_fast.methods.context.SearchContext` into
keep-masks (one bool tensor [C_g] per group, True = keep) that meet the budget.

``METHODS`` maps a method name to ``run(ctx) -> MethodResult``:

- ``channel-gcn``: method A (channel graphs + per-layer GCN agents + RL), :mod:`.channel_gcn`;
- ``l1``, ``l2``, ``fpgm``, ``hrank``, ``taylor``, ``bn-scale``, ``random``: baseline criteria
  (:mod:`.criteria`) with ``ctx.allocation`` = ``"global"`` (per-group standardized scores, one
  ranking) or ``"uniform"`` (same keep ratio per group), :mod:`.allocation`.
"""
from __future__ import annotations

import time
from typing import Callable, Dict

from gcnprune_fast.methods import channel_gcn
from gcnprune_fast.methods.allocation import ALLOCATIONS, Budget, allocate, project_to_budget
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.criteria import CRITERIA

__all__ = ["METHODS", "METHOD_NAMES", "ALLOCATIONS", "Budget", "SearchContext", "MethodResult",
           "run_method", "criterion_scores", "allocate", "project_to_budget"]

CRITERION_OPTIONS = {"hrank": ("hrank_samples",), "taylor": ("taylor_batches",)}


def criterion_scores(name: str, ctx: SearchContext):
    """Per-channel scores (float64 [C_g] per group) of baseline criterion ``name``."""
    allowed = CRITERION_OPTIONS.get(name, ())
    unknown = sorted(set(ctx.options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method {name!r}; valid: {list(allowed)}")
    return CRITERIA[name](ctx.space, ctx)


def _criterion_method(name: str) -> Callable[[SearchContext], MethodResult]:
    def run(ctx: SearchContext) -> MethodResult:
        t0 = time.perf_counter()
        scores = criterion_scores(name, ctx)
        masks = allocate(ctx.space, scores, ctx.budget, allocation=ctx.allocation,
                         round_to=ctx.round_to)
        return MethodResult(masks, {"search_time_s": time.perf_counter() - t0, "episodes": 0})
    run.__name__ = f"run_{name.replace('-', '_')}"
    run.__doc__ = f"Baseline {name!r}: score channels, then allocate the budget."
    return run


def _channel_gcn(ctx: SearchContext) -> MethodResult:
    return channel_gcn.search(ctx.space, ctx)


METHODS: Dict[str, Callable[[SearchContext], MethodResult]] = {"channel-gcn": _channel_gcn}
METHODS.update({name: _criterion_method(name) for name in CRITERIA})
METHOD_NAMES = tuple(METHODS)


def run_method(name: str, ctx: SearchContext) -> MethodResult:
    """Run method ``name`` (see ``METHOD_NAMES``) on ``ctx``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {list(METHOD_NAMES)}")
    return METHODS[name](ctx)
