"""Pruning methods: each turns a :class:`~gcnprune_fast.methods.context.SearchContext` into
keep-masks (one bool tensor [C_g] per group, True = keep) that meet the budget.

Every module of this package that defines a method registers it with
:func:`~gcnprune_fast.methods.registry.register_method`; importing the package imports them all
(so adding a method is adding one file). The registry answers which methods exist
(:func:`method_names`), their options and what they support (:func:`get_method`).

Shared parts: :mod:`.allocation` (budgets, the action wall, allocation from scores or per-group
ratios), :mod:`.search` (reward set, mask scorer, checkpoints, policy-gradient updates, GCN layer).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from gcnprune_fast.methods.allocation import ALLOCATIONS, Budget, allocate, project_to_budget
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.registry import (MethodSpec, default_method, demo_methods, get_method,
                                            method_names, register_method)

__all__ = ["ALLOCATIONS", "Budget", "SearchContext", "MethodResult", "MethodSpec", "run_method",
           "allocate", "project_to_budget", "register_method", "get_method", "method_names",
           "default_method", "demo_methods"]

# Modules that are not methods (shared parts); everything else in this folder is imported so that
# its methods register themselves.
_SHARED = {"allocation", "context", "registry", "agents", "search"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _SHARED and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def run_method(name: str, ctx: SearchContext) -> MethodResult:
    """Run method ``name`` on ``ctx``; ``ctx.options`` may be a dict (validated here)."""
    spec = get_method(name)
    options = spec.resolve_options(ctx.options)
    if ctx.resume and not spec.supports_resume:
        raise ValueError(f"method {name!r} cannot resume (it has no checkpoint); run it again "
                         f"without resume")
    return spec.run(dataclasses.replace(ctx, options=options))
