"""Budget allocation: turn per-channel scores into keep-masks that meet a FLOPs/params/latency budget.

Three pieces, all driven by ``space.cost_from_counts`` (vectorized over many candidate width
vectors, so each projection is a handful of tensor ops, not a Python loop over channels):

- :class:`Budget`: the absolute FLOPs / params / latency limits derived from the user's ratios;
  every feasibility test goes through ``Budget.feasible_counts(space, counts)`` (the cost model,
  and the latency model when the budget has a latency limit).
- :func:`project_to_budget`: AMC's "action wall". Starting from any mask, first repair it (at least
  ``space.min_keep(g)`` channels per group, widths multiples of ``round_to``), then drop the
  lowest-scored kept channels, globally, until the budget is met. With ``fill=True`` it then adds
  back the highest-scored dropped channels while the budget still holds, so the budget is used
  (under a latency limit also past chunks that do not fit: the channels a latency table's plateaus
  leave free).
- :func:`allocate`: the baselines' allocation strategies: ``"global"`` (scores standardized per
  group, one global ranking) and ``"uniform"`` (the same keep ratio in every group).
- allocation from per-group keep ratios, for searches that decide a width per group:
  :func:`counts_from_ratios` (ratios -> legal widths), :func:`fit_ratios_to_budget` (scale the
  ratios down until the budget holds), :func:`action_wall` (AMC's wall: the widest legal width of
  one group given the others) and :func:`masks_from_counts` (widths -> masks by a score).

Masks are lists of bool tensors [C_g], one per group in ``space.groups`` order, True = keep.
Scores are lists of float tensors [C_g]; higher = more important.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["Budget", "ALLOCATIONS", "check_budget_ratio", "check_budget_ratios", "standardize",
           "project_to_budget", "allocate", "min_cost_ratios", "min_latency_ratio",
           "check_budget_reachable", "uniform_counts", "counts_from_ratios", "fit_ratios_to_budget",
           "scale_ratios_to_budget", "grow_counts_to_budget", "action_wall", "masks_from_counts"]

ALLOCATIONS = ("global", "uniform")


def check_budget_ratio(name: str, value) -> None:
    """None, or a ratio in (0, 1] of the original model's ``name`` (flops / params) to keep."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a float ratio in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}={value!r} is outside (0, 1]: it is the fraction of the original "
                         f"model's {name} to keep (e.g. {name}=0.5 keeps at most half)")


def check_budget_ratios(flops=None, params=None, latency=None) -> None:
    """At least one budget given, each None or a ratio in (0, 1]."""
    if flops is None and params is None and latency is None:
        raise ValueError("give a budget: flops=<ratio in (0, 1]> and/or params=<ratio in (0, 1]> "
                         "and/or latency=<ratio in (0, 1]>")
    for name, value in (("flops", flops), ("params", params), ("latency", latency)):
        check_budget_ratio(name, value)


# The fill rule of latency budgets (project_to_budget's fill_past_misfits): in the fingerprints of
# latency-budgeted search checkpoints, so a search run under an earlier rule (the fill stopping at
# the first misfit; those checkpoints lack the key) is not resumed as if it were this one. Change
# the name when the rule changes.
LATENCY_FILL = "past-misfits"


