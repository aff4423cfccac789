"""The pruning space: coupled channel groups, keep-masks, masked evaluation, the cost model,
surgery and plans. ``PruningSpace(model, example_inputs)`` is the entry point.

Modules: ``tracing`` (tracing a model copy, ignored layers, feature-module choice), ``groups``
(ChannelGroup, offsets, the group graph), ``masks`` (mask rules), ``masked_eval`` (masked
evaluation and feature hooks), ``cost_model`` (FLOPs/params counting), ``weights`` (per-group
filters and BN scales), ``surgery`` (``prune_model``), ``plans`` (plans and ``load_pruned``),
``pruning_space`` (the ``PruningSpace`` facade); ``_dependency`` is the only module that imports
torch_pruning.
"""
from gcnprune_fast.space.groups import ChannelGroup
from gcnprune_fast.space.plans import PLAN_FORMAT, load_pruned, structure_fingerprint
from gcnprune_fast.space.pruning_space import PruningSpace
from gcnprune_fast.space.surgery import prune_model
from gcnprune_fast.space.tracing import resolve_ignored_layers

__all__ = ["PruningSpace", "ChannelGroup", "load_pruned", "structure_fingerprint",
           "resolve_ignored_layers", "prune_model", "PLAN_FORMAT"]
