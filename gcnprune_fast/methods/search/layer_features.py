"""Network-level features of the pruning groups: AMC's layer embedding, the groups' activation
summary, the order in which a layer-by-layer search decides, and the dynamic part of its state.

One row per group (``space.groups`` order). The static embedding follows AMC (He et al. 2018;
mit-han-lab/amc ``layer_embedding``): for the group's root layer (the conv / linear whose output
channels index the group)

    index, is_linear, num_producers, in_channels, out_channels, kernel, stride, feature_size,
    flops, params

where ``feature_size`` is H*W of the root's output, and ``flops`` / ``params`` are the cost that
depends on the group (the unpruned cost minus the cost with the group at width 0, from
``space.cost_from_counts``). Each column is min-max scaled to [0, 1] over the groups, as AMC does
(a constant column becomes 0). ``index`` is the position in :func:`decision_order`.

The dynamic features of a layer-by-layer search at step t (AMC's ``reduced`` / ``rest`` /
``a_{t-1}``) are computed by :func:`dynamic_features`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from gcnprune_fast.features import STAT_NAMES

__all__ = ["EMBEDDING_COLUMNS", "ACTIVATION_COLUMNS", "DYNAMIC_COLUMNS", "decision_order",
           "group_costs", "layer_embedding", "activation_summary", "dynamic_features",
           "minmax_columns"]

EMBEDDING_COLUMNS = ("index", "is_linear", "num_producers", "in_channels", "out_channels",
                     "kernel", "stride", "feature_size", "flops", "params")
ACTIVATION_COLUMNS = tuple(f"act_{n}" for n in STAT_NAMES)
DYNAMIC_COLUMNS = ("flops_reduced", "flops_rest", "previous_action")


def minmax_columns(x: torch.Tensor) -> torch.Tensor:
    """Each column of ``x`` [G, d] scaled to [0, 1] over the rows (constant columns -> 0)."""
    lo, hi = x.min(0).values, x.max(0).values
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(x))


@torch.no_grad()
def _forward_facts(space) -> Tuple[Dict[str, int], Dict[str, Tuple[int, ...]]]:
    """(first-call position, output shape) of every conv / linear module of ``space.model`` on
    the space's example inputs."""
    order: Dict[str, int] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    handles = []

    def make(name):
        def hook(module, args, output):
            if name not in order:
                order[name] = len(order)
                shapes[name] = tuple(output.shape)
        return hook

    model = space.model
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            handles.append(m.register_forward_hook(make(name)))
    training = model.training
    try:
        model.eval()
        model(*space.example_inputs)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return order, shapes


def decision_order(space) -> List[int]:
    """Group indices in the order their first producer runs in the forward pass (network depth),
    the order in which AMC-style searches decide (groups whose producers never ran go last, by
    index)."""
    order, _ = _forward_facts(space)
    big = len(order) + 1

    def first(g: int) -> int:
        names = space.groups[g].producers or (space.groups[g].root,)
        return min(order.get(n, big) for n in names)

    return sorted(range(space.num_groups), key=lambda g: (first(g), g))


def group_costs(space) -> Tuple[torch.Tensor, torch.Tensor]:
    """(flops [G], params [G]) float64: the cost that depends on each group, i.e. the unpruned
    cost minus the cost with that group at width 0 and every other group full."""
    sizes = torch.tensor([g.size for g in space.groups], dtype=torch.long)
    num = sizes.numel()
    counts = sizes.repeat(num + 1, 1)
    counts[torch.arange(1, num + 1), torch.arange(num)] = 0
    f, p = space.cost_from_counts(counts)
    return (f[0] - f[1:]).to(torch.float64), (p[0] - p[1:]).to(torch.float64)


def layer_embedding(space, order: Sequence[int] = None) -> torch.Tensor:
    """AMC's static layer embedding per group, float32 [G, len(EMBEDDING_COLUMNS)] in [0, 1]
    (see the module docstring). ``order``: the decision order (default :func:`decision_order`)."""
    order = list(decision_order(space) if order is None else order)
    position = {g: i for i, g in enumerate(order)}
    _, shapes = _forward_facts(space)
    flops, params = group_costs(space)
    modules = dict(space.model.named_modules())
    rows = []
    for g, grp in enumerate(space.groups):
        root = modules.get(grp.root)
        is_linear = isinstance(root, nn.Linear)
        if isinstance(root, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            in_ch = root.in_channels
            kernel = int(torch.tensor(root.kernel_size).prod())
            stride = int(torch.tensor(root.stride).prod())
        elif is_linear:
            in_ch, kernel, stride = root.in_features, 1, 1
        else:
            in_ch, kernel, stride = grp.size, 1, 1
        shape = shapes.get(grp.root, ())
        feature_size = int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1
        rows.append([float(position[g]), float(is_linear), float(len(grp.producers)), float(in_ch),
                     float(grp.size), float(kernel), float(stride), float(feature_size),
                     float(flops[g]), float(params[g])])
    return minmax_columns(torch.tensor(rows, dtype=torch.float64)).float()


def activation_summary(features) -> torch.Tensor:
    """Per group the channel means of the activation statistics (``ChannelFeatures``: mean, var,
    abs_mean, zero_frac, max), variance and max on a log scale, each column standardized over the
    groups: float32 [G, len(ACTIVATION_COLUMNS)]."""
    rows = []
    for g in range(len(features.mean)):
        s = features.stats(g).double().mean(0)  # [5] in STAT_NAMES order
        rows.append(s)
    x = torch.stack(rows)
    for col in ("var", "max"):
        i = STAT_NAMES.index(col)
        x[:, i] = torch.log1p(x[:, i].clamp_min(0))
    std = x.std(0, unbiased=False)
    z = (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    return z.float()


def dynamic_features(space, counts: Sequence[int], decided: Sequence[int], pending: Sequence[int],
                     previous_action: float) -> torch.Tensor:
    """AMC's dynamic state, float32 [3]: FLOPs removed so far by the decided groups (the others
    full), the FLOPs that still depend on the pending groups (at the current widths), both as
    fractions of the unpruned FLOPs, and the previous action."""
    sizes = [g.size for g in space.groups]
    done = set(decided)
    now = [int(counts[g]) if g in done else sizes[g] for g in range(len(sizes))]
    without = list(now)
    for g in pending:
        without[g] = 0
    f, _ = space.cost_from_counts(torch.tensor([now, without], dtype=torch.long))
    base = max(float(space.base_flops), 1.0)
    return torch.tensor([(base - float(f[0])) / base, float(f[0] - f[1]) / base,
                         float(previous_action)], dtype=torch.float32)