@dataclass(frozen=True)
class Budget:
    """Absolute cost limits. ``flops`` / ``params`` are ratios in (0, 1] of the unpruned model's
    MACs / parameters (None = unconstrained); ``max_flops`` / ``max_params`` the absolute limits.
    ``latency`` is a ratio in (0, 1] of the unpruned model's measured latency, ``max_latency`` the
    limit in seconds and ``latency_model`` the model predicting it from kept counts
    (``gcnprune_fast.latency.LatencyModel``: ``latency_from_counts(counts [..., G])``)."""

    flops: Optional[float]
    params: Optional[float]
    max_flops: float
    max_params: float
    latency: Optional[float] = None
    max_latency: float = math.inf
    latency_model: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_ratios(cls, space, flops: Optional[float] = None,
                    params: Optional[float] = None, latency: Optional[float] = None,
                    latency_model: Any = None) -> "Budget":
        """Validate the ratios (each None or in (0, 1], not all None) and build the limits
        (a latency ratio needs ``latency_model``)."""
        check_budget_ratios(flops, params, latency)
        if latency is not None and latency_model is None:
            raise ValueError("a latency budget needs a latency model "
                             "(gcnprune_fast.latency.build_latency_model)")
        max_flops = math.inf if flops is None else float(flops) * float(space.base_flops)
        max_params = math.inf if params is None else float(params) * float(space.base_params)
        if latency is None:
            return cls(None if flops is None else float(flops),
                       None if params is None else float(params), max_flops, max_params)
        return cls(None if flops is None else float(flops),
                   None if params is None else float(params), max_flops, max_params,
                   float(latency), float(latency) * float(latency_model.base_latency),
                   latency_model)

    @property
    def has_latency(self) -> bool:
        return self.latency is not None

    def feasible(self, flops, params, latency=None) -> torch.Tensor:
        """Elementwise: does a (flops, params[, latency]) triple (tensors or numbers) meet the
        budget? With a latency limit, ``latency`` (seconds) is required: use
        :meth:`feasible_counts`, which predicts it from the kept counts."""
        flops = torch.as_tensor(flops, dtype=torch.float64)
        params = torch.as_tensor(params, dtype=torch.float64)
        # A relative slack of 1e-9 absorbs float64 rounding of ratio * base.
        ok = (flops <= self.max_flops * (1 + 1e-9)) & (params <= self.max_params * (1 + 1e-9))
        if self.latency is not None:
            if latency is None:
                raise ValueError("this budget has a latency limit: pass the predicted latency, "
                                 "or use Budget.feasible_counts(space, counts)")
            ok = ok & (torch.as_tensor(latency, dtype=torch.float64) <= self.max_latency * (1 + 1e-9))
        return ok

    def latency_from_counts(self, counts) -> Optional[torch.Tensor]:
        """Predicted latency (s) [...] of counts [..., G], or None without a latency limit."""
        if self.latency_model is None:
            return None
        return self.latency_model.latency_from_counts(torch.as_tensor(counts))

    def feasible_counts(self, space, counts) -> torch.Tensor:
        """Elementwise over counts [..., G] (kept channels per group): does the width vector meet
        every limit (FLOPs and params via ``space.cost_from_counts``, latency via the latency
        model)? For a budget without a latency limit this is exactly
        ``feasible(*space.cost_from_counts(counts))``."""
        f, p = space.cost_from_counts(counts)
        if self.latency is None:
            return self.feasible(f, p)
        return self.feasible(f, p, self.latency_from_counts(counts))

    @property
    def keep_ratio(self) -> float:
        """The tightest of the given ratios (used for warm starts)."""
        return min(r for r in (self.flops, self.params, self.latency) if r is not None)

    def fingerprint_extra(self) -> dict:
        """Checkpoint fingerprint entries of the latency limit (empty without one, so checkpoints
        of FLOPs / params budgets keep their fingerprints)."""
        if self.latency is None:
            return {}
        return {"budget_latency": self.latency, "latency_table": dict(self.latency_model.meta),
                "latency_fill": LATENCY_FILL}

    def describe(self) -> str:
        """``flops=0.5, params=None[, latency=0.5]`` for messages."""
        text = f"flops={self.flops}, params={self.params}"
        return text + (f", latency={self.latency}" if self.latency is not None else "")


def _sizes(space) -> List[int]:
    return [int(g.size) for g in space.groups]


def _min_keeps(space) -> List[int]:
    return [int(space.min_keep(i)) for i in range(space.num_groups)]


def min_cost_ratios(space) -> tuple:
    """(flops ratio, params ratio) of the smallest network the space allows (every group at
    ``space.min_keep``)."""
    counts = torch.tensor([_min_keeps(space)], dtype=torch.long)
    f, p = space.cost_from_counts(counts)
    return float(f[0]) / float(space.base_flops), float(p[0]) / float(space.base_params)


def min_latency_ratio(space, budget: Budget) -> Optional[float]:
    """Predicted latency ratio of the smallest network the space allows (None without a latency
    model)."""
    if budget.latency_model is None:
        return None
    counts = torch.tensor([_min_keeps(space)], dtype=torch.long)
    return float(budget.latency_from_counts(counts)[0]) / float(budget.latency_model.base_latency)


