"""Pruning plans: a JSON-serializable record of which channels a pruning keeps, and rebuilding the
pruned model from a fresh original model and a plan."""
from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, List, Optional

import torch
import torch.nn as nn

from gcnprune_fast.space.surgery import prune_model

if TYPE_CHECKING:  # pragma: no cover
    from gcnprune_fast.space.pruning_space import PruningSpace

PLAN_FORMAT = "gcnprune_fast.plan/1"

__all__ = ["PLAN_FORMAT", "MAX_INPUT_ELEMENTS", "structure_fingerprint", "make_plan",
           "validate_plan", "load_pruned"]


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


MAX_INPUT_ELEMENTS = 1 << 23
"""Default limit on the elements of one plan input (8,388,608, e.g. 2 x 3 x 1182 x 1182):
``load_pruned`` traces the model on zeros of ``input_shapes``, and activations are many times the
input, so an absurd shape in a plan would exhaust the memory instead of failing."""

_PLAN_KEYS = {  # key: (expected python types, description)
    "format": (str, "a string"), "model_class": (str, "a string"), "fingerprint": (str, "a string"),
    "input_shapes": (list, "a list of shapes"), "input_dtypes": (list, "a list of dtype names"),
    "round_to": (int, "a positive int"), "min_channels": (int, "a positive int"),
    "groups": (list, "a list of groups"),
}
_OPTIONAL_KEYS = {"ignored_layers": (list, "a list of layer names"),
                  "base_flops": (int, "an int >= 0"), "base_params": (int, "an int >= 0")}
_GROUP_KEYS = {"name": (str, "a string"), "root": (str, "a string"), "size": (int, "a positive int"),
               "kept": (list, "a list of channel indices")}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_type(where: str, value, kind: type, what: str) -> None:
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise ValueError(f"plan: {where} must be {what}, got {value!r:.80} ({type(value).__name__})")


