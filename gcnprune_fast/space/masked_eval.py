"""Masked evaluation: run the user's model as if pruned (forward pre-hooks that multiply each
consumer layer's input channels by the masks) and observe each group's feature activation.

The hooks are placed on the user's model and removed on exit, also on errors.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Sequence

import torch
import torch.nn as nn

from gcnprune_fast.space._dependency import RawGroup
from gcnprune_fast.space.groups import ChannelGroup
from gcnprune_fast.space.tracing import MIXING_KINDS


def consumer_table(raws: Sequence[RawGroup]) -> Dict[str, dict]:
    """Per channel-mixing consumer layer name: its input width, channel dim and which of its input
    channels carry which group channels: ``{"width", "dim", "parts": [(g, local, root)]}``."""
    consumers: Dict[str, dict] = {}
    for g, raw in enumerate(raws):
        for d in raw.dims:
            if not (d.name and "in" in d.roles and "out" not in d.roles and d.kind in MIXING_KINDS):
                continue
            mod = d.module
            entry = consumers.setdefault(d.name, {
                "width": mod.in_channels if d.kind == "conv" else mod.in_features,
                "dim": 1 if d.kind == "conv" else -1, "parts": []})
            entry["parts"].append((g, torch.from_numpy(d.local.copy()),
                                   torch.from_numpy(d.root.copy())))
    return consumers


def consumer_input_mask(entry: dict, masks: List[torch.Tensor], dtype=torch.float32,
                        device=None) -> torch.Tensor:
    """A consumer's per-input-channel keep values (``[entry["width"]]``, 1 where no group
    prunes that input) from the groups' masks, given its ``consumer_table`` entry."""
    mult = torch.ones(entry["width"], dtype=dtype, device=device)
    for g, local, root in entry["parts"]:
        m = masks[g].to(device=mult.device, dtype=dtype)
        mult = mult.index_copy(0, local.to(mult.device), m[root.to(mult.device)])
    return mult


@contextlib.contextmanager
def masked(model: nn.Module, consumers: Dict[str, dict],
           masks: List[torch.Tensor]) -> Iterator[nn.Module]:
    """Context in which ``model`` computes as if pruned by ``masks`` (validated, one per group;
    bool or float) given its ``consumer_table``. Yields the model; hooks are removed on exit."""
    modules = dict(model.named_modules())
    handles = []

    def make_hook(entry):
        def hook(module, args):
            x = args[0]
            mult = consumer_input_mask(entry, masks, x.dtype, x.device)
            shape = [1] * x.dim()
            shape[entry["dim"]] = entry["width"]
            return (x * mult.view(shape),) + tuple(args[1:])
        return hook

    try:
        for name, entry in consumers.items():
            handles.append(modules[name].register_forward_pre_hook(make_hook(entry)))
        yield model
    finally:
        for h in handles:
            h.remove()


def feature_view(group: ChannelGroup, output: torch.Tensor) -> torch.Tensor:
    """The group's channels of its feature module's ``output`` as ``[N, C, ...]`` (C == size):
    the channel dimension moved to 1 (token / channels-last tensors: a view) and, for outputs
    wider than the group (a concatenation), the group's channels picked in group order."""
    out = output
    if group.feature_dim != 1:
        out = out.movedim(group.feature_dim, 1)
    index = group.feature_index
    if index is not None:
        first = index[0]
        if index == tuple(range(first, first + len(index))):
            out = out.narrow(1, first, len(index))
        else:
            out = out.index_select(1, torch.tensor(index, device=out.device))
    return out


@contextlib.contextmanager
def feature_hooks(model: nn.Module, groups: Sequence[ChannelGroup],
                  fn: Callable[[int, torch.Tensor], None]) -> Iterator[nn.Module]:
    """Context calling ``fn(group_index, activation)`` during every forward of ``model`` with the
    output of each group's ``feature_module`` as ``[N, C, ...]`` (``feature_view``; C == the group
    size; "pre-activation" outputs as copies). Yields the model; hooks are removed on exit."""
    modules = dict(model.named_modules())
    by_module: Dict[str, List[int]] = {}
    for g in groups:
        by_module.setdefault(g.feature_module, []).append(g.index)
    handles = []

    def make_hook(indices):
        def hook(module, args, output):
            for g in indices:
                out = feature_view(groups[g], output)
                if groups[g].feature_activation == "pre-activation":
                    out = out.clone()
                fn(g, out)
        return hook

    try:
        for name, indices in by_module.items():
            handles.append(modules[name].register_forward_hook(make_hook(indices)))
        yield model
    finally:
        for h in handles:
            h.remove()
