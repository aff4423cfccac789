"""Thin wrapper around torch-pruning's DependencyGraph: the only module that imports torch_pruning.

It traces a model once (on a copy the caller owns), lists the coupled channel groups as plain data
(module names, roles, index arrays) and applies a group's pruning on a model copy. Nothing outside
``gcnprune_fast.space`` sees torch-pruning objects.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from numbers import Number
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import _helpers as _tp_helpers
from torch_pruning.dependency.dependency import Dependency as _TPDependency
from torch_pruning.dependency.group import Group as _TPGroup
from torch_pruning.pruner import function as _tp_function

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


# indices torch-pruning's list walk may push for one group before the pair walk takes over
_CLOSURE_BUDGET = 2_000_000


class _DependencyGraph(tp.DependencyGraph):
    """torch-pruning's DependencyGraph with an opt-out, per instance, of the index-mapping refresh.

    ``get_pruning_group`` recomputes every concat/split index mapping of the graph for each group
    it forms (quadratic in the number of groups: minutes for DenseNets). While no layer changes
    shape the mappings are constant, so inside ``frozen_mappings()`` the recomputation is skipped.
    The switch is an attribute of this graph object only: nothing global is patched, so graphs
    used by other threads (or later calls) are never affected."""

    def __init__(self):
        super().__init__()
        self._mappings_frozen = False
        self._widest = None  # the largest channel count of any layer (see _pair_closure)

    @contextlib.contextmanager
    def frozen_mappings(self):
        previous = self._mappings_frozen
        self._mappings_frozen = True
        try:
            yield self
        finally:
            self._mappings_frozen = previous

    @staticmethod
    def _list_closure(root_dep, idxs, budget: int):
        """torch-pruning's walk: index lists pushed along the dependencies until a dimension sees
        a list it has seen before. Returns the unmerged Group, or None once more than ``budget``
        indices were pushed (the lists can multiply around cycles through reshapes)."""
        group = _TPGroup()
        group.add_dep(dep=root_dep, idxs=idxs)
        visited_node = set()
        stack = [(root_dep, idxs)]
        pushed = 0
        while stack:
            dep, dep_idxs = stack.pop(-1)
            node, fn = dep.target, dep.handler
            visited_node.add(node)
            for new_dep in node.dependencies:
                if not new_dep.is_triggered_by(fn):
                    continue
                new_indices = dep_idxs
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_indices = mapping(new_indices)
                if len(new_indices) == 0:
                    continue
                if new_dep.target in visited_node and group.has_pruning_op(new_dep, new_indices):
                    continue
                pushed += len(new_indices)
                if pushed > budget:
                    return None
                group.add_dep(new_dep, new_indices)
                stack.append((new_dep, new_indices))
        return group

    def _pair_closure(self, root_dep, idxs):
        """The same closure computed per (channel, root channel) pair: each pair travels each
        dependency once, so the walk is linear in the group's size. Indices beyond any layer's
        width (a reshape mapping channels onto another axis, e.g. ECA's Conv1d over the channels,
        multiplies them around a cycle) are dropped and the group is marked ``invalid``."""
        if self._widest is None:
            widths = [1]
            for m in self.module2node:
                if isinstance(m, nn.Module):
                    for attr in ("in_channels", "out_channels", "in_features", "out_features",
                                 "num_features", "num_channels"):
                        widths.append(int(getattr(m, attr, 0) or 0))
                elif isinstance(m, torch.Tensor):
                    widths.append(int(m.numel()))
            self._widest = max(widths)
        group = _TPGroup()
        group.add_dep(dep=root_dep, idxs=idxs)
        group.invalid = None
        seen: Dict[tuple, set] = {(id(root_dep.target), root_dep.handler): set(idxs)}
        stack = [(root_dep, idxs)]
        while stack:
            dep, dep_idxs = stack.pop(-1)
            node, fn = dep.target, dep.handler
            for new_dep in node.dependencies:
                if not new_dep.is_triggered_by(fn):
                    continue
                new_indices = dep_idxs
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_indices = mapping(new_indices)
                known = seen.setdefault((id(new_dep.target), new_dep.handler), set())
                fresh = [i for i in dict.fromkeys(new_indices) if i not in known]
                if any(i.idx >= self._widest for i in fresh):
                    group.invalid = ("its channels are mapped onto another axis (a reshape that "
                                     "torch-pruning cannot follow, e.g. a Conv1d over the channels)")
                    fresh = [i for i in fresh if i.idx < self._widest]
                if not fresh:
                    continue
                known.update(fresh)
                group.add_dep(new_dep, fresh)
                stack.append((new_dep, fresh))
        return group

    def get_pruning_group(self, module, pruning_fn, idxs):
        """``tp.DependencyGraph.get_pruning_group`` (torch-pruning 1.6.1) with the index-mapping
        refresh skipped while the mappings are frozen; otherwise the same steps."""
        if not self._mappings_frozen:
            return super().get_pruning_group(module, pruning_fn, idxs)
        if module not in self.module2node:
            raise ValueError("Module {} is not in the dependency graph.".format(module))
        if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels \
                and module.out_channels > 1:
            pruning_fn = _tp_function.prune_depthwise_conv_out_channels
        if isinstance(idxs, Number):
            idxs = [idxs]
        idxs = [_tp_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
        root_node = self.module2node[module]
        root_dep = _TPDependency(pruning_fn, pruning_fn, source=root_node, target=root_node)
        budget = _CLOSURE_BUDGET + 64 * len(idxs)
        group = self._list_closure(root_dep, idxs, budget)
        if group is None:  # torch-pruning's walk explodes here (ECA-style channel convs)
            group = self._pair_closure(root_dep, idxs)
        # every (channel, root channel) pair each dimension was reached with: the merge below keeps
        # one root per channel, which hides channels a group carries twice (tied root channels)
        root_pairs: Dict[tuple, set] = {}
        for dep, dep_idxs in group.items:
            root_pairs.setdefault((id(dep.target), dep.handler), set()).update(
                (int(i.idx), int(i.root_idx)) for i in dep_idxs)
        merged_group = _TPGroup()
        for dep, dep_idxs in group.items:
            if isinstance(dep.target.module, nn.Parameter) and any(
                    dep.target.module is p for p in self.ignored_params):
                continue
            merged_group.add_and_merge(dep, dep_idxs)
        merged_group._DG = self
        for i in range(len(merged_group)):
            hybrid_idxs = merged_group[i].idxs
            item = _tp_helpers.GroupItem(merged_group[i].dep, _tp_helpers.to_plain_idxs(hybrid_idxs))
            item.root_idxs = _tp_helpers.to_root_idxs(hybrid_idxs)
            merged_group[i] = item
        merged_group.root_pairs = root_pairs
        merged_group.invalid = getattr(group, "invalid", None)
        return merged_group


@dataclass
class DimRef:
    """One channel dimension of one graph node that belongs to a group.

    ``local[i]`` is an index into the node's dimension, ``root[i]`` the group channel it carries
    (the root layer's output channel). ``roles`` is a subset of {"in", "out"}: "out" for a layer's
    output channels, "in" for its input channels; channel-wise ops (BN, ReLU, add, depthwise conv)
    have both."""

    node_id: int
    name: Optional[str]  # module name for real modules, None for functional ops
    module: object  # nn.Module, nn.Parameter or a torch-pruning pseudo op
    kind: str  # "conv", "depthwise", "linear", "bn", "ln", "gn", "in", "prelu", "mha", "param",
    # "output", "concat", "split", "slice", "reshape", "unbind", "expand", "op" (other functional ops)
    roles: frozenset
    local: np.ndarray
    root: np.ndarray


@dataclass
class RawGroup:
    """One coupled group: its channels are the root layer's output channels, or, where the network
    carries a channel twice (GhostNet's ``cat([x, depthwise(x)])`` gated by an SE whose expand conv
    is the root: root channels i and i + C/2 are one channel of x), classes of tied root channels:
    ``root_classes[c]`` lists the root channels of group channel c (None: channel c == root
    channel c). ``DimRef.root`` holds group channels."""

    root_name: str
    size: int
    dims: List[DimRef] = field(default_factory=list)
    root_classes: Optional[List[List[int]]] = None
    invalid: Optional[str] = None  # why the group cannot be pruned (torch-pruning's mapping fails)

    def root_channels(self, channels: Sequence[int]) -> List[int]:
        """The root layer's output channels of group channels ``channels`` (sorted)."""
        if self.root_classes is None:
            return sorted(int(c) for c in channels)
        return sorted(r for c in channels for r in self.root_classes[int(c)])


def _grouped_conv_ties(node, roles, pairs, name):
    """For a grouped (not depthwise) conv dimension: the conv only stays a valid grouped conv when
    every one of its groups loses the same within-group channels, so the group channels at
    within-group position j of every conv group are tied. Returns pairs (j, root) for
    ``_tie_classes``, ``[]`` for other layers, or a reason string when the dimension carries only
    part of some within-group position's channels (the conv groups could not stay equal)."""
    m = node.module
    if not (isinstance(m, tp.ops.TORCH_CONV) and m.groups > 1 and _kind(node) == "conv"):
        return []
    out: List[Tuple[int, int]] = []
    for role in roles:
        width = m.in_channels if role == "in" else m.out_channels
        per = width // m.groups
        seen: Dict[int, set] = {}
        for local, root in pairs:
            seen.setdefault(local % per, set()).add(local // per)
            out.append((local % per, root))
        if any(len(gs) != m.groups for gs in seen.values()):
            return (f"grouped conv {name} ({m.groups} groups) would lose different channels in "
                    f"different groups")
    return out


def _tie_classes(size: int, pairs_per_dim: Sequence[Sequence[Tuple[int, int]]]):
    """Classes of root channels that some dimension carries at one position (union-find); None
    when every root channel is its own class. Classes are ordered by their smallest member."""
    parent = list(range(size))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tied = False
    for pairs in pairs_per_dim:
        first: Dict[int, int] = {}
        for local, root in pairs:
            if local in first:
                a, b = find(first[local]), find(root)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                    tied = True
            else:
                first[local] = root
    if not tied:
        return None
    members: Dict[int, List[int]] = {}
    for r in range(size):
        members.setdefault(find(r), []).append(r)
    return sorted(members.values(), key=lambda m: m[0])


def _kind(node) -> str:
    t = tp.ops.OPTYPE
    m = node.module
    return {
        t.CONV: "conv", t.DEPTHWISE_CONV: "depthwise", t.LINEAR: "linear", t.BN: "bn", t.LN: "ln",
        t.GN: "gn", t.IN: "in", t.PRELU: "prelu", t.MHA: "mha", t.PARAMETER: "param",
        t.OUTPUT: "output", t.EMBED: "embed", t.LSTM: "lstm", t.CONCAT: "concat", t.SPLIT: "split",
        t.SLICE: "slice", t.RESHAPE: "reshape", t.UNBIND: "unbind", t.EXPAND: "expand",
    }.get(node.type, "op") if not isinstance(m, tp.ops._OutputOp) else "output"


def _partial_channel_selection(node) -> Optional[str]:
    """What ``node`` does when it hands on only part of its input's channels with sizes fixed in
    the model's code (a split/chunk, a slice such as ``x[:, :k]``), else None. Removing channels
    before such an op shifts what it selects: the pruned model would read other channels (or
    fail), so the group through it cannot be pruned."""
    gf, m = node.grad_fn, node.module
    sizes = tuple(getattr(gf, "_saved_self_sym_sizes", ()) or ())
    if node.type == tp.ops.OPTYPE.SPLIT:
        dim = getattr(gf, "_saved_dim", 1)
        if (sizes and 0 <= dim < len(sizes) and dim != 1) or getattr(m, "offsets", None) is None:
            return None  # not along the channels (torch-pruning maps none)
        return "a torch.split/chunk of its channels"
    if node.type == tp.ops.OPTYPE.SLICE:
        dim = m.dim
        if not sizes or not 0 <= dim < len(sizes):
            return None
        if (len(sizes) == 4 and dim != 1) or (len(sizes) == 3 and dim != 2) or dim == 0:
            return None
        width = int(sizes[dim])
        start = int(m.start or 0)
        end = width if m.end is None else min(int(m.end), width)
        if start <= 0 and end >= width and (m.step or 1) == 1:
            return None  # keeps every channel
        return f"a slice [{start}:{end}:{m.step or 1}] of its {width} channels"
    return None


# torch-pruning function -> the op it was handling (for error messages)
_TP_FUNCTION_OPS = {
    "update_reshape_index_mapping": "a view/reshape/flatten that mixes the channel dimension "
                                    "(e.g. a channel shuffle or a token reshape)",
    "update_concat_index_mapping": "torch.cat",
    "update_split_index_mapping": "torch.split/chunk",
    "update_unbind_index_mapping": "torch.unbind",
    "update_slice_index_mapping": "tensor slicing",
    "update_expand_index_mapping": "expand/repeat",
    "init_shape_information": "shape inference of a reshape/concat",
    "_trace": "the traced forward pass",
}


def _describe_failure(exc: BaseException) -> str:
    """The innermost torch-pruning function in the traceback and the op it handles."""
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "torch_pruning" in f.filename]
    if not frames:
        return f"{type(exc).__name__}: {exc}"
    inner = frames[-1].name
    named = [f.name for f in reversed(frames) if f.name in _TP_FUNCTION_OPS]
    op = _TP_FUNCTION_OPS[named[0]] if named else "an op torch-pruning does not support"
    return f"unsupported op: {op} (torch-pruning {inner}: {type(exc).__name__}: {exc})"


class TracedDependencies:
    """Dependency graph of ``model`` traced with ``forward_fn(model, example_inputs)``.

    ``model`` is put in eval mode by the tracer, so callers pass a private copy.
    Attributes: ``groups`` (list[RawGroup]), ``unknown_ops`` (names of ops torch-pruning treated
    as element-wise without knowing them), ``grad_fn_to_node_id`` (dict), ``nodes`` (id -> node),
    ``channels_last_dim`` (True when linear layers act on [N, L, C] tensors), and plain-data views
    of the graph for the rest of the package: ``module_node_ids`` (module, parameter or op ->
    node id), ``pruning_dims`` (node id -> the dim torch-pruning prunes for bare parameters, or
    None), ``dataflow`` (node id -> (kind, ids of the nodes whose outputs it reads)),
    ``partial_selections`` (node id -> why, for splits/slices that keep only some channels).
    """

    def __init__(self, model: nn.Module, example_inputs, forward_fn: Callable,
                 ignored_modules: Sequence[nn.Module] = ()):
        self.model = model
        self.dg = _DependencyGraph()
        # torch-pruning follows autograd: a frozen parameter (requires_grad=False) fed by a frozen
        # input leaves no grad_fn and its layer drops out of the graph (a frozen stem or backbone
        # would silently shrink the pruning space). The trace sees every parameter as trainable;
        # the flags are restored afterwards (pruned layers get new parameters: see surgery).
        thawed = [p for p in model.parameters()
                  if not p.requires_grad and (p.is_floating_point() or p.is_complex())]
        try:
            for p in thawed:
                p.requires_grad_(True)
            with torch.enable_grad():
                # verbose=False: no warnings (catching them would patch the global warnings state,
                # which is not thread-safe); unknown ops are read from the graph below.
                self.dg.build_dependency(model, example_inputs, forward_fn=forward_fn, verbose=False)
        except Exception as e:
            raise RuntimeError(_describe_failure(e)) from e
        finally:
            for p in thawed:
                p.requires_grad_(False)
        self.unknown_ops = sorted({str(n.grad_fn) for n in self.dg.module2node.values()
                                   if isinstance(n.module, tp.ops._ElementWiseOp)
                                   and getattr(n.module, "_grad_fn", None) == "Unknown"})
        self.nodes = {id(n): n for n in self.dg.module2node.values()}
        self.grad_fn_to_node_id = {n.grad_fn: id(n) for n in self.dg.module2node.values()
                                   if n.grad_fn is not None}
        self.channels_last_dim = not self.dg._2d_4d
        self.module_node_ids = {m: id(n) for m, n in self.dg.module2node.items()}
        self.pruning_dims = {id(n): n.pruning_dim for n in self.dg.module2node.values()}
        self.partial_selections = {id(n): why for n in self.dg.module2node.values()
                                   for why in [_partial_channel_selection(n)] if why}
        self.dataflow: Dict[int, Tuple[str, Tuple[int, ...]]] = {
            id(n): (_kind(n), tuple(id(i) for i in n.inputs)) for n in self.dg.module2node.values()}
        module_names = {m: n for n, m in model.named_modules()}
        self.groups: List[RawGroup] = []
        with self.dg.frozen_mappings():  # build_dependency computed them; nothing is pruned here
            try:
                all_groups = list(self.dg.get_all_groups(ignored_layers=list(ignored_modules),
                                                         root_module_types=ROOT_TYPES))
            except Exception as e:
                raise RuntimeError(_describe_failure(e)) from e
        for group in all_groups:
            root = group[0].dep.target.module
            size = self.dg.get_out_channels(root)
            raw = RawGroup(root_name=module_names[root], size=int(size),
                           invalid=getattr(group, "invalid", None))
            merged: Dict[Tuple[int, frozenset], Tuple[list, list]] = {}
            full_pairs = getattr(group, "root_pairs", None)
            for item in group.items:
                node, handler = item.dep.target, item.dep.handler
                roles = set()
                if self.dg.is_out_channel_pruning_fn(handler):
                    roles.add("out")
                if self.dg.is_in_channel_pruning_fn(handler):
                    roles.add("in")
                if not roles:  # pseudo ops: channel-wise
                    roles = {"in", "out"}
                key = (id(node), frozenset(roles))
                loc, rt = merged.setdefault(key, ([], []))
                reached = full_pairs.get((id(node), handler)) if full_pairs is not None else None
                if reached is not None:
                    loc.extend(p[0] for p in reached)
                    rt.extend(p[1] for p in reached)
                else:
                    loc.extend(int(i) for i in item.idxs)
                    rt.extend(int(i) for i in item.root_idxs)
            dim_pairs = {key: sorted(set(zip(loc, rt))) for key, (loc, rt) in merged.items()}
            ties = list(dim_pairs.values())
            for (nid, roles), pairs in dim_pairs.items():
                ties_or_why = _grouped_conv_ties(self.nodes[nid], roles, pairs,
                                                 module_names.get(self.nodes[nid].module))
                if isinstance(ties_or_why, str):
                    raw.invalid = raw.invalid or ties_or_why
                elif ties_or_why:
                    ties.append(ties_or_why)
            raw.root_classes = _tie_classes(raw.size, ties)
            if raw.root_classes is not None:
                class_of = {r: c for c, members in enumerate(raw.root_classes) for r in members}
                dim_pairs = {key: sorted({(loc, class_of[rt]) for loc, rt in pairs})
                             for key, pairs in dim_pairs.items()}
                raw.size = len(raw.root_classes)
            for (nid, roles), pairs in dim_pairs.items():
                node = self.nodes[nid]
                raw.dims.append(DimRef(
                    node_id=nid, name=module_names.get(node.module) if isinstance(node.module, nn.Module) else None,
                    module=node.module, kind=_kind(node), roles=roles,
                    local=np.array([p[0] for p in pairs], dtype=np.int64),
                    root=np.array([p[1] for p in pairs], dtype=np.int64)))
            self.groups.append(raw)


def prune_groups_inplace(dep_graph: TracedDependencies, removals: Dict[str, Sequence[int]]) -> None:
    """Remove, for each ``root_name -> idxs`` in ``removals``, channels ``idxs`` of the group rooted
    at layer ``root_name`` (its output channels, or classes of tied ones: ``RawGroup.root_classes``)
    and everything coupled to them, in place on ``dep_graph.model``.

    All groups are resolved first in the original coordinates, then every layer dimension is sliced
    once with the union of its indices (groups never share channels), which avoids re-deriving the
    concat index mappings after each group. Models with bare nn.Parameters being pruned (ViT class
    tokens etc.) take torch-pruning's sequential path, which re-registers those parameters."""
    dg = dep_graph.dg
    roots = {name: dep_graph.model.get_submodule(name) for name in removals}
    by_root = {raw.root_name: raw for raw in dep_graph.groups}
    removals = {name: by_root[name].root_channels(idxs) if name in by_root else list(idxs)
                for name, idxs in removals.items()}
    if any(n.type == tp.ops.OPTYPE.PARAMETER for n in dg.module2node.values()):
        for name, idxs in removals.items():
            pruner = dg.get_pruner_of_module(roots[name])
            group = dg.get_pruning_group(roots[name], pruner.prune_out_channels, [int(i) for i in idxs])
            group.prune(record_history=False)
        return
    work: Dict[tuple, list] = {}
    with dg.frozen_mappings():
        for name, idxs in removals.items():
            pruner = dg.get_pruner_of_module(roots[name])
            group = dg.get_pruning_group(roots[name], pruner.prune_out_channels, [int(i) for i in idxs])
            for item in group.items:
                key = (id(item.dep.target), item.dep.handler)
                work.setdefault(key, [item.dep, set()])[1].update(int(i) for i in item.idxs)
    for dep, idxs in work.values():
        dep(sorted(idxs))