def check_budget_reachable(space, budget: Budget) -> None:
    """Raise ValueError when even the smallest allowed network exceeds the budget."""
    counts = torch.tensor([_min_keeps(space)], dtype=torch.long)
    f, p = space.cost_from_counts(counts)
    lat = None if budget.latency is None else budget.latency_from_counts(counts)[0]
    if not bool(budget.feasible(f[0], p[0], lat)):
        fr, pr = float(f[0]) / float(space.base_flops), float(p[0]) / float(space.base_params)
        lr = "" if lat is None else \
            f" and predicted latency ratio {float(lat) / budget.latency_model.base_latency:.4f}"
        raise ValueError(
            f"budget {budget.describe()} is below what the pruning space "
            f"allows: keeping min_channels/round_to channels in every group leaves flops ratio "
            f"{fr:.4f} and params ratio {pr:.4f}{lr}; ask for at least these (or lower min_channels / "
            f"round_to, or ignore fewer layers)")


def standardize(scores: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Per-group z-scores (a constant group maps to zeros), float64 [C_g] each."""
    out = []
    for s in scores:
        s = s.detach().to(torch.float64).cpu()
        std = s.std(unbiased=False) if s.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        out.append((s - s.mean()) / std if float(std) > 0 else torch.zeros_like(s))
    return out


def _chunks(order: np.ndarray, first: int, step: int) -> List[np.ndarray]:
    """Split ``order`` into a first chunk of ``first`` items (skipped when 0) then chunks of
    ``step``."""
    out, i = [], 0
    if first > 0:
        out.append(order[:first])
        i = first
    while i < len(order):
        out.append(order[i:i + step])
        i += step
    return out


def _prefix_search(space, budget: Budget, counts0: np.ndarray, step_group: np.ndarray,
                   step_delta: np.ndarray, want_feasible_first: bool) -> int:
    """Number of steps to take along a fixed sequence of width changes.

    counts after t steps = counts0 + sum of the first t deltas (applied to ``step_group``).
    Removal (``want_feasible_first=True``): the smallest t whose cost meets the budget (-1 if none).
    Filling (False): the largest t whose cost still meets the budget (costs grow with t).
    """
    num_steps = len(step_group)
    counts = np.zeros((num_steps + 1, len(counts0)), dtype=np.int64)
    counts[0] = counts0
    if num_steps:
        inc = np.zeros((num_steps, len(counts0)), dtype=np.int64)
        inc[np.arange(num_steps), step_group] = step_delta
        counts[1:] = counts0 + np.cumsum(inc, axis=0)
    ok = budget.feasible_counts(space, torch.from_numpy(counts)).numpy()
    if want_feasible_first:
        idx = np.flatnonzero(ok)
        return int(idx[0]) if idx.size else -1
    bad = np.flatnonzero(~ok)
    return int(bad[0]) - 1 if bad.size else num_steps


def project_to_budget(space, masks: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                      budget: Budget, *, round_to: Optional[int] = None,
                      fill: bool = False,
                      fill_past_misfits: Optional[bool] = None) -> List[torch.Tensor]:
    """Make ``masks`` feasible (the action wall), optionally using up the remaining budget.

    Args:
        space: the pruning space (``groups``, ``min_keep``, ``cost_from_counts``).
        masks: bool [C_g] per group, the proposal (e.g. a Bernoulli sample).
        scores: float [C_g] per group; comparable ACROSS groups (lowest removed first globally).
        budget: the cost limits.
        round_to: widths below the full size are made multiples of this (default: the space's).
        fill: after the projection, add back the highest-scored dropped channels while feasible.
        fill_past_misfits: when the fill meets a chunk that does not fit, skip that group and go
            on with the others (None: only under a latency limit). A measured latency table has
            plateaus (widths at which channels cost no time: a kernel's blocking, a vector
            width), so a latency budget can leave channels that are free once another group's
            chunk no longer fits; FLOPs and params grow with every channel, and their fills keep
            stopping at the first misfit (so FLOPs-budgeted results stay as they were).

    Returns:
        new bool masks [C_g] (CPU); each group keeps >= ``space.min_keep(g)`` channels, each width
        is the full size or a multiple of ``round_to``, and the cost meets the budget.

    Raises:
        ValueError: when the budget cannot be met even at the minimum widths.
    """
    round_to = max(int(space.round_to if round_to is None else round_to), 1)
    sizes, min_keeps = _sizes(space), _min_keeps(space)
    keep = [m.detach().to(torch.bool).cpu().numpy().copy() for m in masks]
    sc = [s.detach().to(torch.float64).cpu().numpy() for s in scores]
    # 1. repair: enough channels, aligned widths.
    for g, (k, s) in enumerate(zip(keep, sc)):
        n = int(k.sum())
        if n < min_keeps[g]:
            dropped = np.flatnonzero(~k)
            add = dropped[np.argsort(-s[dropped], kind="stable")][:min_keeps[g] - n]
            k[add] = True
            n = min_keeps[g]
        if n != sizes[g] and n % round_to and n > min_keeps[g]:
            target = max(min_keeps[g], n - n % round_to)
            kept = np.flatnonzero(k)
            k[kept[np.argsort(s[kept], kind="stable")][:n - target]] = False
    # 2. removal sequence: per group, kept channels ascending by score in chunks that keep widths
    # aligned, never below min_keep; merged globally by chunk mean score.
    counts0 = np.array([int(k.sum()) for k in keep], dtype=np.int64)
    steps = []  # (mean score, group, position within group, channel indices)
    for g, (k, s) in enumerate(zip(keep, sc)):
        removable = counts0[g] - min_keeps[g]
        if removable <= 0:
            continue
        kept = np.flatnonzero(k)
        order = kept[np.argsort(s[kept], kind="stable")][:removable]
        first = int(counts0[g] % round_to) if counts0[g] == sizes[g] else 0
        # ``order`` stops at min_keep, so a last partial chunk lands exactly on min_keep.
        for pos, chunk in enumerate(_chunks(order, min(first, removable), round_to)):
            steps.append((float(s[chunk].mean()), g, pos, chunk))
    steps.sort(key=lambda t: (t[0], t[1], t[2]))
    t = _prefix_search(space, budget, counts0, np.array([st[1] for st in steps], dtype=np.int64),
                       -np.array([len(st[3]) for st in steps], dtype=np.int64), True)
    if t < 0:
        fr, pr = min_cost_ratios(space)
        lr = min_latency_ratio(space, budget)
        raise ValueError(f"budget {budget.describe()} cannot be met: the "
                         f"minimum achievable ratios are flops {fr:.4f}, params {pr:.4f}"
                         + ("" if lr is None else f", latency {lr:.4f} (predicted)"))
    for st in steps[:t]:
        keep[st[1]][st[3]] = False
    if fill:
        counts = np.array([int(k.sum()) for k in keep], dtype=np.int64)
        adds = []
        for g, (k, s) in enumerate(zip(keep, sc)):
            dropped = np.flatnonzero(~k)
            if dropped.size == 0:
                continue
            order = dropped[np.argsort(-s[dropped], kind="stable")]
            # keep widths aligned: chunks of round_to; the last one may reach the full size.
            for pos, chunk in enumerate(_chunks(order, 0, round_to)):
                adds.append((-float(s[chunk].mean()), g, pos, chunk))
        adds.sort(key=lambda t: (t[0], t[1], t[2]))
        # A group's chunks must be added in order; the global sort keeps that (means descend
        # within a group), ties broken by position.
        if fill_past_misfits is None:
            fill_past_misfits = budget.has_latency
        while adds:
            t_add = _prefix_search(space, budget, counts,
                                   np.array([a[1] for a in adds], dtype=np.int64),
                                   np.array([len(a[3]) for a in adds], dtype=np.int64), False)
            for a in adds[:max(t_add, 0)]:
                keep[a[1]][a[3]] = True
                counts[a[1]] += len(a[3])
            if t_add < 0 or t_add >= len(adds) or not fill_past_misfits:
                break
            # adds[t_add] does not fit: skip it and the rest of its group (the same widths), and
            # go on with the chunks of the other groups. Costs only grow as channels come back,
            # so a skipped chunk never fits later; each round closes one group.
            closed = adds[t_add][1]
            adds = [a for a in adds[t_add + 1:] if a[1] != closed]
    return [torch.from_numpy(k) for k in keep]


def counts_from_ratios(space, ratios, round_to: Optional[int] = None) -> List[int]:
    """Legal widths for per-group keep ratios (sequence or tensor [G] in [0, 1]): floor(q * size),
    rounded down to a multiple of ``round_to`` below the full size, at least ``min_keep``."""
    round_to = max(int(space.round_to if round_to is None else round_to), 1)
    ratios = [float(q) for q in torch.as_tensor(ratios, dtype=torch.float64).reshape(-1)]
    if len(ratios) != space.num_groups:
        raise ValueError(f"ratios has {len(ratios)} entries, the space has {space.num_groups} groups")
    out = []
    for q, size, mk in zip(ratios, _sizes(space), _min_keeps(space)):
        if not math.isfinite(q) or not 0.0 <= q <= 1.0:
            raise ValueError(f"keep ratios must be in [0, 1], got {q!r}")
        c = int(math.floor(q * size + 1e-9))
        if c < size and round_to > 1:
            c -= c % round_to
        out.append(min(size, max(mk, c)))
    return out


def _counts_feasible(space, budget: Budget, counts: Sequence[Sequence[int]]) -> torch.Tensor:
    return budget.feasible_counts(space, torch.tensor([list(c) for c in counts], dtype=torch.long))


def fit_ratios_to_budget(space, ratios, budget: Budget, round_to: Optional[int] = None,
                         iterations: int = 40) -> List[int]:
    """Widths for ``ratios`` scaled by the largest common factor s in [0, 1] that meets the budget
    (bisection on s): the proposal's shape is kept, its size is cut to the budget.

    Raises:
        ValueError: even the minimum widths exceed the budget.
    """
    ratios = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1)
    if bool(_counts_feasible(space, budget, [counts_from_ratios(space, ratios, round_to)])[0]):
        return counts_from_ratios(space, ratios, round_to)
    check_budget_reachable(space, budget)
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if bool(_counts_feasible(space, budget, [counts_from_ratios(space, ratios * mid, round_to)])[0]):
            lo = mid
        else:
            hi = mid
    return counts_from_ratios(space, ratios * lo, round_to)


def scale_ratios_to_budget(space, ratios, budget: Budget, *, low: float = 0.0,
                           round_to: Optional[int] = None, iterations: int = 40) -> List[int]:
    """Widths for ``ratios`` scaled by the largest common factor s >= ``low`` (ratios capped at 1)
    that meets the budget, up when the proposal is under it, down when over (bisection on s): the
    proposal's shape is kept, its size put on the budget surface. When even s = ``low`` is over
    the budget: :func:`fit_ratios_to_budget` (which raises if nothing meets it)."""
    ratios = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1).clamp(1e-6, 1.0)

    def widths(scale: float) -> List[int]:
        return counts_from_ratios(space, (ratios * scale).clamp(max=1.0), round_to)

    def ok(scale: float) -> bool:
        return bool(_counts_feasible(space, budget, [widths(scale)])[0])

    lo, hi = float(low), max(float(1.0 / ratios.min()), float(low))
    if ok(hi):
        return widths(hi)
    if not ok(lo):
        return fit_ratios_to_budget(space, ratios, budget, round_to)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return widths(lo)


def grow_counts_to_budget(space, counts: Sequence[int], budget: Budget,
                          round_to: Optional[int] = None, iterations: int = 40) -> List[int]:
    """``counts`` grown to use the budget they leave unused: every keep ratio scaled by the
    largest common factor s >= 1 that stays feasible (:func:`scale_ratios_to_budget`), never
    below ``counts``. Infeasible ``counts`` are returned unchanged."""
    counts = [int(c) for c in counts]
    if len(counts) != space.num_groups:
        raise ValueError(f"counts has {len(counts)} entries, the space has {space.num_groups} groups")
    if not bool(_counts_feasible(space, budget, [counts])[0]):
        return counts
    ratios = [c / s for c, s in zip(counts, _sizes(space))]
    grown = scale_ratios_to_budget(space, ratios, budget, low=1.0, round_to=round_to,
                                   iterations=iterations)
    out = [max(a, b) for a, b in zip(grown, counts)]
    # the floor of a rounded-down ratio can sit one step below counts: the max then may overshoot
    return out if bool(_counts_feasible(space, budget, [out])[0]) else counts


def uniform_counts(space, budget: Budget, round_to: Optional[int] = None) -> List[int]:
    """Widths for the largest common keep ratio q that meets the budget (bisection on q)."""
    return fit_ratios_to_budget(space, torch.ones(space.num_groups, dtype=torch.float64), budget,
                                round_to)


def action_wall(space, counts: Sequence[int], g: int, budget: Budget,
                round_to: Optional[int] = None) -> int:
    """AMC's action wall: the largest legal width of group ``g`` such that the budget is still
    reachable when groups before ``g`` keep ``counts[:g]`` and every later group is cut to its
    minimum width. ``counts`` gives the decided widths (entries from ``g`` on are ignored).

    Raises:
        ValueError: not even ``min_keep(g)`` fits (earlier decisions spent the budget).
    """
    round_to = max(int(space.round_to if round_to is None else round_to), 1)
    sizes, min_keeps = _sizes(space), _min_keeps(space)
    widths = [c for c in range(min_keeps[g], sizes[g] + 1)
              if c == sizes[g] or c % round_to == 0 or c == min_keeps[g]]
    base = list(counts[:g]) + [0] + min_keeps[g + 1:]
    rows = []
    for c in widths:
        row = list(base)
        row[g] = c
        rows.append(row)
    ok = _counts_feasible(space, budget, rows).numpy()
    if not ok.any():
        raise ValueError(f"group {g}: the budget cannot be met even at its minimum width "
                         f"{min_keeps[g]} given the widths chosen for groups 0..{g - 1}")
    return int(widths[int(np.flatnonzero(ok)[-1])])


def masks_from_counts(scores: Sequence[torch.Tensor], counts: Sequence[int]) -> List[torch.Tensor]:
    """Keep the ``counts[g]`` highest-scored channels of each group (ties to the lower index)."""
    if len(scores) != len(counts):
        raise ValueError(f"{len(scores)} score tensors but {len(counts)} counts")
    masks = []
    for s, c in zip(scores, counts):
        m = torch.zeros(s.numel(), dtype=torch.bool)
        m[torch.argsort(s, descending=True, stable=True)[:int(c)]] = True
        masks.append(m)
    return masks


def allocate(space, scores: Sequence[torch.Tensor], budget: Budget, *, allocation: str = "global",
             round_to: Optional[int] = None,
             fill_past_misfits: Optional[bool] = None) -> List[torch.Tensor]:
    """Keep-masks from per-channel scores.

    ``"global"``: scores are standardized within each group (so layers with large weights do not
    win by scale) and channels are removed in one global ranking until the budget holds.
    ``"uniform"``: every group keeps the same fraction (its top-scored channels), the largest
    fraction that meets the budget; then the action wall and a fill pass settle rounding effects.
    ``fill_past_misfits``: the global allocation's fill, as in :func:`project_to_budget`.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; expected one of {list(ALLOCATIONS)}")
    if len(scores) != space.num_groups:
        raise ValueError(f"scores has {len(scores)} entries, the space has {space.num_groups} groups")
    for g, (s, grp) in enumerate(zip(scores, space.groups)):
        if s.shape != (grp.size,):
            raise ValueError(f"scores[{g}] (group {grp.name!r}) has shape {tuple(s.shape)}, "
                             f"expected ({grp.size},)")
        if not torch.isfinite(s).all():
            raise ValueError(f"scores[{g}] (group {grp.name!r}) contains NaN or inf")
    z = standardize(scores)
    if allocation == "global":
        return project_to_budget(space, space.full_masks(), z, budget, round_to=round_to, fill=True,
                                 fill_past_misfits=fill_past_misfits)
    masks = masks_from_counts(z, uniform_counts(space, budget, round_to))
    return project_to_budget(space, masks, z, budget, round_to=round_to, fill=False)
