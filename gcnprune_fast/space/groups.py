"""Channel groups: which channel dimensions are removed together, their row offsets in the stacked
channel dimension, and the group graph (which groups feed which).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn as nn

from gcnprune_fast.ops.csr import CSRGraph
from gcnprune_fast.space._dependency import RawGroup
from gcnprune_fast.space.tracing import MIXING_KINDS, Trace, choose_feature_module

_INEXACT_KINDS = ("ln", "gn", "mha", "lstm", "embed", "param")  # channel-coupled statistics etc.
_PRODUCER_KINDS = ("conv", "linear", "depthwise")


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channel dimensions that are removed together.

    Attributes:
        index: position in ``space.groups`` (and in a mask list).
        name: readable name: the producing layer ("layer1.0.conv1"), or for groups with several
            producers (residual streams) "residual: a, b, c".
        size: number of channels C.
        layers: names of every module with a dimension in the group (producers, BNs, consumers).
        root: the layer whose output channels index the group (channel i == root output i).
        producers: conv/linear layers (depthwise included) whose output channels are the group.
        consumers: channel-mixing conv/linear layers that read the group's channels.
        feature_module: name of the module whose output holds the representative activation:
            its dimension ``feature_dim`` carries the group's channels at positions
            ``feature_index`` (``space.feature_hooks`` hands callbacks the ``[N, C, ...]`` view).
        feature_activation: what that output is: "consumed" (exactly the tensor a consumer layer
            reads: after BN, the non-linearity and the residual add), "post-activation" (an
            activation module applied to the producer's BN) or "pre-activation" (the BN or layer
            output; the model applies a functional non-linearity afterwards, e.g. F.relu).
        mask_exact: True when ``space.masked`` reproduces the pruned network exactly for this group
            (False when a channel-coupled op such as LayerNorm/GroupNorm/attention uses it).
        feature_dim: the channel dimension of ``feature_module``'s output: 1 for ``[N, C, ...]``,
            the last dimension for token / channels-last tensors ``[N, ..., C]`` (ConvNeXt blocks,
            transformers).
        feature_index: where the group's channels are along ``feature_dim`` (group channel i at
            ``feature_index[i]``) when the output holds more channels than the group (a
            concatenation, e.g. DenseNet's dense layers); None when it holds exactly the group's
            channels in order.
        cost_exact: True when ``space.cost`` of a mask depends only on how many of the group's
            channels it keeps, as the cost model assumes: every layer dimension in the group
            carries each group channel equally often. False when a split or slice sends some
            channels to one layer and others elsewhere (Res2Net, CSP, mixed-kernel convs): the
            cost is then the average over which channels are kept, not exact for one mask.
    """

    index: int
    name: str
    size: int
    layers: Tuple[str, ...]
    root: str
    producers: Tuple[str, ...]
    consumers: Tuple[str, ...]
    feature_module: str
    feature_activation: str
    mask_exact: bool
    feature_dim: int = 1
    feature_index: Optional[Tuple[int, ...]] = None
    cost_exact: bool = True


def build_groups(trace: Trace) -> Tuple[List[ChannelGroup], List[RawGroup], List[str]]:
    """The prunable groups of a traced model.

    Returns (groups, raw groups (same order: the dims behind each group), skipped groups (readable
    reasons)). Groups reaching the network output are protected (left out silently), groups with
    channels torch-pruning cannot follow (``RawGroup.invalid``: a grouped conv whose groups would
    lose different channels, a reshape onto another axis) or through a split/slice with sizes
    fixed in the model's code are skipped (``skipped_groups``). A grouped conv's channels are
    pruned alike in every conv group (tied: ``RawGroup.root_classes``)."""
    deps, records = trace.deps, trace.records
    calls_per_module: Dict[str, int] = {}
    for r in records:
        calls_per_module[r["name"]] = calls_per_module.get(r["name"], 0) + 1
    skipped: List[str] = []
    raws: List[RawGroup] = []
    groups: List[ChannelGroup] = []
    for raw in deps.groups:
        if any(d.kind == "output" or ("out" in d.roles and
               deps.nodes[d.node_id].grad_fn in trace.output_grad_fns) for d in raw.dims):
            continue  # reaches the network output: protected
        if raw.invalid:
            skipped.append(f"{raw.root_name} ({raw.invalid})")
            continue
        selections = [deps.partial_selections[d.node_id] for d in raw.dims
                      if d.node_id in deps.partial_selections]
        if selections:
            skipped.append(f"{raw.root_name} ({selections[0]}: sizes fixed in the model's code)")
            continue
        if raw.size < 1:
            continue
        idx = len(groups)
        producers = tuple(d.name for d in raw.dims if "out" in d.roles and
                          d.kind in _PRODUCER_KINDS and d.name)
        consumers = tuple(d.name for d in raw.dims if "in" in d.roles and "out" not in d.roles
                          and d.kind in MIXING_KINDS and d.name)
        layers = tuple(dict.fromkeys(d.name for d in raw.dims if d.name))
        main = [p for p in producers
                if not isinstance(trace.model.get_submodule(p), nn.Conv2d)
                or trace.model.get_submodule(p).groups == 1]
        if len(main) <= 1:
            name = main[0] if main else raw.root_name
        else:
            shown = main if len(main) <= 4 else main[:2] + ["..."] + main[-1:]
            name = f"residual: {', '.join(shown)} ({len(main)} producers)"
        feat = choose_feature_module(raw, records, calls_per_module)
        cost_exact = all(_uniform_cover(d.root, raw.size) for d in raw.dims)
        exact = not any(d.kind in _INEXACT_KINDS for d in raw.dims)
        groups.append(ChannelGroup(idx, name, raw.size, layers, raw.root_name, producers,
                                   consumers, feat.module, feat.activation, exact,
                                   feat.dim, feat.index, cost_exact))
        raws.append(raw)
    return groups, raws, skipped


