"""PruningSpace: the facade over the pruning-space modules.

The coupled channel groups of a model (``groups``), keep-masks over them (``masks``), masked
evaluation (``masked_eval``), the cost model (``cost_model``), per-group weights (``weights``),
surgery (``surgery``) and plans (``plans``); tracing and ignored layers in ``tracing``.

Masks are a list of bool tensors, one per group in ``space.groups`` order, True = keep.
The user's model is never modified: tracing and surgery work on deep copies, and the hooks that
``masked`` / ``feature_hooks`` place on the user's model are removed on exit (also on errors).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from gcnprune_fast.ops.csr import CSRGraph
from gcnprune_fast.space import masked_eval, masks as mask_rules, weights
from gcnprune_fast.space.cost_model import build_cost_model
from gcnprune_fast.space.groups import (ChannelGroup, build_groups, edges_to_csr, group_edges,
                                        group_offsets)
from gcnprune_fast.space.plans import PLAN_FORMAT, load_pruned, make_plan, structure_fingerprint
from gcnprune_fast.space.surgery import prune_model
from gcnprune_fast.space.tracing import as_input_tuple, resolve_ignored_layers, trace_model

__all__ = ["PruningSpace", "ChannelGroup", "PLAN_FORMAT", "load_pruned", "structure_fingerprint"]


class PruningSpace:
    """The channel-pruning space of ``model``.

    Args:
        model: the network (not modified).
        example_inputs: a tensor ``[N, ...]`` or tuple of tensors to trace with (batch >= 1).
        ignored_layers: modules or module names whose *output* channels must not be pruned
            (their input channels still follow the upstream groups); see
            ``resolve_ignored_layers``.
        round_to: kept channel counts must be multiples of this (or the whole group).
        min_channels: every group keeps at least this many channels (capped at the group size).

    Attributes (besides the methods): ``model``, ``round_to``, ``min_channels``,
    ``example_inputs`` (tuple of detached copies), ``fingerprint`` (``structure_fingerprint``),
    ``ignored_layers`` (tuple of names), ``output_shape``, ``unknown_ops`` (ops the tracer treated
    as element-wise without knowing them), ``groups`` (list[ChannelGroup]), ``num_groups``,
    ``skipped_groups`` (readable reasons), ``base_flops`` and ``base_params`` (unpruned cost),
    ``cost_exact`` (True when ``cost(masks)`` is the pruned model's exact count for every mask;
    False when some group's cost depends on which channels are kept, not only how many: see
    ``ChannelGroup.cost_exact``) and ``cost_notes`` (why not, readable).

    Raises:
        TypeError / ValueError: bad arguments, inputs the model cannot run on (the message gives
        their shapes), unknown ignored layers, a model without prunable groups.
    """

    def __init__(self, model: nn.Module, example_inputs, ignored_layers=None, round_to: int = 1,
                 min_channels: int = 1):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        inputs = as_input_tuple(example_inputs)
        for arg, value in (("round_to", round_to), ("min_channels", min_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        self.model = model
        self.round_to = round_to
        self.min_channels = min_channels
        self.example_inputs = tuple(t.detach().clone() for t in inputs)
        self.fingerprint = structure_fingerprint(model)
        self.ignored_layers = resolve_ignored_layers(model, ignored_layers)

        trace = trace_model(model, self.example_inputs, self.ignored_layers)
        self.output_shape = trace.output_shape
        self.unknown_ops = trace.deps.unknown_ops
        self.skipped_groups: List[str] = []
        try:
            self.groups, self._raw, self.skipped_groups = build_groups(trace)
        except Exception as e:
            raise RuntimeError(f"listing the channel groups of {type(model).__name__} failed: "
                               f"{type(e).__name__}: {e}") from e
        if not self.groups:
            raise ValueError(
                f"{type(model).__name__} has no prunable channel groups: no conv/linear layer has "
                "output channels that can be removed (the classifier output and ignored layers are "
                f"protected; skipped groups: {self.skipped_groups or 'none'})")
        try:
            self._consumers = masked_eval.consumer_table(self._raw)
            self._cost = build_cost_model(trace, self._raw, [g.size for g in self.groups])
        except Exception as e:
            raise RuntimeError(f"building the cost model of {type(model).__name__} failed: "
                               f"{type(e).__name__}: {e}") from e
        self._group_offsets = np.cumsum([0] + [g.size for g in self.groups[:-1]])
        self._mask_shapes = [torch.Size([g.size]) for g in self.groups]
        # plain data for group_graph (edges computed on first use)
        self._dataflow = trace.deps.dataflow
        self._edges: Optional[List[Tuple[int, int]]] = None
        # Drop the traced copy and graph (grad_fns hold activations); keep only plain data.
        trace.release()
        for raw in self._raw:
            for d in raw.dims:
                d.module = None
        self.base_flops, self.base_params = (int(round(v)) for v in self.cost(self.full_masks()))
        # counts fully determine the cost only when every group's channels are interchangeable
        # for the counter (ChannelGroup.cost_exact) and no dimension fell back to a constant
        self.cost_notes: List[str] = list(self._cost.notes) + [
            f"group {g.index} ({g.name}): a split/slice carries its channels unevenly; the cost of "
            "a mask depends on which channels it keeps, the model counts the average"
            for g in self.groups if not g.cost_exact]
        self.cost_exact = not self.cost_notes

    # ------------------------------------------------------------------ groups
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def group_offsets(self) -> torch.Tensor:
        """int64 [G + 1]: row offsets of each group in the stacked channel dimension (group g's
        channels are rows ``offsets[g]:offsets[g + 1]`` of ``torch.cat`` over the groups)."""
        return group_offsets([g.size for g in self.groups])

    def group_graph(self, symmetric: bool = True) -> CSRGraph:
        """The groups as a graph: CSRGraph [G, G], values 1.0 (float32), columns sorted per row,
        no duplicates, no self loops.

        Directed edge g -> h (row g, column h): some conv/linear layer writes group h (its output
        channels are h's channels) and reads group g, where a layer reads g when

        - its input channels carry g's channels (it is one of ``groups[g].consumers``); ops that
          keep channels aligned in between (BN and other norms, activations, pooling, residual
          adds, concatenation, flatten, depthwise convs, which belong to their input's group)
          don't break this; or
        - its input comes, through such ops, from a conv/linear layer whose output channels are
          in no group (an ignored layer, a grouped conv, a protected or skipped group's layer)
          and that layer reads g (recursively): g then reaches it through the unprunable layer.

        In a ResNet basic block conv1 reads the residual-stream group and writes the inner group,
        conv2 reads the inner group and writes the stream; a projection shortcut reads the
        previous stage's stream and writes the next. With ``symmetric`` (default) every edge is
        also added reversed (an undirected graph, e.g. for GCN aggregation); ``symmetric=False``
        gives the directed data-flow graph."""
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
        if self._edges is None:
            self._edges = group_edges(self._raw, self._dataflow)
        return edges_to_csr(self._edges, self.num_groups, symmetric=symmetric)

    # ------------------------------------------------------------------ masks
    def full_masks(self) -> List[torch.Tensor]:
        """All-True masks (keep everything), one bool tensor [size] per group."""
        return mask_rules.full_masks(self.groups)

    def min_keep(self, g: int) -> int:
        """Fewest channels group ``g`` may keep: ``min_channels`` rounded up to ``round_to``,
        capped at the group size."""
        return mask_rules.min_keep(self.groups[g].size, self.min_channels, self.round_to)

    def valid_count(self, g: int, count: int) -> bool:
        """True when keeping ``count`` channels of group ``g`` honours min_channels and round_to."""
        return mask_rules.valid_count(self.groups[g].size, count, self.min_channels, self.round_to)

    def validate_masks(self, masks, allow_float: bool = False, check_counts: bool = True) -> List[torch.Tensor]:
        """Check masks (list of [size] tensors, one per group) and return them as a list.

        bool tensors are required (float tensors in [0, 1] too when ``allow_float``). With
        ``check_counts``, each group's kept count must honour ``min_keep`` and ``round_to``.
        Raises TypeError (type/dtype) or ValueError (length, shape, counts) naming the group."""
        return mask_rules.validate_masks(masks, self.groups, self.min_channels, self.round_to,
                                         allow_float=allow_float, check_counts=check_counts)

    def round_masks(self, masks, scores=None) -> List[torch.Tensor]:
        """Return masks adjusted to honour ``min_channels`` and ``round_to`` by keeping *more*
        channels (never fewer): the pruned channels with the highest ``scores`` (list of [size]
        tensors; default: lowest index first) are restored until the count is valid."""
        return mask_rules.round_masks(masks, self.groups, self.min_channels, self.round_to,
                                      scores=scores)

    # ------------------------------------------------------------------ cost
    def cost(self, masks) -> Tuple[int, int]:
        """(FLOPs as multiply-accumulates per example, parameters) of the model pruned by masks
        (bool or float masks; a float mask counts its nonzero entries)."""
        try:
            ok = (isinstance(masks, (list, tuple)) and len(masks) == len(self.groups)
                  and [m.shape for m in masks] == self._mask_shapes)
        except AttributeError:
            ok = False
        if not ok:
            self.validate_masks(masks, allow_float=True, check_counts=False)  # raises the details
        flat = torch.cat(masks)
        if flat.dtype != torch.bool:
            flat = flat.ne(0)
        counts = np.add.reduceat(flat.cpu().numpy(), self._group_offsets)
        f, p = self._cost.evaluate_one(counts).tolist()
        return int(round(f)), int(round(p))

    def cost_from_counts(self, counts) -> Tuple[torch.Tensor, torch.Tensor]:
        """Vectorized cost: ``counts`` [..., G] (kept channels per group, int or float) ->
        (flops [...], params [...]) as float64 tensors (MACs per example, parameters).
        Dimensions outside the groups count as constants."""
        if not isinstance(counts, torch.Tensor):
            counts = torch.as_tensor(counts)
        if counts.dim() == 0 or counts.shape[-1] != self.num_groups:
            raise ValueError(f"counts must have shape [..., {self.num_groups}], got "
                             f"{tuple(counts.shape)}")
        if counts.dim() == 1:  # single vector: numpy fast path
            c = counts.numpy() if counts.device.type == "cpu" and not counts.requires_grad \
                else counts.detach().cpu().numpy()
            return torch.from_numpy(self._cost.evaluate_one(c)).unbind()
        return self._cost.evaluate(counts.detach().cpu())

    # ------------------------------------------------------------------ masked evaluation
    @contextlib.contextmanager
    def masked(self, masks) -> Iterator[nn.Module]:
        """Context in which ``space.model`` computes as if pruned by ``masks``.

        Each channel-mixing consumer layer (conv / linear) gets its group channels multiplied by
        the mask (a forward pre-hook), so with bool masks the output equals the pruned model's
        output exactly (groups with ``mask_exact=False`` excepted); float masks scale channels and
        carry gradients (d loss / d mask = first-order Taylor score). Use the model in eval mode
        (BN running statistics) for exactness. Yields the model; hooks are removed on exit."""
        masks = self.validate_masks(masks, allow_float=True, check_counts=False)
        with masked_eval.masked(self.model, self._consumers, masks) as model:
            yield model

    @contextlib.contextmanager
    def feature_hooks(self, fn: Callable[[int, torch.Tensor], None]) -> Iterator[nn.Module]:
        """Context calling ``fn(group_index, activation)`` during every forward of ``space.model``,
        where activation is the output of ``groups[g].feature_module`` ([N, C, ...], C == size;
        see ``ChannelGroup.feature_activation``). "pre-activation" outputs are passed as copies
        (the model may modify them in place afterwards). Hooks are removed on exit."""
        with masked_eval.feature_hooks(self.model, self.groups, fn) as model:
            yield model

    # ------------------------------------------------------------------ weights
    def weight_stats(self) -> List[Dict[str, Optional[torch.Tensor]]]:
        """Per group: 'l1' and 'l2' ([C] float32: the producing layers' filter L1 / L2 norms,
        summed over producers) and 'bn_gamma' ([C] |gamma| averaged over the group's BNs, or None)."""
        return weights.weight_stats(self.model, self._raw)

    def filter_matrix(self, g: int) -> torch.Tensor:
        """[C, D] the producing layers' filters (flattened) of group ``g``, concatenated."""
        if not isinstance(g, int) or not 0 <= g < self.num_groups:
            raise ValueError(f"group index must be in [0, {self.num_groups}), got {g!r}")
        return weights.filter_matrix(self.model, self._raw[g])

    # ------------------------------------------------------------------ surgery and plans
    def _check_model_unchanged(self):
        if structure_fingerprint(self.model) != self.fingerprint:
            raise RuntimeError("the model's structure changed since this PruningSpace was built; "
                               "build a new space")

    def prune(self, masks) -> nn.Module:
        """A new compact model with the masked-out channels removed (the user's model is left
        untouched). Masks must be bool and honour min_channels / round_to (see round_masks).
        The result keeps the module types and the train/eval flags of ``space.model``.

        Raises RuntimeError naming the group or layer when the surgery cannot be applied, the
        pruned model fails on the example inputs (an unsupported op) or, where masking is exact
        (every group's ``mask_exact``), computes something else than the masked model on them
        (channels coupled in a way the tracer got wrong): a wrong model is never returned."""
        masks = self.validate_masks(masks)
        self._check_model_unchanged()
        pruned = prune_model(self.model, self.example_inputs,
                             {g.root: m for g, m in zip(self.groups, masks)},
                             output_shape=self.output_shape, unknown_ops=self.unknown_ops)
        if all(g.mask_exact for g in self.groups) and not all(bool(m.all()) for m in masks):
            self._check_pruned_equals_masked(pruned, masks)
        return pruned

    def _check_pruned_equals_masked(self, pruned: nn.Module, masks) -> None:
        """The pruned model (eval mode) against the masked original on the example inputs."""
        import copy
        reference = copy.deepcopy(self.model).eval()
        flags = {n: m.training for n, m in pruned.named_modules()}
        try:
            pruned.eval()
            with torch.no_grad():
                got = pruned(*self.example_inputs)
                with masked_eval.masked(reference, self._consumers, masks):
                    want = reference(*self.example_inputs)
        finally:
            for n, m in pruned.named_modules():
                m.training = flags.get(n, m.training)
        scale = float(want.abs().max()) if want.numel() else 0.0
        diff = float((got.float() - want.float()).abs().max()) if want.numel() else 0.0
        if not (diff <= 1e-3 * scale + 1e-6):
            raise RuntimeError(
                f"the pruned {type(self.model).__name__} differs from the masked model on the "
                f"example inputs (max difference {diff:.3g}, outputs up to {scale:.3g}): the "
                "tracer coupled some channels wrongly (an op it maps incorrectly); pass the "
                "layers around that op as ignored_layers")

    def plan(self, masks) -> dict:
        """JSON-serializable record of a pruning: model class, structure fingerprint, example
        input shapes, round_to/min_channels, and per group its name, root layer, size and the
        kept channel indices."""
        return make_plan(self, self.validate_masks(masks))