def validate_plan(plan, max_input_elements: int = MAX_INPUT_ELEMENTS) -> None:
    """Check a plan against its schema; ValueError naming the offending key otherwise.

    Checks: the format tag; every required key present with the right type; ``input_shapes`` a
    non-empty list of shapes of positive ints with at most ``max_input_elements`` elements each,
    ``input_dtypes`` one torch dtype name per shape; ``round_to`` / ``min_channels`` >= 1;
    ``groups`` entries with unique ``name`` and ``root``, ``size`` >= 1 and ``kept`` a non-empty,
    sorted list of unique int indices in ``[0, size)``.
    """
    if not isinstance(plan, dict):
        raise ValueError(f"not a pruning plan: expected a dict (the JSON object written by "
                         f"PruneResult.save / space.plan), got {type(plan).__name__}")
    if plan.get("format") != PLAN_FORMAT:
        raise ValueError(f"not a pruning plan: key 'format' is {plan.get('format')!r}, expected "
                         f"{PLAN_FORMAT!r}")
    for key, (kind, what) in _PLAN_KEYS.items():
        if key not in plan:
            raise ValueError(f"plan: the required key {key!r} is missing")
        _check_type(f"key {key!r}", plan[key], kind, what)
    for key, (kind, what) in _OPTIONAL_KEYS.items():
        if plan.get(key) is not None:
            _check_type(f"key {key!r}", plan[key], kind, what)
    for key in ("round_to", "min_channels"):
        if plan[key] < 1:
            raise ValueError(f"plan: key {key!r} must be >= 1, got {plan[key]}")
    for key in ("base_flops", "base_params"):
        if plan.get(key) is not None and plan[key] < 0:
            raise ValueError(f"plan: key {key!r} must be >= 0, got {plan[key]}")
    for i, name in enumerate(plan.get("ignored_layers") or []):
        _check_type(f"ignored_layers[{i}]", name, str, "a layer name (string)")
    shapes, dtypes = plan["input_shapes"], plan["input_dtypes"]
    if not shapes:
        raise ValueError("plan: key 'input_shapes' is empty; it needs the shape of every model input")
    if len(dtypes) != len(shapes):
        raise ValueError(f"plan: 'input_dtypes' has {len(dtypes)} entries, 'input_shapes' "
                         f"{len(shapes)}; they must match")
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        where = f"input_shapes[{i}]"
        if not isinstance(shape, list) or not shape or not all(_is_int(d) and d >= 1 for d in shape):
            raise ValueError(f"plan: {where} must be a non-empty list of positive ints, got {shape!r:.80}")
        numel = math.prod(shape)
        if numel > max_input_elements:
            raise ValueError(f"plan: {where} {shape} has {numel:,} elements, more than the limit "
                             f"{max_input_elements:,} (load_pruned traces the model on zeros of "
                             f"this shape); fix the plan, or pass max_input_elements= to "
                             f"load_pruned if the shape is intended")
        if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"plan: input_dtypes[{i}] must be a torch dtype name such as "
                             f"'float32', got {dtype!r:.80}")
    names, roots = set(), set()
    for i, entry in enumerate(plan["groups"]):
        where = f"groups[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"plan: {where} must be an object with keys {sorted(_GROUP_KEYS)}, "
                             f"got {type(entry).__name__}")
        for key, (kind, what) in _GROUP_KEYS.items():
            if key not in entry:
                raise ValueError(f"plan: {where} lacks the key {key!r}")
            _check_type(f"{where}[{key!r}]", entry[key], kind, what)
        label = f"{where} ({entry['name']!r})"
        if entry["size"] < 1:
            raise ValueError(f"plan: {label} 'size' must be >= 1, got {entry['size']}")
        if entry["name"] in names or entry["root"] in roots:
            dup = "name" if entry["name"] in names else "root"
            raise ValueError(f"plan: {label} repeats the {dup} {entry[dup]!r} of an earlier group; "
                             f"each group must appear once")
        names.add(entry["name"])
        roots.add(entry["root"])
        kept = entry["kept"]
        if not kept:
            raise ValueError(f"plan: {label} keeps no channel ('kept' is empty)")
        bad = next((k for k in kept if not _is_int(k)), None)
        if bad is not None:
            raise ValueError(f"plan: {label} 'kept' must hold int channel indices, got {bad!r} "
                             f"({type(bad).__name__})")
        if any(b <= a for a, b in zip(kept, kept[1:])):
            raise ValueError(f"plan: {label} 'kept' must be sorted with no repeats, got "
                             f"{kept!r:.80}")
        if kept[0] < 0 or kept[-1] >= entry["size"]:
            raise ValueError(f"plan: {label} 'kept' holds index {kept[0] if kept[0] < 0 else kept[-1]}, "
                             f"outside [0, {entry['size'] - 1}] (size {entry['size']})")


def load_pruned(model: nn.Module, plan: dict, state_dict: Optional[dict] = None, *,
                max_input_elements: int = MAX_INPUT_ELEMENTS) -> nn.Module:
    """Rebuild a pruned model from a freshly built original ``model`` (same class and structure
    as when the plan was made), the ``plan`` (``space.plan(masks)``) and optionally the pruned
    model's ``state_dict`` (e.g. from ``torch.load(path, weights_only=True)``), loaded strictly.

    The plan is checked against its schema first (:func:`validate_plan`; ``max_input_elements``
    limits the tracing inputs).

    Raises ValueError when the plan is malformed (the key is named) or does not match the model."""
    from gcnprune_fast.space.pruning_space import PruningSpace  # the facade imports this module

    validate_plan(plan, max_input_elements)
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
                         round_to=plan["round_to"], min_channels=plan["min_channels"])
    by_root = {g.root: g for g in space.groups}
    keep_by_root = {}
    for entry in plan["groups"]:
        g = by_root.get(entry["root"])
        if g is None or g.size != entry["size"]:
            raise ValueError(f"plan group {entry['name']!r} (root {entry['root']!r}, size "
                             f"{entry['size']}) does not exist in this model")
        keep = torch.zeros(g.size, dtype=torch.bool)
        keep[torch.as_tensor(entry["kept"], dtype=torch.long)] = True
        keep_by_root[g.root] = keep
    pruned = prune_model(model, space.example_inputs, keep_by_root, output_shape=space.output_shape,
                         unknown_ops=space.unknown_ops)
    if state_dict is not None:
        try:
            pruned.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise ValueError(f"state_dict does not fit the pruned model: {e}") from e
    return pruned