def _uniform_cover(root, size: int) -> bool:
    """True when a dimension carries every one of the group's ``size`` channels equally often."""
    counts = np.bincount(root, minlength=size)
    return bool(counts.min() == counts.max())


def group_offsets(sizes: Sequence[int]) -> torch.Tensor:
    """int64 [G + 1]: row offsets of each group in the stacked channel dimension (0, then the
    cumulative sum of the group sizes)."""
    sizes_t = torch.tensor(list(sizes), dtype=torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes_t, 0)])


def group_edges(raws: Sequence[RawGroup],
                dataflow: Dict[int, Tuple[str, Tuple[int, ...]]]) -> List[Tuple[int, int]]:
    """Directed edges ``(g, h)``, g != h, between the groups of ``raws`` (sorted, no duplicates).

    There is an edge g -> h when a conv/linear layer L writes group h (L's output channels are
    h's channels; a depthwise conv in h counts too) and reads group g. L reads g when

    a) L's input channels carry channels of g (torch-pruning couples them: L is one of g's
       consumers). Ops that keep channels aligned do not break this: BN and other norms,
       activations, pooling, residual adds, concatenation, flatten/reshape, and depthwise convs
       (a depthwise conv is part of its input's group, so it adds no edge of its own); or
    b) L's input comes, through such channel-aligned ops, from a conv/linear layer M whose output
       channels are in no group (an ignored layer, a grouped conv, a layer of a skipped or
       protected group), and M reads g (applied recursively: pruning g changes M's input, so g
       reaches L through M).

    ``dataflow``: node id -> (kind, ids of the nodes it reads), from ``TracedDependencies``.
    """
    writes: Dict[int, Set[int]] = {}
    reads: Dict[int, Set[int]] = {}
    for g, raw in enumerate(raws):
        for d in raw.dims:
            if d.kind not in _PRODUCER_KINDS:
                continue
            if "out" in d.roles:
                writes.setdefault(d.node_id, set()).add(g)
            if "in" in d.roles:
                reads.setdefault(d.node_id, set()).add(g)

    def mixing_inputs(node_id: int) -> Set[int]:
        """conv/linear nodes whose outputs reach ``node_id``'s input through channel-aligned ops."""
        found: Set[int] = set()
        seen: Set[int] = set()
        stack = list(dataflow.get(node_id, ("", ()))[1])
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            kind, inputs = dataflow.get(n, ("", ()))
            if kind in MIXING_KINDS:
                found.add(n)
            else:
                stack.extend(inputs)
        return found

    memo: Dict[int, Set[int]] = {}

    def groups_read(node_id: int) -> Set[int]:
        if node_id in memo:
            return memo[node_id]
        memo[node_id] = set()  # guards against cycles
        out = set(reads.get(node_id, ()))
        for m in mixing_inputs(node_id):
            if not writes.get(m):  # output channels in no group: look through it
                out |= groups_read(m)
        memo[node_id] = out
        return out

    edges = set()
    for node_id in sorted(writes):
        for g in groups_read(node_id):
            edges.update((g, h) for h in writes[node_id] if h != g)
    return sorted(edges)


def edges_to_csr(edges: Iterable[Tuple[int, int]], num_nodes: int,
                 symmetric: bool = True) -> CSRGraph:
    """[num_nodes, num_nodes] CSRGraph with value 1.0 (float32) per edge ``(row, col)``; with
    ``symmetric`` the reverse edges are added. Duplicates merged, columns sorted per row."""
    pairs = set((int(a), int(b)) for a, b in edges)
    if symmetric:
        pairs |= {(b, a) for a, b in pairs}
    ordered = sorted(pairs)
    rows = torch.tensor([a for a, _ in ordered], dtype=torch.long)
    cols = torch.tensor([b for _, b in ordered], dtype=torch.long)
    counts = torch.bincount(rows, minlength=num_nodes) if ordered else torch.zeros(
        num_nodes, dtype=torch.long)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return CSRGraph(indptr, cols, torch.ones(len(ordered), dtype=torch.float32))
