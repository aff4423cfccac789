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
from torch_pruning.dependency import index_mapping as _tp_index_mapping
from torch_pruning.dependency import shape_infer as _tp_shape_infer
from torch_pruning.dependency.group import Group as _TPGroup
from torch_pruning.dependency.node import Node as _TPNode
from torch_pruning.pruner import function as _tp_function

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


# indices torch-pruning's list walk may push for one group before the pair walk takes over
# (and the pairs the pair walk may handle before it gives the group up)
_CLOSURE_BUDGET = 1_000_000
_LIST_WALK_ITEMS = 5_000  # group items after which the list walk hands over to the pair walk
_EXPLODES = ("its channels multiply through reshapes torch-pruning cannot follow (e.g. a Conv1d "
             "over the channel axis, as in ECA attention)")


def _mapped_size(dep, n: int) -> int:
    """Upper bound of the number of indices ``dep``'s index mappings make of ``n`` indices
    (checked before the mapping builds them: a flatten mapping multiplies them)."""
    for mapping in dep.index_mapping:
        stride = getattr(mapping, "_stride", None)
        if stride is not None and not getattr(mapping, "reverse", True):
            n *= int(stride)
    return n


class _PermutationMapping:
    """Index mapping through a fixed channel permutation: index k becomes ``perm[k]``."""

    def __init__(self, perm):
        self.perm = list(perm)
        self.reverse = True  # never multiplies indices (see _mapped_size)

    def __call__(self, idxs):
        n = len(self.perm)
        return [_tp_helpers._HybridIndex(idx=self.perm[i.idx], root_idx=i.root_idx)
                for i in idxs if 0 <= i.idx < n]


def _update_split_index_mapping(node) -> None:
    """torch-pruning's split mapping pairs the i-th consumer it discovered with the i-th chunk
    (wrong, or an IndexError, when a chunk has several consumers or they were found out of
    order). Here each consumer is mapped to the chunk(s) it really reads: autograd records the
    split output index of every input of the consumer."""
    gf = node.grad_fn
    sizes = tuple(getattr(gf, "_saved_self_sym_sizes", ()) or ())
    dim = getattr(gf, "_saved_dim", 1)
    if sizes and 0 <= dim < len(sizes) and dim != 1:
        return
    offsets = getattr(node.module, "offsets", None)
    if offsets is None or not node.enable_index_mapping:
        return
    for out_node in node.outputs:
        chunks = [nr for fn, nr in getattr(out_node.grad_fn, "next_functions", ())
                  if fn is gf and nr + 1 < len(offsets)]
        span = ([offsets[min(chunks)], offsets[max(chunks) + 1]] if chunks
                else [offsets[0], offsets[-1]])
        for dep in node.dependencies:
            if dep.target is out_node:
                dep.index_mapping[0] = _tp_index_mapping._SplitIndexMapping(offset=span,
                                                                             reverse=False)
        for dep in out_node.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _tp_index_mapping._SplitIndexMapping(offset=span,
                                                                             reverse=True)


