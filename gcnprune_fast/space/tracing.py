"""Tracing a model for the pruning space, ignored-layer resolution and the choice of each group's
feature module.

``trace_model`` runs a deep copy of the user's model once with hooks on every module (the call
records) and builds the torch-pruning dependency graph through ``space._dependency`` (the only
module that imports torch_pruning). The user's model is never modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch
import torch.nn as nn

from gcnprune_fast.space._dependency import RawGroup, TracedDependencies

# consumers whose input channels are mixed into every output (the ChannelGroup.consumers kinds)
MIXING_KINDS = ("conv", "linear")
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU,
                nn.PReLU, nn.Sigmoid, nn.Tanh, nn.Mish, nn.Hardtanh)


def resolve_ignored_layers(model: nn.Module, ignored_layers) -> Tuple[str, ...]:
    """The module names of ``ignored_layers`` in ``model``.

    Args:
        model: the network.
        ignored_layers: None, a module name, a module object, or an iterable of names and/or
            module objects (objects are matched by identity among ``model``'s submodules).

    Returns:
        a tuple of module names in the given order, duplicates removed (``()`` for None).

    Raises:
        TypeError: an entry is neither a str nor an nn.Module (or ``ignored_layers`` is not
            iterable); the message names the entry's position and type.
        ValueError: an entry is not a submodule of ``model`` (or is the model itself); the message
            names the entry.
    """
    if ignored_layers is None:
        return ()
    if isinstance(ignored_layers, (nn.Module, str)):
        ignored_layers = [ignored_layers]
    try:
        items = list(ignored_layers)
    except TypeError:
        raise TypeError("ignored_layers must be a module name, an nn.Module or a list of them, got "
                        f"{type(ignored_layers).__name__}") from None
    by_module = {m: n for n, m in model.named_modules()}
    names = dict(model.named_modules())
    model_name = type(model).__name__
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if item == "":
                raise ValueError(f"ignored_layers[{i}]: '' is the model itself, not a submodule of "
                                 f"{model_name}; name its layers instead")
            if item not in names:
                raise ValueError(f"ignored_layers[{i}]: {item!r} is not a submodule of {model_name}")
            out.append(item)
        elif isinstance(item, nn.Module):
            if item not in by_module:
                raise ValueError(f"ignored_layers[{i}]: {type(item).__name__} object is not a "
                                 f"submodule of {model_name}")
            if by_module[item] == "":
                raise ValueError(f"ignored_layers[{i}]: the {model_name} object is the model itself, "
                                 "not a submodule; pass its layers instead")
            out.append(by_module[item])
        else:
            raise TypeError(f"ignored_layers[{i}]: entries must be nn.Module objects or module "
                            f"names, got {type(item).__name__}")
    return tuple(dict.fromkeys(out))


def as_input_tuple(example_inputs) -> Tuple[torch.Tensor, ...]:
    """``example_inputs`` (a tensor or a non-empty tuple/list of tensors) as a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor or a non-empty tuple/list of tensors, got "
                    f"{type(example_inputs).__name__}")


def describe_shapes(inputs) -> str:
    """"(1, 3, 32, 32), (1, 5)": the shapes of a tuple of tensors, for error messages."""
    return ", ".join(str(tuple(t.shape)) for t in inputs)


@dataclass
class Trace:
    """One traced run of a private copy of the model.

    Attributes:
        model: the traced deep copy (eval mode).
        inputs: the example inputs it ran on.
        records: one dict per module call in call order: name, module, start/finish counters,
            input tensor and its ``_version``, output tensor and its ``_version``.
        deps: the dependency graph (``space._dependency.TracedDependencies``).
        output_grad_fns: grad_fns of the network's outputs (groups reaching them are protected).
        output_shape: shape of the model's output on ``inputs``.
        outputs: the outputs of the traced forward passes (kept until ``release``).
    """

    model: Optional[nn.Module]
    inputs: Tuple[torch.Tensor, ...]
    records: Optional[List[dict]]
    deps: Optional[TracedDependencies]
    output_grad_fns: Optional[Set]
    output_shape: Tuple[int, ...]
    outputs: Optional[list] = None

    def release(self) -> None:
        """Drop the traced copy and graph (grad_fns hold activations)."""
        self.records = None
        self.deps = self.model = self.output_grad_fns = None
        if self.outputs is not None:
            self.outputs.clear()
        self.outputs = None


