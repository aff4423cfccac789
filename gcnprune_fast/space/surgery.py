"""Surgery: a compact copy of a model with channels removed (the model itself is left untouched)."""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gcnprune_fast.space._dependency import (TracedDependencies, _failing_location,
                                              prune_groups_inplace)
from gcnprune_fast.space.tracing import as_input_tuple, describe_shapes


def prune_model(model: nn.Module, example_inputs, keep: Dict[str, torch.Tensor], *,
                output_shape: Optional[Tuple[int, ...]] = None,
                unknown_ops: Sequence[str] = ()) -> nn.Module:
    """A deep copy of ``model`` with channels removed.

    Args:
        model: the network (not modified).
        example_inputs: a tensor or tuple of tensors the model runs on (used to trace the copy and
            to check the result).
        keep: ``{root layer name: bool mask [C]}``: for each group, identified by its root layer
            (``ChannelGroup.root``: channel i of the group is output channel i of that layer), the
            channels to keep; everything coupled to them is pruned consistently. Groups whose mask
            keeps everything are left alone. Use ``PruningSpace.prune`` for checked masks.
        output_shape: when given, the pruned model's output must have this shape.
        unknown_ops: names of ops the tracer did not know (``space.unknown_ops``), added to the
            error message when the pruned model fails.

    Returns:
        the compact model, with the module types, the train/eval flags and the parameters'
        ``requires_grad`` flags of ``model`` and no gradients.

    Raises:
        TypeError: bad ``keep`` entries.
        RuntimeError: the surgery cannot be applied (naming the groups' roots) or the pruned model
            fails on the example inputs or changes the output shape.
    """
    inputs = as_input_tuple(example_inputs)
    if not isinstance(keep, dict):
        raise TypeError(f"keep must be a dict {{root layer name: bool mask}}, got {type(keep).__name__}")
    for root, mask in keep.items():
        if not isinstance(root, str) or not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"keep must map layer names to bool tensors; entry {root!r} holds "
                            f"{type(mask).__name__}"
                            f"{' of dtype ' + str(mask.dtype) if isinstance(mask, torch.Tensor) else ''}")
    flags = {n: m.training for n, m in model.named_modules()}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    pruned = copy.deepcopy(model)
    pruned.eval()
    todo = {r: m for r, m in keep.items() if not bool(m.all())}
    if todo:
        try:
            deps = TracedDependencies(pruned, inputs, lambda m, x: m(*x))
        except Exception as e:
            raise RuntimeError(f"tracing the copy for surgery failed: {type(e).__name__}: {e}") from e
        removals = {root: torch.nonzero(~mask.cpu()).flatten().tolist()
                    for root, mask in todo.items()}
        try:
            prune_groups_inplace(deps, removals)
        except Exception as e:
            where = _failing_location(e, {m: n for n, m in pruned.named_modules()})
            raise RuntimeError(f"surgery failed on the groups rooted at {sorted(removals)}"
                               f"{' at ' + where if where else ''}: {type(e).__name__}: {e}") from e
    try:
        with torch.no_grad():
            out, failing = _run_naming_layer(pruned, inputs)
    except Exception as e:  # pragma: no cover - _run_naming_layer returns the error
        out, failing = None, (None, e)
    if failing is not None:
        layer, e = failing
        hint = f"; ops unknown to the tracer: {list(unknown_ops)}" if unknown_ops else ""
        at = f" in layer {layer!r} ({type(pruned.get_submodule(layer)).__name__})" if layer else ""
        raise RuntimeError(f"the pruned {type(model).__name__} fails on inputs of shape "
                           f"{describe_shapes(inputs)}{at}: {type(e).__name__}: {e}{hint}") from e
    if output_shape is not None and tuple(out.shape) != tuple(output_shape):
        raise RuntimeError(f"the pruned model's output shape {tuple(out.shape)} differs from "
                           f"the original {tuple(output_shape)}")
    for n, m in pruned.named_modules():
        m.training = flags.get(n, m.training)
    for n, p in pruned.named_parameters():
        p.grad = None
        if n in trainable:  # pruned layers got new parameters: keep the frozen ones frozen
            p.requires_grad_(trainable[n])
    return pruned


def _run_naming_layer(model: nn.Module, inputs):
    """``(model(*inputs), None)``, or ``(None, (name of the innermost layer running when it
    failed or None, the exception))``."""
    names = {m: n for n, m in model.named_modules()}
    stack: list = []
    failed: list = []

    def pre(module, args):
        stack.append(names.get(module))

    def post(module, args, output):
        if stack:
            stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        return model(*inputs), None
    except Exception as e:
        failed.append(next((n for n in reversed(stack) if n), None))
        return None, (failed[0], e)
    finally:
        for h in handles:
            h.remove()
