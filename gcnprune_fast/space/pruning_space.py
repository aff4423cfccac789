"""PruningSpace: the coupled channel groups of a model, masks over them, masked evaluation,
the cost model, surgery and plans.

Masks are a list of bool tensors, one per group in ``space.groups`` order, True = keep.
The user's model is never modified: tracing and surgery work on deep copies, and the hooks that
``masked`` / ``feature_hooks`` place on the user's model are removed on exit (also on errors).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from gcnprune_fast.space import cost_model as cm
from gcnprune_fast.space._dependency import TracedDependencies, prune_groups_inplace

PLAN_FORMAT = "gcnprune_fast.plan/1"

_MIXING_KINDS = ("conv", "linear")  # consumers whose input channels are mixed into every output
_INEXACT_KINDS = ("ln", "gn", "mha", "lstm", "embed", "param")  # channel-coupled statistics etc.
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU,
                nn.PReLU, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Hardtanh)


def _is_pass_through(module: nn.Module) -> bool:
    """Modules that return their input unchanged in eval mode (not useful as feature modules)."""
    return isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                               nn.AlphaDropout)) or (
        isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) == 0)


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
        feature_module: name of the module whose output is the representative activation
            ``[N, C, ...]`` (``[N, ..., C]`` for linear layers on token tensors).
        feature_activation: what that output is: "consumed" (exactly the tensor a consumer layer
            reads: after BN, the non-linearity and the residual add), "post-activation" (an
            activation module applied to the producer's BN) or "pre-activation" (the BN or layer
            output; the model applies a functional non-linearity afterwards, e.g. F.relu).
        mask_exact: True when ``space.masked`` reproduces the pruned network exactly for this group
            (False when a channel-coupled op such as LayerNorm/GroupNorm/attention uses it).
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


def structure_fingerprint(model: nn.Module) -> str:
    """sha256 over module names and types and parameter/buffer names and shapes (16 hex chars)."""
    h = hashlib.sha256()
    for name, m in model.named_modules():
        h.update(f"M|{name}|{type(m).__module__}.{type(m).__qualname__}\n".encode())
    for name, p in model.named_parameters():
        h.update(f"P|{name}|{tuple(p.shape)}\n".encode())
    for name, b in model.named_buffers():
        h.update(f"B|{name}|{tuple(b.shape)}\n".encode())
    return h.hexdigest()[:16]


def _as_input_tuple(example_inputs) -> Tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple/list of tensors, got "
                    f"{type(example_inputs).__name__}")


def _shapes(inputs) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs)


class PruningSpace:
    """The channel-pruning space of ``model``.

    Args:
        model: the network (not modified).
        example_inputs: a tensor ``[N, ...]`` or tuple of tensors to trace with (batch >= 1).
        ignored_layers: modules or module names whose *output* channels must not be pruned
            (their input channels still follow the upstream groups).
        round_to: kept channel counts must be multiples of this (or the whole group).
        min_channels: every group keeps at least this many channels (capped at the group size).

    Raises:
        TypeError / ValueError: bad arguments, inputs the model cannot run on (the message gives
        their shapes), unknown ignored layers, a model without prunable groups.
    """

    def __init__(self, model: nn.Module, example_inputs, ignored_layers=None, round_to: int = 1,
                 min_channels: int = 1):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        inputs = _as_input_tuple(example_inputs)
        for arg, value in (("round_to", round_to), ("min_channels", min_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        self.model = model
        self.round_to = round_to
        self.min_channels = min_channels
        self.example_inputs = tuple(t.detach().clone() for t in inputs)
        self.fingerprint = structure_fingerprint(model)
        self.ignored_layers = self._resolve_ignored(model, ignored_layers)

        try:
            traced = copy.deepcopy(model)
        except Exception as e:  # pragma: no cover - exotic modules
            raise TypeError(f"model cannot be deep-copied ({type(e).__name__}: {e}); the pruning "
                            "space works on copies so that the model is never changed") from e
        traced.eval()
        try:
            with torch.no_grad():
                out = traced(*self.example_inputs)
        except Exception as e:
            raise ValueError(f"the model failed on example_inputs of shape {_shapes(inputs)}: "
                             f"{type(e).__name__}: {e}") from e
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
        self.output_shape = tuple(out.shape)

        calls: List[dict] = []
        self._trace_records = calls
        names = {m: n for n, m in traced.named_modules()}
        counter = [0]

        def pre_hook(module, args):
            counter[0] += 1
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls.append({"name": names[module], "module": module, "start": counter[0],
                          "input": x, "input_version": x._version if x is not None else None})

        def post_hook(module, args, output):
            counter[0] += 1
            for rec in reversed(calls):
                if rec["module"] is module and "finish" not in rec:
                    rec["finish"] = counter[0]
                    rec["output"] = output if isinstance(output, torch.Tensor) else None
                    # in-place ops later change the tensor: the hook saw an older value
                    rec["output_version"] = output._version if rec["output"] is not None else None
                    break

        traced_out = []

        def forward_fn(m, inp):
            handles = []
            for mod in m.modules():
                handles.append(mod.register_forward_pre_hook(pre_hook))
                handles.append(mod.register_forward_hook(post_hook))
            try:
                result = m(*inp)
                traced_out.append(result)
                return result
            finally:
                for h in handles:
                    h.remove()

        ignored_modules = [traced.get_submodule(n) for n in self.ignored_layers]
        try:
            self._deps = TracedDependencies(traced, self.example_inputs, forward_fn, ignored_modules)
        except Exception as e:
            detail = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            raise RuntimeError(f"tracing the channel dependencies of {type(model).__name__} failed: "
                               f"{detail}") from e
        self._traced = traced
        self._output_grad_fns = {o.grad_fn for o in traced_out if isinstance(o, torch.Tensor)}
        self.unknown_ops = self._deps.unknown_ops
        try:
            self._build_groups()
        except Exception as e:
            raise RuntimeError(f"listing the channel groups of {type(model).__name__} failed: "
                               f"{type(e).__name__}: {e}") from e
        if not self.groups:
            raise ValueError(
                f"{type(model).__name__} has no prunable channel groups: no conv/linear layer has "
                "output channels that can be removed (the classifier output and ignored layers are "
                f"protected; skipped groups: {self.skipped_groups or 'none'})")
        try:
            self._build_mask_consumers()
            self._build_cost_model()
        except Exception as e:
            raise RuntimeError(f"building the cost model of {type(model).__name__} failed: "
                               f"{type(e).__name__}: {e}") from e
        # Drop the traced copy and graph (grad_fns hold activations); keep only plain data.
        self._trace_records = None
        self._deps = self._traced = self._output_grad_fns = None
        traced_out.clear()
        for raw in self._raw:
            for d in raw.dims:
                d.module = None
        self.base_flops, self.base_params = (int(round(v)) for v in self.cost(self.full_masks()))

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _resolve_ignored(model: nn.Module, ignored_layers) -> Tuple[str, ...]:
        if ignored_layers is None:
            return ()
        if isinstance(ignored_layers, (nn.Module, str)):
            ignored_layers = [ignored_layers]
        by_module = {m: n for n, m in model.named_modules()}
        names = dict(model.named_modules())
        out = []
        for item in ignored_layers:
            if isinstance(item, str):
                if item not in names or item == "":
                    raise ValueError(f"ignored layer {item!r} is not a submodule of "
                                     f"{type(model).__name__}")
                out.append(item)
            elif isinstance(item, nn.Module):
                if item not in by_module or by_module[item] == "":
                    raise ValueError(f"ignored layer {type(item).__name__} object is not a "
                                     f"submodule of {type(model).__name__}")
                out.append(by_module[item])
            else:
                raise TypeError("ignored_layers must hold nn.Module objects or module names, got "
                                f"{type(item).__name__}")
        return tuple(dict.fromkeys(out))

    def _build_groups(self):
        deps = self._deps
        records = self._trace_records
        calls_per_module: Dict[str, int] = {}
        for r in records:
            calls_per_module[r["name"]] = calls_per_module.get(r["name"], 0) + 1
        self.skipped_groups: List[str] = []
        self._raw: List = []
        groups: List[ChannelGroup] = []
        for raw in deps.groups:
            if any(d.kind == "output" or ("out" in d.roles and
                   deps.nodes[d.node_id].grad_fn in self._output_grad_fns) for d in raw.dims):
                continue  # reaches the network output: protected
            grouped = [d.name for d in raw.dims if d.kind == "conv" and d.module.groups > 1]
            if grouped:
                self.skipped_groups.append(f"{raw.root_name} (grouped conv {grouped[0]})")
                continue
            if raw.size < 1:
                continue
            idx = len(groups)
            producers = tuple(d.name for d in raw.dims if "out" in d.roles and
                              d.kind in ("conv", "linear", "depthwise") and d.name)
            consumers = tuple(d.name for d in raw.dims if "in" in d.roles and "out" not in d.roles
                              and d.kind in _MIXING_KINDS and d.name)
            layers = tuple(dict.fromkeys(d.name for d in raw.dims if d.name))
            main = [p for p in producers
                    if not isinstance(self._traced.get_submodule(p), nn.Conv2d)
                    or self._traced.get_submodule(p).groups == 1]
            if len(main) <= 1:
                name = main[0] if main else raw.root_name
            else:
                shown = main if len(main) <= 4 else main[:2] + ["..."] + main[-1:]
                name = f"residual: {', '.join(shown)} ({len(main)} producers)"
            feat, kind = self._choose_feature(raw, records, calls_per_module)
            exact = not any(d.kind in _INEXACT_KINDS for d in raw.dims)
            groups.append(ChannelGroup(idx, name, raw.size, layers, raw.root_name, producers,
                                       consumers, feat, kind, exact))
            self._raw.append(raw)
        self.groups: List[ChannelGroup] = groups

    def _choose_feature(self, raw, records, calls_per_module) -> Tuple[str, str]:
        """Pick the module whose output is the group's representative activation."""
        full = np.arange(raw.size)
        once = [r for r in records if calls_per_module[r["name"]] == 1 and "finish" in r]
        # 1) the tensor a consumer layer reads, when it reads exactly the group's channels
        for d in raw.dims:
            if not (d.name and "in" in d.roles and "out" not in d.roles and d.kind in _MIXING_KINDS):
                continue
            mod = d.module
            width = mod.in_channels if d.kind == "conv" else mod.in_features
            if width != raw.size or len(d.local) != raw.size or not (
                    np.array_equal(d.local, full) and np.array_equal(d.root, full)):
                continue
            recs = [r for r in records if r["module"] is mod]
            if len(recs) != 1 or recs[0]["input"] is None:
                continue
            x, version = recs[0]["input"], recs[0]["input_version"]
            makers = [r for r in once if r["output"] is x and r["name"]
                      and r["output_version"] == version and not _is_pass_through(r["module"])]
            leaves = [r for r in makers if not any(True for _ in r["module"].children())]
            if leaves:
                return max(leaves, key=lambda r: r["finish"])["name"], "consumed"
            if makers:
                return min(makers, key=lambda r: r["finish"])["name"], "consumed"
        # 2) the producer's BN (or the root layer), followed by an activation module if any
        root_rec = [r for r in records if r["name"] == raw.root_name]
        start = None
        bns = [d for d in raw.dims if d.kind == "bn" and d.name and len(d.local) == raw.size]
        for d in bns:
            recs = [r for r in once if r["module"] is d.module]
            if recs and root_rec and recs[0]["input"] is root_rec[0]["output"]:
                start = recs[0]
                break
        if start is None and bns:
            recs = [r for r in once if r["module"] is bns[0].module]
            start = recs[0] if recs else None
        if start is None:
            return raw.root_name, "pre-activation"
        y = start["output"]
        acts = [r for r in once if isinstance(r["module"], _ACTIVATIONS) and r["start"] > start["finish"]
                and r["input"] is y and r["input_version"] == start["output_version"]]
        if acts:
            return min(acts, key=lambda r: r["start"])["name"], "post-activation"
        return start["name"], "pre-activation"

    def _build_mask_consumers(self):
        """Per channel-mixing consumer: which of its input channels carry which group channels."""
        self._consumers: Dict[str, dict] = {}
        for g, raw in enumerate(self._raw):
            for d in raw.dims:
                if not (d.name and "in" in d.roles and "out" not in d.roles and d.kind in _MIXING_KINDS):
                    continue
                mod = d.module
                entry = self._consumers.setdefault(d.name, {
                    "width": mod.in_channels if d.kind == "conv" else mod.in_features,
                    "dim": 1 if d.kind == "conv" else -1, "parts": []})
                entry["parts"].append((g, torch.from_numpy(d.local.copy()),
                                       torch.from_numpy(d.root.copy())))

    def _build_cost_model(self):
        deps, records = self._deps, self._trace_records
        model = self._traced
        G = len(self.groups)
        cost = cm.CostModel(G, [g.size for g in self.groups])
        members: Dict[Tuple[int, str], Dict[int, int]] = {}
        for g, raw in enumerate(self._raw):
            for d in raw.dims:
                for role in d.roles:
                    members.setdefault((d.node_id, role), {})
                    members[(d.node_id, role)][g] = members[(d.node_id, role)].get(g, 0) + len(d.local)
        module2node = {m: id(n) for m, n in deps.dg.module2node.items()}

        def sig_of_module(mod, role, total):
            nid = module2node.get(mod)
            return cost.signature((nid if nid is not None else id(mod), role), total,
                                  members.get((nid, role), {}) if nid is not None else {})

        def sig_of_tensor(t: torch.Tensor):
            cdim = -1 if (t.dim() == 3 and deps.channels_last_dim) else 1
            if t.dim() < 2:
                return None, 1
            total = t.shape[cdim]
            nid = deps.grad_fn_to_node_id.get(t.grad_fn)
            i = cost.signature(("t", nid if nid is not None else id(t)), total,
                               members.get((nid, "out"), {}) if nid is not None else {})
            return i, t.numel() / total

        batch = self.example_inputs[0].shape[0] if self.example_inputs[0].dim() else 1
        for r in records:
            mod, typ, x, y = r["module"], type(r["module"]), r["input"], r.get("output")
            if x is None or y is None:
                continue
            if typ in cm._CONV_TYPES:
                s_out = math.prod(y.shape[2:]) * y.shape[0] / batch
                k = math.prod(mod.kernel_size)
                i_out = sig_of_module(mod, "out", mod.out_channels)
                if mod.groups == mod.out_channels and mod.out_channels > 1:  # depthwise: tied dims
                    per = k * (mod.in_channels // mod.groups)
                    cost.add_lin("flops", i_out, s_out * per)
                else:
                    i_in = sig_of_module(mod, "in", mod.in_channels)
                    cost.add_quad("flops", i_in, i_out, s_out * k / mod.groups)
                if mod.bias is not None:
                    cost.add_lin("flops", i_out, s_out)
            elif typ is nn.Linear:
                i_in = sig_of_module(mod, "in", mod.in_features)
                i_out = sig_of_module(mod, "out", mod.out_features)
                rows = x.numel() / mod.in_features / batch
                cost.add_quad("flops", i_in, i_out, rows)
                if mod.bias is not None:  # one add per output element
                    cost.add_lin("flops", i_out, rows)
            elif typ in cm._NORM_TYPES or typ is nn.LayerNorm:
                if typ is nn.GroupNorm:
                    total = mod.num_channels
                elif typ is nn.LayerNorm:
                    total = mod.normalized_shape[-1]
                else:
                    total = mod.num_features
                i = sig_of_module(mod, "out", total)
                affine = mod.elementwise_affine if typ is nn.LayerNorm else mod.affine
                cost.add_lin("flops", i, x.numel() / batch / total * (2 if affine else 1))
            elif typ in cm._ACT_TYPES or typ is nn.Upsample:
                i, per = sig_of_tensor(y)
                if i is None:
                    cost.add_const("flops", y.numel() / batch)
                else:
                    cost.add_lin("flops", i, per / batch)
            elif typ in cm._POOL_TYPES:
                i, per = sig_of_tensor(y)
                per_in = x.numel() / (y.numel() / per) if i is not None else 0
                if i is None:
                    cost.add_const("flops", x.numel() / batch)
                else:
                    cost.add_lin("flops", i, per_in / batch)
        # parameters
        seen = set()
        for name, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                typ = type(mod)
                if isinstance(mod, tuple(cm._CONV_TYPES)) and pname == "weight":
                    k = math.prod(mod.kernel_size)
                    i_out = sig_of_module(mod, "out", mod.out_channels)
                    if mod.groups == mod.out_channels and mod.out_channels > 1:
                        cost.add_lin("params", i_out, k * (mod.in_channels // mod.groups))
                    else:
                        i_in = sig_of_module(mod, "in", mod.in_channels)
                        cost.add_quad("params", i_in, i_out, k / mod.groups)
                elif isinstance(mod, tuple(cm._CONV_TYPES)) and pname == "bias":
                    cost.add_lin("params", sig_of_module(mod, "out", mod.out_channels), 1)
                elif isinstance(mod, nn.Linear) and pname == "weight":
                    cost.add_quad("params", sig_of_module(mod, "in", mod.in_features),
                                  sig_of_module(mod, "out", mod.out_features), 1)
                elif isinstance(mod, nn.Linear) and pname == "bias":
                    cost.add_lin("params", sig_of_module(mod, "out", mod.out_features), 1)
                elif isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                    if isinstance(mod, nn.GroupNorm):
                        total = mod.num_channels
                    elif isinstance(mod, nn.LayerNorm):
                        total = mod.normalized_shape[-1]
                    else:
                        total = mod.num_features
                    cost.add_lin("params", sig_of_module(mod, "out", total), p.numel() / total)
                elif isinstance(mod, nn.PReLU) and p.numel() > 1:
                    cost.add_lin("params", sig_of_module(mod, "out", p.numel()), 1)
                elif p in deps.dg.module2node:  # a bare nn.Parameter pruned along one dim
                    node = deps.dg.module2node[p]
                    dim = node.pruning_dim if node.pruning_dim is not None else -1
                    total = p.shape[dim]
                    i = cost.signature((id(node), "out"), total, members.get((id(node), "out"), {}))
                    cost.add_lin("params", i, p.numel() / total)
                else:
                    cost.add_const("params", p.numel())
        cost.finalize()
        self._cost = cost
        self._group_offsets = np.cumsum([0] + [g.size for g in self.groups[:-1]])
        self._mask_shapes = [torch.Size([g.size]) for g in self.groups]

    # ------------------------------------------------------------------ masks
    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def full_masks(self) -> List[torch.Tensor]:
        """All-True masks (keep everything), one bool tensor [size] per group."""
        return [torch.ones(g.size, dtype=torch.bool) for g in self.groups]

    def min_keep(self, g: int) -> int:
        """Fewest channels group ``g`` may keep: ``min_channels`` rounded up to ``round_to``,
        capped at the group size."""
        size = self.groups[g].size
        need = max(self.min_channels, 1)
        need = int(math.ceil(need / self.round_to) * self.round_to)
        return min(need, size)

    def valid_count(self, g: int, count: int) -> bool:
        """True when keeping ``count`` channels of group ``g`` honours min_channels and round_to."""
        size = self.groups[g].size
        return self.min_keep(g) <= count <= size and (count == size or count % self.round_to == 0)

    def validate_masks(self, masks, allow_float: bool = False, check_counts: bool = True) -> List[torch.Tensor]:
        """Check masks (list of [size] tensors, one per group) and return them as a list.

        bool tensors are required (float tensors in [0, 1] too when ``allow_float``). With
        ``check_counts``, each group's kept count must honour ``min_keep`` and ``round_to``.
        Raises TypeError (type/dtype) or ValueError (length, shape, counts) naming the group."""
        if isinstance(masks, torch.Tensor) or not isinstance(masks, (list, tuple)):
            raise TypeError(f"masks must be a list of {self.num_groups} tensors (one per group), "
                            f"got {type(masks).__name__}")
        if len(masks) != self.num_groups:
            raise ValueError(f"expected {self.num_groups} masks (one per group), got {len(masks)}")
        out = []
        for g, (m, grp) in enumerate(zip(masks, self.groups)):
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"mask {g} ({grp.name}) must be a tensor, got {type(m).__name__}")
            if m.dtype != torch.bool and not (allow_float and m.is_floating_point()):
                raise TypeError(f"mask {g} ({grp.name}) must be a bool tensor"
                                f"{' or float tensor' if allow_float else ''}, got dtype {m.dtype}")
            if m.dim() != 1 or m.shape[0] != grp.size:
                raise ValueError(f"mask {g} ({grp.name}) must have shape ({grp.size},), got "
                                 f"{tuple(m.shape)}")
            if check_counts and m.dtype == torch.bool:
                k = int(m.sum())
                if k == 0:
                    raise ValueError(f"mask {g} ({grp.name}) keeps zero channels; every group must "
                                     f"keep at least {self.min_keep(g)}")
                if not self.valid_count(g, k):
                    raise ValueError(
                        f"mask {g} ({grp.name}) keeps {k} of {grp.size} channels; counts must be "
                        f">= {self.min_keep(g)} (min_channels={self.min_channels}) and a multiple "
                        f"of round_to={self.round_to} (or the whole group); see round_masks()")
            out.append(m)
        return out

    def round_masks(self, masks, scores=None) -> List[torch.Tensor]:
        """Return masks adjusted to honour ``min_channels`` and ``round_to`` by keeping *more*
        channels (never fewer): the pruned channels with the highest ``scores`` (list of [size]
        tensors; default: lowest index first) are restored until the count is valid."""
        masks = self.validate_masks(masks, check_counts=False)
        out = []
        for g, m in enumerate(masks):
            m = m.clone()
            k, size = int(m.sum()), self.groups[g].size
            target = max(k, self.min_keep(g))
            if target % self.round_to:
                target = min(size, int(math.ceil(target / self.round_to) * self.round_to))
            if target > k:
                pruned = torch.nonzero(~m).flatten()
                if scores is not None:
                    s = torch.as_tensor(scores[g], dtype=torch.float64).flatten()[pruned]
                    pruned = pruned[torch.argsort(s, descending=True, stable=True)]
                m[pruned[: target - k]] = True
            out.append(m)
        return out

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
        modules = dict(self.model.named_modules())
        handles = []

        def make_hook(entry):
            def hook(module, args):
                x = args[0]
                mult = torch.ones(entry["width"], dtype=x.dtype, device=x.device)
                for g, local, root in entry["parts"]:
                    m = masks[g].to(device=x.device, dtype=x.dtype)
                    mult = mult.index_copy(0, local.to(x.device), m[root.to(x.device)])
                shape = [1] * x.dim()
                shape[entry["dim"]] = entry["width"]
                return (x * mult.view(shape),) + tuple(args[1:])
            return hook

        try:
            for name, entry in self._consumers.items():
                handles.append(modules[name].register_forward_pre_hook(make_hook(entry)))
            yield self.model
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def feature_hooks(self, fn: Callable[[int, torch.Tensor], None]) -> Iterator[nn.Module]:
        """Context calling ``fn(group_index, activation)`` during every forward of ``space.model``,
        where activation is the output of ``groups[g].feature_module`` ([N, C, ...], C == size;
        see ``ChannelGroup.feature_activation``). "pre-activation" outputs are passed as copies
        (the model may modify them in place afterwards). Hooks are removed on exit."""
        modules = dict(self.model.named_modules())
        by_module: Dict[str, List[int]] = {}
        for g in self.groups:
            by_module.setdefault(g.feature_module, []).append(g.index)
        handles = []

        def make_hook(indices):
            def hook(module, args, output):
                for g in indices:
                    out = output
                    if self.groups[g].feature_activation == "pre-activation":
                        out = output.clone()
                    fn(g, out)
            return hook

        try:
            for name, indices in by_module.items():
                handles.append(modules[name].register_forward_hook(make_hook(indices)))
            yield self.model
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ weights
    def _producer_weights(self, g: int) -> List[torch.Tensor]:
        """Producers' weights as [C, D_l] matrices, rows in group channel order."""
        raw = self._raw[g]
        modules = dict(self.model.named_modules())
        mats = []
        for d in raw.dims:
            if not (d.name and "out" in d.roles and d.kind in ("conv", "linear", "depthwise")):
                continue
            w = modules[d.name].weight.detach().cpu()
            if isinstance(modules[d.name], (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                w = w.transpose(0, 1)
            w = w.reshape(w.shape[0], -1)
            rows = torch.zeros(raw.size, w.shape[1], dtype=w.dtype)
            rows[torch.from_numpy(d.root)] = w[torch.from_numpy(d.local)].to(rows.device)
            mats.append(rows)
        return mats

    def weight_stats(self) -> List[Dict[str, Optional[torch.Tensor]]]:
        """Per group: 'l1' and 'l2' ([C] float32: the producing layers' filter L1 / L2 norms,
        summed over producers) and 'bn_gamma' ([C] |gamma| averaged over the group's BNs, or None)."""
        modules = dict(self.model.named_modules())
        stats = []
        for g, raw in enumerate(self._raw):
            mats = self._producer_weights(g)
            l1 = sum(m.abs().sum(1) for m in mats).float()
            l2 = sum(m.norm(dim=1) for m in mats).float()
            gam, n = torch.zeros(raw.size), 0
            for d in raw.dims:
                if d.kind == "bn" and d.name and getattr(modules[d.name], "weight", None) is not None:
                    gam[torch.from_numpy(d.root)] += modules[d.name].weight.detach().abs().float(
                    ).cpu()[torch.from_numpy(d.local)]
                    n += 1
            stats.append({"l1": l1, "l2": l2, "bn_gamma": gam / n if n else None})
        return stats

    def filter_matrix(self, g: int) -> torch.Tensor:
        """[C, D] the producing layers' filters (flattened) of group ``g``, concatenated."""
        if not isinstance(g, int) or not 0 <= g < self.num_groups:
            raise ValueError(f"group index must be in [0, {self.num_groups}), got {g!r}")
        return torch.cat(self._producer_weights(g), dim=1).float()

    # ------------------------------------------------------------------ surgery and plans
    def _check_model_unchanged(self):
        if structure_fingerprint(self.model) != self.fingerprint:
            raise RuntimeError("the model's structure changed since this PruningSpace was built; "
                               "build a new space")

    def prune(self, masks) -> nn.Module:
        """A new compact model with the masked-out channels removed (the user's model is left
        untouched). Masks must be bool and honour min_channels / round_to (see round_masks).
        The result keeps the module types and the train/eval flags of ``space.model``.

        Raises RuntimeError naming the group when the surgery cannot be applied or the pruned
        model fails on the example inputs (an unsupported op)."""
        masks = self.validate_masks(masks)
        self._check_model_unchanged()
        return self._prune_copy(self.model, {g.root: m for g, m in zip(self.groups, masks)})

    def _prune_copy(self, model: nn.Module, keep_by_root: Dict[str, torch.Tensor]) -> nn.Module:
        flags = {n: m.training for n, m in model.named_modules()}
        pruned = copy.deepcopy(model)
        pruned.eval()
        todo = {r: m for r, m in keep_by_root.items() if not bool(m.all())}
        if todo:
            try:
                deps = TracedDependencies(pruned, self.example_inputs, lambda m, x: m(*x))
            except Exception as e:
                raise RuntimeError(f"tracing the copy for surgery failed: {type(e).__name__}: {e}") from e
            removals = {root: torch.nonzero(~keep.cpu()).flatten().tolist()
                        for root, keep in todo.items()}
            try:
                prune_groups_inplace(deps, removals)
            except Exception as e:
                raise RuntimeError(f"surgery failed on the groups rooted at {sorted(removals)}: "
                                   f"{type(e).__name__}: {e}") from e
        try:
            with torch.no_grad():
                out = pruned(*self.example_inputs)
        except Exception as e:
            hint = f"; ops unknown to the tracer: {self.unknown_ops}" if self.unknown_ops else ""
            raise RuntimeError(f"the pruned {type(model).__name__} fails on inputs of shape "
                               f"{_shapes(self.example_inputs)}: {type(e).__name__}: {e}{hint}") from e
        if tuple(out.shape) != self.output_shape:
            raise RuntimeError(f"the pruned model's output shape {tuple(out.shape)} differs from "
                               f"the original {self.output_shape}")
        for n, m in pruned.named_modules():
            m.training = flags.get(n, m.training)
        for p in pruned.parameters():
            p.grad = None
        return pruned

    def plan(self, masks) -> dict:
        """JSON-serializable record of a pruning: model class, structure fingerprint, example
        input shapes, round_to/min_channels, and per group its name, root layer, size and the
        kept channel indices."""
        masks = self.validate_masks(masks)
        return {
            "format": PLAN_FORMAT,
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "fingerprint": self.fingerprint,
            "input_shapes": [list(t.shape) for t in self.example_inputs],
            "input_dtypes": [str(t.dtype).replace("torch.", "") for t in self.example_inputs],
            "ignored_layers": list(self.ignored_layers),
            "round_to": self.round_to,
            "min_channels": self.min_channels,
            "base_flops": self.base_flops,
            "base_params": self.base_params,
            "groups": [{"name": g.name, "root": g.root, "size": g.size,
                        "kept": torch.nonzero(m).flatten().tolist()}
                       for g, m in zip(self.groups, masks)],
        }


def load_pruned(model: nn.Module, plan: dict, state_dict: Optional[dict] = None) -> nn.Module:
    """Rebuild a pruned model from a freshly built original ``model`` (same class and structure
    as when the plan was made), the ``plan`` (``space.plan(masks)``) and optionally the pruned
    model's ``state_dict`` (e.g. from ``torch.load(path, weights_only=True)``), loaded strictly.

    Raises ValueError when the plan is malformed or does not match the model."""
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ValueError(f"not a pruning plan (expected format {PLAN_FORMAT!r})")
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    if plan["model_class"] != cls:
        raise ValueError(f"plan is for {plan['model_class']}, got a {cls}")
    fp = structure_fingerprint(model)
    if plan["fingerprint"] != fp:
        raise ValueError(f"plan fingerprint {plan['fingerprint']} does not match the model's "
                         f"structure ({fp}): different layer widths, depth or number of classes?")
    inputs = tuple(torch.zeros(s, dtype=getattr(torch, dt))
                   for s, dt in zip(plan["input_shapes"], plan["input_dtypes"]))
    space = PruningSpace(model, inputs, ignored_layers=plan.get("ignored_layers") or None,
                         round_to=plan.get("round_to", 1), min_channels=plan.get("min_channels", 1))
    by_root = {g.root: g for g in space.groups}
    keep_by_root = {}
    for entry in plan["groups"]:
        g = by_root.get(entry["root"])
        if g is None or g.size != entry["size"]:
            raise ValueError(f"plan group {entry['name']!r} (root {entry['root']!r}, size "
                             f"{entry['size']}) does not exist in this model")
        keep = torch.zeros(g.size, dtype=torch.bool)
        kept = torch.as_tensor(entry["kept"], dtype=torch.long)
        if kept.numel() == 0 or int(kept.min()) < 0 or int(kept.max()) >= g.size:
            raise ValueError(f"plan group {entry['name']!r} has invalid kept indices")
        keep[kept] = True
        keep_by_root[g.root] = keep
    pruned = space._prune_copy(model, keep_by_root)
    if state_dict is not None:
        try:
            pruned.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise ValueError(f"state_dict does not fit the pruned model: {e}") from e
    return pruned