def trace_model(model: nn.Module, inputs: Tuple[torch.Tensor, ...],
                ignored_layers: Tuple[str, ...] = ()) -> Trace:
    """Run a deep copy of ``model`` on ``inputs`` recording every module call, and trace its
    channel dependencies (``ignored_layers``: names from ``resolve_ignored_layers``).

    Raises TypeError (the model cannot be deep-copied or returns no tensor), ValueError (the model
    fails on the inputs; the message gives their shapes) or RuntimeError (tracing failed)."""
    try:
        traced = copy.deepcopy(model)
    except Exception as e:  # pragma: no cover - exotic modules
        raise TypeError(f"model cannot be deep-copied ({type(e).__name__}: {e}); the pruning "
                        "space works on copies so that the model is never changed") from e
    traced.eval()
    try:
        with torch.no_grad():
            out = traced(*inputs)
    except Exception as e:
        raise ValueError(f"the model failed on example_inputs of shape {describe_shapes(inputs)}: "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
    output_shape = tuple(out.shape)

    calls: List[dict] = []
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

    ignored_modules = [traced.get_submodule(n) for n in ignored_layers]
    try:
        deps = TracedDependencies(traced, inputs, forward_fn, ignored_modules)
    except Exception as e:
        detail = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
        raise RuntimeError(f"tracing the channel dependencies of {type(model).__name__} failed: "
                           f"{detail}") from e
    return Trace(model=traced, inputs=inputs, records=calls, deps=deps,
                 output_grad_fns={o.grad_fn for o in traced_out if isinstance(o, torch.Tensor)},
                 output_shape=output_shape, outputs=traced_out)


def _is_pass_through(module: nn.Module) -> bool:
    """Modules that return their input unchanged in eval mode (not useful as feature modules)."""
    return isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                               nn.AlphaDropout)) or (
        isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) == 0)


@dataclass(frozen=True)
class FeatureChoice:
    """Where a group's representative activation is: the output of module ``module`` (a name),
    whose channel dimension ``dim`` (non-negative: 1 for [N, C, ...], the last one for token or
    channels-last tensors [N, ..., C]) carries the group's channels at positions ``index`` (group
    channel i at ``index[i]``; None: all positions, in order: the output has exactly the group's
    channels). ``activation``: see ``ChannelGroup.feature_activation``."""

    module: str
    activation: str
    dim: int = 1
    index: Optional[Tuple[int, ...]] = None


def _channel_positions(d, size: int) -> Optional[Tuple[int, ...]]:
    """Positions of group channels 0..size-1 along ``d``'s dimension (None when ``d`` does not
    carry every group channel; a tied channel carried several times: its first position)."""
    first: Dict[int, int] = {}
    for local, root in zip(d.local.tolist(), d.root.tolist()):
        first.setdefault(root, local)
    if len(first) != size or set(first) != set(range(size)):
        return None
    return tuple(first[c] for c in range(size))


def _choice(rec: dict, activation: str, dim: int, positions: Tuple[int, ...],
            width: int) -> Optional[FeatureChoice]:
    """The FeatureChoice for record ``rec``'s output when its dimension ``dim`` (negative counts
    from the end) has ``width`` channels of which the group's are at ``positions``."""
    y = rec.get("output")
    if y is None or y.dim() < 2:
        return None
    dim = dim % y.dim()
    if dim == 0 or y.shape[dim] != width:
        return None
    index = None if positions == tuple(range(width)) else positions
    return FeatureChoice(rec["name"], activation, dim, index)