def _channel_shuffles(nodes):
    """(first view node, last view node, permutation) of every channel shuffle in the graph:
    ``x.view(N, g, c, *s).transpose(1, 2)[.contiguous()].view(N, g*c, *s)``; output channel k
    reads input channel ``perm[k]``."""
    out = []
    t = tp.ops.OPTYPE
    for last in nodes:
        if last.type != t.RESHAPE or len(last.inputs) != 1:
            continue
        sizes = tuple(getattr(last.grad_fn, "_saved_self_sym_sizes", ()) or ())
        if len(sizes) < 3:
            continue
        n = last.inputs[0]
        while n.type == t.ELEMENTWISE and len(n.inputs) == 1 and hasattr(n.grad_fn, "name") \
                and n.grad_fn.name().startswith("Clone"):
            n = n.inputs[0]
        gf = n.grad_fn
        if not (hasattr(gf, "name") and gf.name().startswith("TransposeBackward")
                and {getattr(gf, "_saved_dim0", None), getattr(gf, "_saved_dim1", None)} == {1, 2}
                and len(n.inputs) == 1):
            continue
        first = n.inputs[0]
        first_sizes = tuple(getattr(first.grad_fn, "_saved_self_sym_sizes", ()) or ())
        if first.type != t.RESHAPE or len(first_sizes) != len(sizes) - 1:
            continue
        c, g = int(sizes[1]), int(sizes[2])  # after the transpose: [N, c, g, ...]
        if first_sizes[1] != c * g or tuple(first_sizes[2:]) != tuple(sizes[3:]):
            continue
        # input channel i*c + j sits at (i, j), after the transpose at (j, i) = output j*g + i
        out.append((first, last, [(k % g) * c + k // g for k in range(c * g)]))
    return out


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
        self._out_channels_memo = None  # node -> inferred channels, while no layer changes shape

    @contextlib.contextmanager
    def _shapes_fixed(self):
        """Inside, inferred channel counts are remembered (no layer changes shape meanwhile)."""
        outer = self._out_channels_memo is None
        if outer:
            self._out_channels_memo = {}
        try:
            yield
        finally:
            if outer:
                self._out_channels_memo = None

    def get_out_channels(self, module_or_node):
        """torch-pruning's count, and for a node without one (an add, an activation, a concat)
        the count its recursive inference would find, computed once per node.

        torch-pruning's ``infer_out_channels_recursively`` asks this method first and recurses
        only when it answers None. Its recursion visits every input of every residual add, so its
        work doubles per block (Swin-S/B exceed its 500-step cap and fail); this walk follows
        the same rules (a concat sums its inputs, a split output has its split size, any other
        node takes its last input's count) over each node once."""
        ch = super().get_out_channels(module_or_node)
        if ch is not None or not isinstance(module_or_node, _TPNode):
            return ch
        with self._shapes_fixed():
            return self._inferred_out_channels(module_or_node)

    def _inferred_out_channels(self, root) -> Optional[int]:
        memo = self._out_channels_memo
        concat, split = tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT

        def sized_split(n) -> bool:  # a split whose output sizes are known: no walk above it
            return n.type == split and n.module.split_sizes is not None

        stack = [root]  # iterative post-order: graphs are deeper than Python's recursion limit
        while stack:
            node = stack[-1]
            if node in memo:
                stack.pop()
                continue
            known = super().get_out_channels(node)
            if known is not None:
                memo[stack.pop()] = known
                continue
            walked = [i for i in node.inputs if node.type == concat or not sized_split(i)]
            pending = [i for i in walked if i not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            ch = 0
            for i in node.inputs:
                if node.type == concat:
                    if memo[i] is None:
                        ch = None
                        break
                    ch += memo[i]
                elif sized_split(i):
                    ch = next((size for out, size in zip(i.outputs, i.module.split_sizes)
                               if out == node), ch)
                else:
                    ch = memo[i]
            memo[node] = None if ch == 0 else ch
        return memo[root]

    @contextlib.contextmanager
    def frozen_mappings(self):
        previous = self._mappings_frozen
        self._mappings_frozen = True
        try:
            yield self
        finally:
            self._mappings_frozen = previous

    def build_dependency(self, model, example_inputs, forward_fn=None, verbose: bool = False):
        """``tp.DependencyGraph.build_dependency`` (torch-pruning 1.6.1, the arguments used here)
        with ``update_index_mapping`` that also maps channel shuffles."""
        self.verbose = verbose
        self.model = model
        self._module2name = {module: name for (name, module) in model.named_modules()}
        self.ignored_params = []
        self._param_to_name, self.unwrapped_parameters = self._detect_unwrapped_parameters(None)
        assert torch.is_grad_enabled(), "tracing needs autograd"
        self.module2node = self._trace(model, example_inputs, forward_fn, output_transform=None)
        self._build_dependency(self.module2node)
        with self._shapes_fixed():
            _tp_shape_infer.init_shape_information(self)
            self.update_index_mapping()
        return self

    def update_index_mapping(self):
        """torch-pruning's index-mapping update, except that a channel shuffle
        (view [N, g*c, ...] -> [N, g, c, ...], transpose(1, 2), view back) maps channels through
        its permutation instead of failing as a reshape."""
        with self._shapes_fixed():
            self._update_index_mapping()

    def _update_index_mapping(self):
        shuffles = _channel_shuffles(self.module2node.values())
        skip = {id(n) for first, last, _ in shuffles for n in (first, last)}
        t = tp.ops.OPTYPE
        for node in list(self.module2node.values()):
            if id(node) in skip:
                continue
            if node.type == t.CONCAT:
                _tp_index_mapping.update_concat_index_mapping(self, node)
            elif node.type == t.SPLIT:
                _update_split_index_mapping(node)
            elif node.type == t.RESHAPE:
                _tp_index_mapping.update_reshape_index_mapping(self, node)
            elif node.type == t.UNBIND:
                _tp_index_mapping.update_unbind_index_mapping(self, node)
            elif node.type == t.EXPAND:
                _tp_index_mapping.update_expand_index_mapping(self, node)
            elif node.type == t.SLICE:
                _tp_index_mapping.update_slice_index_mapping(self, node)
        for first, last, perm in shuffles:
            inverse = [0] * len(perm)
            for k, p in enumerate(perm):
                inverse[p] = k
            for src in last.inputs:  # pre-shuffle channel p is post-shuffle channel inverse[p]
                for dep in src.dependencies:
                    if dep.target is last:
                        dep.index_mapping[0] = _PermutationMapping(inverse)
                for dep in last.dependencies:
                    if dep.target is src:
                        dep.index_mapping[0] = _PermutationMapping(perm)

    @staticmethod
    def _list_closure(root_dep, idxs, budget: int):
        """torch-pruning's walk: index lists pushed along the dependencies until a dimension sees
        a list it has seen before. Returns the unmerged Group, or None once more than ``budget``
        indices were pushed (the lists can multiply around cycles through reshapes) or the group
        holds more than ``_LIST_WALK_ITEMS`` items."""
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
                pushed += _mapped_size(new_dep, len(dep_idxs))
                if pushed > budget or len(group._group) > _LIST_WALK_ITEMS:
                    return None  # has_pruning_op scans the whole group: quadratic from here
                new_indices = dep_idxs
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_indices = mapping(new_indices)
                if len(new_indices) == 0:
                    continue
                if new_dep.target in visited_node and group.has_pruning_op(new_dep, new_indices):
                    continue
                group.add_dep(new_dep, new_indices)
                stack.append((new_dep, new_indices))
        return group

    def _pair_closure(self, root_dep, idxs):  # noqa: C901
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
        total, budget = 0, _CLOSURE_BUDGET + 64 * len(idxs)
        while stack:
            dep, dep_idxs = stack.pop(-1)
            node, fn = dep.target, dep.handler
            for new_dep in node.dependencies:
                if not new_dep.is_triggered_by(fn):
                    continue
                total += _mapped_size(new_dep, len(dep_idxs))
                if total > budget:  # pairs multiply: a channel reaches many positions and back
                    group.invalid = _EXPLODES
                    return group
                new_indices = dep_idxs
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new_indices = mapping(new_indices)
                known = seen.setdefault((id(new_dep.target), new_dep.handler), set())
                fresh = [i for i in dict.fromkeys(new_indices) if i not in known]
                if any(i.idx >= self._widest for i in fresh):
                    group.invalid = _EXPLODES
                    fresh = [i for i in fresh if i.idx < self._widest]
                if not fresh:
                    continue
                known.update(fresh)
                group.add_dep(new_dep, fresh)
                stack.append((new_dep, fresh))
        return group

    def get_pruning_group(self, module, pruning_fn, idxs):
        """``tp.DependencyGraph.get_pruning_group`` (torch-pruning 1.6.1) with the index-mapping
        refresh skipped while the mappings are frozen, the walk bounded (``_list_closure`` /
        ``_pair_closure``) and every (channel, root channel) pair kept (``root_pairs``)."""
        if not self._mappings_frozen:
            self.update_index_mapping()
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


def _node_label(node, module_names: Dict[object, str]) -> str:
    """A readable name for a torch-pruning graph node: the module name and type, or the op."""
    m = node.module
    name = module_names.get(m) or getattr(node, "name", None)
    if isinstance(m, nn.Module) and not type(m).__module__.startswith("torch_pruning"):
        return f"layer {name!r} ({type(m).__name__})" if name else f"a {type(m).__name__} layer"
    grad_fn = node.grad_fn.name() if hasattr(node.grad_fn, "name") else type(m).__name__
    # the nearest named layer upstream locates the functional op in the model
    seen, frontier = set(), list(node.inputs)
    for _ in range(64):
        if not frontier:
            break
        n = frontier.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.module, nn.Module) and n.module in module_names:
            return f"op {grad_fn} after layer {module_names[n.module]!r}"
        frontier.extend(n.inputs)
    return f"op {grad_fn}"


def _failing_location(exc: BaseException, module_names: Dict[object, str]) -> Optional[str]:
    """The graph node (or layer) torch-pruning was handling where ``exc`` was raised: the
    innermost traceback frame holding a Node or a named module among its locals."""
    from torch_pruning.dependency.node import Node
    tb, found = exc.__traceback__, None
    while tb is not None:
        frame_locals = tb.tb_frame.f_locals
        for key in ("node", "reshape_node", "split_node", "cat_node", "slice_node", "unbind_node",
                    "expand_node", "in_node", "out_node", "root_node", "n"):
            v = frame_locals.get(key)
            if isinstance(v, Node):
                found = _node_label(v, module_names)
                break
        else:
            for key in ("module", "m", "layer"):
                v = frame_locals.get(key)
                if isinstance(v, nn.Module) and v in module_names:
                    found = f"layer {module_names[v]!r} ({type(v).__name__})"
                    break
        tb = tb.tb_next
    return found


def _describe_failure(exc: BaseException, module_names: Optional[Dict[object, str]] = None) -> str:
    """The innermost torch-pruning function in the traceback, the op it handles and the layer or
    op of the model it was at."""
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "torch_pruning" in f.filename]
    where = _failing_location(exc, module_names or {})
    at = f" at {where}" if where else ""
    if isinstance(exc, MemoryError):  # not the op's fault: the process's memory (or its cap) ran out
        return f"out of memory{at} (MemoryError{': ' + str(exc) if str(exc) else ''})"
    if not frames:
        return f"{type(exc).__name__}{at}: {exc}"
    inner = frames[-1].name
    named = [f.name for f in reversed(frames) if f.name in _TP_FUNCTION_OPS]
    op = _TP_FUNCTION_OPS[named[0]] if named else "an op torch-pruning does not support"
    return f"unsupported op{at}: {op} (torch-pruning {inner}: {type(exc).__name__}: {exc})"


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
            raise RuntimeError(_describe_failure(e, {m: n for n, m in model.named_modules()})) from e
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
                raise RuntimeError(_describe_failure(e, module_names)) from e
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
