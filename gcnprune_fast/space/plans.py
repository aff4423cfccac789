"""Pruning plans: a JSON-serializable record of which channels a pruning keeps, and rebuilding the
pruned model from a fresh original model and a plan."""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, List, Optional

import torch
import torch.nn as nn

from gcnprune_fast.space.surgery import prune_model

if TYPE_CHECKING:  # pragma: no cover
    from gcnprune_fast.space.pruning_space import PruningSpace

PLAN_FORMAT = "gcnprune_fast.plan/1"


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


def make_plan(space: "PruningSpace", masks: List[torch.Tensor]) -> dict:
    """The plan of pruning ``space.model`` by ``masks`` (already validated: ``space.plan``)."""
    return {
        "format": PLAN_FORMAT,
        "model_class": f"{type(space.model).__module__}.{type(space.model).__qualname__}",
        "fingerprint": space.fingerprint,
        "input_shapes": [list(t.shape) for t in space.example_inputs],
        "input_dtypes": [str(t.dtype).replace("torch.", "") for t in space.example_inputs],
        "ignored_layers": list(space.ignored_layers),
        "round_to": space.round_to,
        "min_channels": space.min_channels,
        "base_flops": space.base_flops,
        "base_params": space.base_params,
        "groups": [{"name": g.name, "root": g.root, "size": g.size,
                    "kept": torch.nonzero(m).flatten().tolist()}
                   for g, m in zip(space.groups, masks)],
    }


def load_pruned(model: nn.Module, plan: dict, state_dict: Optional[dict] = None) -> nn.Module:
    """Rebuild a pruned model from a freshly built original ``model`` (same class and structure
    as when the plan was made), the ``plan`` (``space.plan(masks)``) and optionally the pruned
    model's ``state_dict`` (e.g. from ``torch.load(path, weights_only=True)``), loaded strictly.

    Raises ValueError when the plan is malformed or does not match the model."""
    from gcnprune_fast.space.pruning_space import PruningSpace  # the facade imports this module

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
    pruned = prune_model(model, space.example_inputs, keep_by_root, output_shape=space.output_shape,
                         unknown_ops=space.unknown_ops)
    if state_dict is not None:
        try:
            pruned.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise ValueError(f"state_dict does not fit the pruned model: {e}") from e
    return pruned