def choose_feature_module(raw: RawGroup, records: List[dict],
                          calls_per_module: Dict[str, int]) -> FeatureChoice:
    """The module whose output is the group's representative activation (see
    ``ChannelGroup.feature_module``) and where the group's channels are in it. ``calls_per_module``:
    module name -> number of calls in ``records``.

    In order of preference: 1) the tensor a consumer conv/linear reads when it reads exactly the
    group's channels; 2) the producer's BN, followed by an activation module if any, when its
    output has exactly the group's channels; when the group's BNs normalize a concatenation
    (DenseNet: the next layers' norm1) 3) as 1) for the first consumer reading the group's
    channels among others, or 4) as 2) with the group's slice of the wider BN; without a BN,
    5) the root layer's output."""
    full = tuple(range(raw.size))
    once = [r for r in records if calls_per_module[r["name"]] == 1 and "finish" in r]

    def consumed(exact: bool) -> Optional[FeatureChoice]:
        found = []
        for d in raw.dims:
            if not (d.name and "in" in d.roles and "out" not in d.roles and d.kind in MIXING_KINDS):
                continue
            mod = d.module
            width = mod.in_channels if d.kind == "conv" else mod.in_features
            positions = _channel_positions(d, raw.size)
            if positions is None or (positions == full and width == raw.size) != exact:
                continue
            recs = [r for r in records if r["module"] is mod]
            if len(recs) != 1 or recs[0]["input"] is None:
                continue
            x, version = recs[0]["input"], recs[0]["input_version"]
            makers = [r for r in once if r["output"] is x and r["name"]
                      and r["output_version"] == version and not _is_pass_through(r["module"])]
            leaves = [r for r in makers if not any(True for _ in r["module"].children())]
            if leaves:
                rec = max(leaves, key=lambda r: r["finish"])
            elif makers:
                rec = min(makers, key=lambda r: r["finish"])
            else:
                continue
            choice = _choice(rec, "consumed", 1 if d.kind == "conv" else -1, positions, width)
            if choice is not None:
                if exact:
                    return choice
                found.append((recs[0]["start"], choice))
        return min(found, key=lambda t: t[0])[1] if found else None

    def after_bn() -> Optional[FeatureChoice]:
        root_rec = [r for r in records if r["name"] == raw.root_name]
        start = None
        bns = [d for d in raw.dims if d.kind == "bn" and d.name
               and _channel_positions(d, raw.size) is not None]
        for d in bns:
            recs = [r for r in once if r["module"] is d.module]
            if recs and root_rec and recs[0]["input"] is root_rec[0]["output"]:
                start, bn = recs[0], d
                break
        if start is None and bns:
            recs = [r for r in once if r["module"] is bns[0].module]
            start, bn = (recs[0], bns[0]) if recs else (None, None)
        if start is None:
            return None
        positions = _channel_positions(bn, raw.size)
        if positions is None:
            return None
        width = bn.module.num_features
        y = start["output"]
        acts = [r for r in once if isinstance(r["module"], _ACTIVATIONS)
                and r["start"] > start["finish"]
                and r["input"] is y and r["input_version"] == start["output_version"]]
        if acts:
            rec, activation = min(acts, key=lambda r: r["start"]), "post-activation"
        else:
            rec, activation = start, "pre-activation"
        return _choice(rec, activation, 1, positions, width)

    choice = consumed(exact=True)
    if choice is not None:
        return choice
    bn_choice = after_bn()
    if bn_choice is not None:
        if bn_choice.index is None:
            return bn_choice
        return consumed(exact=False) or bn_choice
    root_recs = [r for r in records if r["name"] == raw.root_name]
    root_mod = root_recs[0]["module"] if root_recs else None
    if raw.root_classes is not None:  # tied channels: one representative root channel each
        reps = tuple(members[0] for members in raw.root_classes)
        width = sum(len(members) for members in raw.root_classes)
        if root_recs:
            choice = _choice(root_recs[0], "pre-activation",
                             -1 if isinstance(root_mod, nn.Linear) else 1, reps, width)
            if choice is not None:
                return choice
        return FeatureChoice(raw.root_name, "pre-activation", 1, reps)
    if root_recs and isinstance(root_mod, nn.Linear):
        choice = _choice(root_recs[0], "pre-activation", -1, full, raw.size)
        if choice is not None:
            return choice
    return FeatureChoice(raw.root_name, "pre-activation")
