"""The latency table and the latency cost model of a pruning space.

Every prunable channel-mixing layer (conv, depthwise conv, linear: a layer with an input or an
output channel dimension in some group) is timed on the target at the widths a search can choose:
legal widths (multiples of ``round_to``, the minimum and the full width) of its input and output
channels together when both are pruned, subsampled to at most ``grid_points`` per axis (the
model interpolates bilinearly between measured widths). A conv is timed with a bias, as it runs
once its BatchNorm is folded at deployment. The layer widths are affine functions of the kept
counts per group (``width = a . counts + c``, the signatures of the cost model), so the model is

    latency(counts) = remainder + scale * sum_layers T_layer(width_in(counts), width_out(counts))

fitted to two end-to-end measurements of the network as deployed: the unpruned one and the one
with every group at about half its width (``calibration="two-point"``, the default), timed in
alternation (best of ``calibration_rounds``) so that both see the same state of the machine. ``scale``
absorbs what isolated timings miss (weights cold in the caches inside a network, activations
already hot, per-op overhead of the runtime; clamped to [0.5, 2]), ``remainder`` everything not
tabled (pooling, element-wise ops, unprunable layers). ``calibration="remainder"``: scale 1 and
one measurement (remainder = the unpruned network's measured latency minus its layers' full-width
entries). Either way the full network is predicted at its measured latency; a two-point model
whose clamped scale cannot reach the half-width point says by how much it misses it
(``calibration_error``, warned above 10%).
``latency_from_counts`` is vectorized over any batch of count vectors, and monotone in every
width (each table is made monotone by a running maximum along both axes).

Cache: one JSON file per (device name, torch version, threads, batch, clock) under ``cache_dir``
(default ``$GCNPRUNE_LATENCY_CACHE`` or ``~/.cache/gcnprune_fast/latency``) holding each measured
point keyed by the layer's shape (type, kernel, stride, padding, dilation, input spatial size,
bias, input and output width) and the end-to-end time of a model keyed by its structure and input
shape; a second run measures nothing, another torch version or layer shape measures anew.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast.latency.measure import (Timer, TimerFn, device_name, resolve_threads,
                                           threads_context, time_models_alternating,
                                           timing_spread)

__all__ = ["LayerSpec", "LatencyCache", "LatencyModel", "build_latency_model", "layer_specs",
           "default_cache_dir"]

logger = logging.getLogger("gcnprune_fast")

CACHE_FORMAT = "gcnprune_fast.latency/1"
# Calibration rounds whose median is this much above their best: the machine was too noisy for
# the fitted model to be trusted (warned, and reported as ``calibration_spread``).
UNSTABLE_SPREAD = 0.15
# A fitted model that misses its own half-width calibration point by more than this (the scale
# hit its clamp: the isolated-layer table and the end-to-end timings disagree by over 2x) is
# warned and reported as ``calibration_error``.
CALIBRATION_MISS = 0.10
_MIXING = ("conv", "depthwise", "linear")


def default_cache_dir() -> Path:
    return Path(os.environ.get("GCNPRUNE_LATENCY_CACHE",
                               Path.home() / ".cache" / "gcnprune_fast" / "latency"))


@dataclass
class LayerSpec:
    """One tabled layer: its module, shape facts, width signatures and measured grid."""

    name: str
    kind: str  # "conv", "depthwise", "linear"
    shape: Dict[str, Any]  # everything but the two widths (the cache key's stem)
    a_in: np.ndarray  # [G]: width_in = a_in . counts + c_in
    c_in: float
    a_out: np.ndarray
    c_out: float
    xs: List[int] = field(default_factory=list)  # input widths measured
    ys: List[int] = field(default_factory=list)  # output widths measured
    table: Optional[np.ndarray] = None  # [len(xs), len(ys)] seconds

    @property
    def pruned_in(self) -> bool:
        return bool(np.any(self.a_in)) and self.kind != "depthwise"

    def point_key(self, cin: int, cout: int) -> str:
        return json.dumps({**self.shape, "cin": int(cin), "cout": int(cout)}, sort_keys=True)

    def macs(self, cin: int, cout: int, batch: int) -> float:
        s = self.shape
        if self.kind == "linear":
            return float(batch * s["rows"] * cin * cout)
        k = math.prod(s["kernel"])
        per = s["in_per_group"] if self.kind == "depthwise" else cin
        return float(batch * math.prod(s["out_hw"]) * k * per * cout)


def _legal_axis(space, a: np.ndarray, c: float, points: int) -> List[int]:
    """Widths of a signature a . counts + c the search can reach, at most ``points`` of them."""
    nz = np.flatnonzero(a)
    sizes = np.array([g.size for g in space.groups], dtype=np.float64)
    if nz.size == 0:
        return [int(round(c))]
    if nz.size == 1 and abs(a[nz[0]] - 1.0) < 1e-12:
        g = int(nz[0])
        legal = sorted({c + w for w in range(space.min_keep(g), int(sizes[g]) + 1)
                        if space.valid_count(g, w)})
    else:
        lo = float(a @ np.array([space.min_keep(g) for g in range(space.num_groups)]) + c)
        hi = float(a @ sizes + c)
        legal = sorted(set(int(round(v)) for v in np.linspace(lo, hi, max(points, 2))))
    legal = [int(round(v)) for v in legal]
    if len(legal) <= points:
        return legal
    idx = np.unique(np.round(np.linspace(0, len(legal) - 1, points)).astype(int))
    return [legal[i] for i in idx]


def layer_specs(space, batch: int = 1, grid_points: int = 8) -> List[LayerSpec]:
    """The tabled layers of ``space`` (those whose input or output width depends on a group) with
    their width signatures and the grid of widths to measure. Runs one forward of the model on
    the space's example inputs (batch 1 of them) to record the layers' input shapes."""
    G = space.num_groups
    members: Dict[Tuple[str, str], Dict[int, int]] = {}
    kinds: Dict[str, str] = {}
    for g, raw in enumerate(space._raw):
        for d in raw.dims:
            if not d.name or d.kind not in _MIXING:
                continue
            kinds[d.name] = d.kind
            for role in d.roles:
                m = members.setdefault((d.name, role), {})
                m[g] = m.get(g, 0) + len(d.local)
    modules = dict(space.model.named_modules())
    shapes: Dict[str, Tuple[tuple, tuple]] = {}
    hooks = []
    for name in kinds:
        def hook(mod, args, out, name=name):
            shapes.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            space.model(*[t[:1] for t in space.example_inputs])
    finally:
        for h in hooks:
            h.remove()
    sizes = [g.size for g in space.groups]
    specs = []
    for name, kind in kinds.items():
        mod = modules[name]
        if name not in shapes:
            continue
        xin, yout = shapes[name]
        is_conv = isinstance(mod, nn.Conv2d)
        if not (is_conv or isinstance(mod, nn.Linear)):
            continue  # 1-d/3-d convs and transposed convs are left to the remainder
        if is_conv and mod.groups != 1 and kind != "depthwise":
            continue
        total_in = mod.in_channels if is_conv else mod.in_features
        total_out = mod.out_channels if is_conv else mod.out_features

        def sig(role, total):
            a = np.zeros(G)
            rest = float(total)
            for g, n in members.get((name, role), {}).items():
                a[g] += n / sizes[g]
                rest -= n
            return a, rest
        a_in, c_in = sig("in", total_in)
        a_out, c_out = sig("out", total_out)
        if kind == "depthwise":
            a_in, c_in = a_out, c_out
        if not (np.any(a_in) or np.any(a_out)):
            continue
        if is_conv:
            shape = {"type": "depthwise" if kind == "depthwise" else "conv2d",
                     "kernel": list(mod.kernel_size), "stride": list(mod.stride),
                     "padding": list(mod.padding) if not isinstance(mod.padding, str) else mod.padding,
                     "dilation": list(mod.dilation), "in_hw": list(xin[2:]), "out_hw": list(yout[2:]),
                     "in_per_group": mod.in_channels // mod.groups, "bias": True,
                     "padding_mode": mod.padding_mode}
        else:
            shape = {"type": "linear", "in_shape": list(xin[1:-1]), "rows": int(math.prod(xin[1:-1])),
                     "bias": mod.bias is not None}
        spec = LayerSpec(name, "depthwise" if kind == "depthwise" else ("conv" if is_conv else "linear"),
                         shape, a_in, c_in, a_out, c_out)
        spec.ys = _legal_axis(space, a_out, c_out, grid_points)
        spec.xs = [0] if spec.kind == "depthwise" else _legal_axis(space, a_in, c_in, grid_points)
        specs.append(spec)
    return specs


def _layer_runner(spec: LayerSpec, cin: int, cout: int, batch: int, device) -> Any:
    """A closure running the layer once at widths (cin, cout) on random data."""
    s = spec.shape
    gen = torch.Generator().manual_seed(0)
    if spec.kind == "linear":
        x = torch.randn(batch, *s["in_shape"], cin, generator=gen).to(device)
        w = torch.randn(cout, cin, generator=gen).to(device)
        b = torch.randn(cout, generator=gen).to(device) if s["bias"] else None
        return lambda: F.linear(x, w, b)
    groups = cout if spec.kind == "depthwise" else 1
    per = s["in_per_group"] if spec.kind == "depthwise" else cin
    cin_total = per * groups
    x = torch.randn(batch, cin_total, *s["in_hw"], generator=gen).to(device)
    w = torch.randn(cout, per, *s["kernel"], generator=gen).to(device)
    b = torch.randn(cout, generator=gen).to(device)
    padding = s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"])
    if s.get("padding_mode", "zeros") != "zeros":
        conv = nn.Conv2d(cin_total, cout, tuple(s["kernel"]), tuple(s["stride"]), padding,
                         tuple(s["dilation"]), groups, True, s["padding_mode"]).to(device)
        return lambda: conv(x)
    stride, dilation = tuple(s["stride"]), tuple(s["dilation"])
    return lambda: F.conv2d(x, w, b, stride, padding, dilation, groups)


class LatencyCache:
    """Measured points and end-to-end times for one (device, torch version, threads, batch, clock),
    stored as JSON in ``cache_dir`` (None: in memory only). Writes are atomic."""

    def __init__(self, cache_dir, meta: Dict[str, Any]):
        self.meta = dict(meta, format=CACHE_FORMAT)
        digest = hashlib.sha1(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = None if cache_dir is None else Path(cache_dir) / f"latency-{digest}.json"
        self.points: Dict[str, float] = {}
        self.models: Dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("meta") == self.meta:
                    self.points = {k: float(v) for k, v in data.get("points", {}).items()}
                    self.models = {k: float(v) for k, v in data.get("models", {}).items()}
            except (OSError, ValueError) as e:
                logger.warning("latency cache %s unreadable (%s); measuring anew", self.path, e)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"meta": self.meta, "points": self.points, "models": self.models}, f)
        os.replace(tmp, self.path)


def _monotone(table: np.ndarray) -> np.ndarray:
    """Running maximum along both axes: wider never predicted faster."""
    return np.maximum.accumulate(np.maximum.accumulate(table, axis=0), axis=1)


def _interp_weights(grid: torch.Tensor, v: torch.Tensor):
    """(lower index, upper index, weight of upper) of ``v`` on the sorted ``grid`` (clamped)."""
    n = grid.numel()
    if n == 1:
        z = torch.zeros_like(v, dtype=torch.long)
        return z, z, torch.zeros_like(v)
    v = v.clamp(float(grid[0]), float(grid[-1]))
    hi = torch.searchsorted(grid, v, right=False).clamp(1, n - 1)
    lo = hi - 1
    w = (v - grid[lo]) / (grid[hi] - grid[lo])
    return lo, hi, w


class LatencyModel:
    """Latency (seconds per forward of a batch) as a function of the kept counts per group.

    Attributes: ``layers`` (LayerSpec with measured tables), ``remainder`` (s), ``base_latency``
    (the measured end-to-end latency of the unpruned model, s, = the prediction at full widths),
    ``meta`` (device, torch version, threads, batch, clock), ``timed_by`` (how the end-to-end time
    was taken: "gcnprune_run" or "torch"), ``measured_points`` / ``cached_points`` of this build.
    """

    def __init__(self, num_groups: int, layers: List[LayerSpec], base_latency: float,
                 meta: Dict[str, Any], timed_by: str, sizes: Sequence[int],
                 calibration: Optional[Tuple[Sequence[int], float]] = None):
        self.num_groups, self.layers, self.meta, self.timed_by = num_groups, layers, meta, timed_by
        self.base_latency = float(base_latency)
        self.measured_points = self.cached_points = 0
        self._A_in = torch.from_numpy(np.stack([l.a_in for l in layers])) if layers else \
            torch.zeros(0, num_groups, dtype=torch.float64)
        self._A_out = torch.from_numpy(np.stack([l.a_out for l in layers])) if layers else \
            torch.zeros(0, num_groups, dtype=torch.float64)
        self._c_in = torch.tensor([l.c_in for l in layers], dtype=torch.float64)
        self._c_out = torch.tensor([l.c_out for l in layers], dtype=torch.float64)
        self._grids = [(torch.tensor(l.xs, dtype=torch.float64), torch.tensor(l.ys, dtype=torch.float64),
                        torch.from_numpy(np.asarray(l.table, dtype=np.float64))) for l in layers]
        full = torch.tensor(list(sizes), dtype=torch.float64)
        self.remainder, self.scale = 0.0, 1.0
        # median / best - 1 of the end-to-end calibration timings (None: not measured here)
        self.calibration_spread: Optional[float] = None
        # predicted / measured - 1 at the half-width calibration network (None: "remainder")
        self.calibration_error: Optional[float] = None
        l_full = float(self.layer_latencies(full).sum())
        if calibration is not None:
            counts, t = calibration
            l_half = float(self.layer_latencies(torch.as_tensor(counts)).sum())
            if l_full - l_half > 1e-12:
                self.scale = min(2.0, max(0.5, (self.base_latency - float(t)) / (l_full - l_half)))
        self.remainder = self.base_latency - self.scale * l_full
        if calibration is not None and float(calibration[1]) > 0:
            self.calibration_error = (self.scale * l_half + self.remainder) / float(calibration[1]) - 1

    def layer_latencies(self, counts) -> torch.Tensor:
        """counts [..., G] -> float64 [..., L]: each tabled layer's interpolated time."""
        x = torch.as_tensor(counts).to(torch.float64)
        if x.shape[-1] != self.num_groups:
            raise ValueError(f"counts must have shape [..., {self.num_groups}], got {tuple(x.shape)}")
        win = x @ self._A_in.T + self._c_in  # [..., L]
        wout = x @ self._A_out.T + self._c_out
        out = []
        for l, (xs, ys, T) in enumerate(self._grids):
            i0, i1, wi = _interp_weights(xs, win[..., l])
            j0, j1, wj = _interp_weights(ys, wout[..., l])
            t = (T[i0, j0] * (1 - wi) * (1 - wj) + T[i1, j0] * wi * (1 - wj)
                 + T[i0, j1] * (1 - wi) * wj + T[i1, j1] * wi * wj)
            out.append(t)
        if not out:
            return torch.zeros(*x.shape[:-1], 0, dtype=torch.float64)
        return torch.stack(out, dim=-1)

    def latency_from_counts(self, counts) -> torch.Tensor:
        """counts [..., G] (int or float) -> predicted seconds [...] float64."""
        return self.scale * self.layer_latencies(counts).sum(-1) + self.remainder

    def state(self) -> Dict[str, Any]:
        """Plain data (picklable, no timer) from which :meth:`from_state` rebuilds this model:
        rank 0 measures, the other ranks of a torch.distributed job receive the state."""
        return {"num_groups": self.num_groups, "base_latency": self.base_latency,
                "meta": dict(self.meta), "timed_by": self.timed_by, "scale": self.scale,
                "remainder": self.remainder, "example_shape": list(self.example_shape),
                "runtime": self.runtime, "device": str(self.device),
                "calibration_spread": self.calibration_spread,
                "calibration_error": self.calibration_error,
                "layers": [{"name": l.name, "kind": l.kind, "shape": l.shape,
                            "a_in": l.a_in.tolist(), "c_in": l.c_in, "a_out": l.a_out.tolist(),
                            "c_out": l.c_out, "xs": list(l.xs), "ys": list(l.ys),
                            "table": np.asarray(l.table).tolist()} for l in self.layers]}

    @classmethod
    def from_state(cls, state: Dict[str, Any], timer: Optional[TimerFn] = None) -> "LatencyModel":
        """The model of :meth:`state` (its timer: ``timer`` or the default :class:`Timer`)."""
        layers = [LayerSpec(d["name"], d["kind"], d["shape"], np.asarray(d["a_in"], dtype=np.float64),
                            float(d["c_in"]), np.asarray(d["a_out"], dtype=np.float64),
                            float(d["c_out"]), list(d["xs"]), list(d["ys"]),
                            np.asarray(d["table"], dtype=np.float64)) for d in state["layers"]]
        lm = cls(state["num_groups"], layers, state["base_latency"], state["meta"],
                 state["timed_by"], [0] * state["num_groups"])
        lm.scale, lm.remainder = float(state["scale"]), float(state["remainder"])
        lm.example_shape, lm.runtime = list(state["example_shape"]), state["runtime"]
        lm.device = torch.device(state["device"])
        lm.calibration_spread = state.get("calibration_spread")
        lm.calibration_error = state.get("calibration_error")
        lm.timer = timer if timer is not None else Timer(
            lm.device, clock=state["meta"]["clock"] if state["meta"]["clock"] in
            ("cpu", "wall", "cuda") else "auto", threads=state["meta"]["threads"])
        return lm

    def summary(self) -> Dict[str, Any]:
        return {**self.meta, "layers": len(self.layers), "base_latency_s": self.base_latency,
                "remainder_s": self.remainder, "scale": self.scale, "timed_by": self.timed_by,
                "measured_points": self.measured_points, "cached_points": self.cached_points,
                "calibration_spread": self.calibration_spread,
                "calibration_error": self.calibration_error}


def build_latency_model(space, *, device="cpu", batch: int = 1, threads: Optional[int] = None,
                        timer: Optional[TimerFn] = None, cache_dir="default", grid_points: int = 8,
                        clock: str = "auto", runtime: str = "auto", calibration: str = "two-point",
                        calibration_rounds: int = 5, progress: bool = True) -> LatencyModel:
    """Measure (or read from the cache) the latency table of ``space``'s prunable layers and the
    end-to-end latency of its unpruned model on ``device`` at ``batch`` and ``threads``, and
    return the :class:`LatencyModel`.

    Args:
        timer: ``timer(run, spec) -> seconds`` (default :class:`Timer` with ``clock``).
        cache_dir: a folder, ``"default"`` (:func:`default_cache_dir`) or None (no disk cache).
        grid_points: at most this many measured widths per axis of a layer.
        runtime: how the end-to-end time is taken (see ``measure.time_model``).
        calibration: ``"two-point"`` (scale and remainder from the unpruned and the half-width
            network) or ``"remainder"`` (the unpruned network only); see the module docstring.
        calibration_rounds: the calibration networks are timed this many times in alternation
            (best of each).
    """
    if calibration not in ("two-point", "remainder"):
        raise ValueError(f"calibration must be 'two-point' or 'remainder', got {calibration!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"latency_batch must be an int >= 1, got {batch!r}")
    if isinstance(calibration_rounds, bool) or not isinstance(calibration_rounds, int) \
            or calibration_rounds < 1:
        raise ValueError(f"calibration_rounds must be an int >= 1, got {calibration_rounds!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("latency_device='cuda' but no CUDA device is available")
    threads = resolve_threads(threads)
    timer = timer if timer is not None else Timer(device, clock=clock, threads=threads)
    clock_used = getattr(timer, "clock", "custom")
    meta = {"device": device_name(device), "torch": torch.__version__, "threads": threads,
            "batch": batch, "clock": clock_used}
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    cache = LatencyCache(cache_dir, meta)
    specs = layer_specs(space, batch=batch, grid_points=grid_points)
    todo, queued = [], set()
    for spec in specs:
        for cin in spec.xs:
            for cout in spec.ys:
                key = spec.point_key(cin, cout)
                if key not in cache.points and key not in queued:
                    queued.add(key)
                    todo.append((spec, cin, cout, key))
    n_points = sum(len(s.xs) * len(s.ys) for s in specs)
    measured = 0
    if todo:
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(todo), desc="latency table", unit="pt", leave=False)
        t_start = time.perf_counter()
        with threads_context(threads):
            for i, (spec, cin, cout, key) in enumerate(todo):
                run = _layer_runner(spec, cin, cout, batch, device)
                cache.points[key] = float(timer(run, {"what": "layer", "name": spec.name,
                                                      "kind": spec.kind, "cin": cin, "cout": cout,
                                                      "macs": spec.macs(cin, cout, batch),
                                                      **spec.shape}))
                measured += 1
                if i == 2 or (i == len(todo) - 1 and i < 2):
                    per = (time.perf_counter() - t_start) / (i + 1)
                    logger.info("latency table: measuring %d layer widths (%d cached) on %s, "
                                "about %.0f s", len(todo), n_points - len(todo), meta["device"],
                                per * len(todo))
                if bar is not None:
                    bar.update(1)
                if measured % 50 == 0:
                    cache.save()
        if bar is not None:
            bar.close()
        cache.save()
    for spec in specs:
        spec.table = _monotone(np.array([[cache.points[spec.point_key(ci, co)] for co in spec.ys]
                                         for ci in spec.xs], dtype=np.float64))
    # end-to-end time of the unpruned model
    from gcnprune_fast.space.plans import structure_fingerprint
    example = space.example_inputs[0][:1]
    example = example.expand(batch, *example.shape[1:]).contiguous().to(device)
    model_key = json.dumps({"fingerprint": structure_fingerprint(space.model),
                            "input": list(example.shape), "runtime": runtime}, sort_keys=True)
    timed_by_key = model_key + "#timed_by"
    work = None

    def working_model():
        nonlocal work
        if work is None:
            model = space.model
            work = model
            if _model_device(model) != device or model.training:
                import copy
                work = copy.deepcopy(model).to(device).eval()
        return work

    # The unpruned network (and, for "two-point", the half-width one) timed end to end in
    # alternation, best of ``calibration_rounds`` each: both points see the same machine state,
    # so a slow spell of a shared machine cannot skew the fitted scale.
    to_time = {}  # cache key -> (a function building the network, its MACs)
    if model_key not in cache.models:
        to_time[model_key] = (working_model, float(space.base_flops) * batch)
    half = _half_counts(space) if calibration == "two-point" else None
    half_key = None if half is None else model_key + "#half:" + ",".join(map(str, half))
    if half is not None and half_key not in cache.models:
        half_masks = [torch.arange(g.size) < c for g, c in zip(space.groups, half)]
        to_time[half_key] = (lambda: space.prune(half_masks).to(device).eval(),
                             float(space.cost(half_masks)[0]) * batch)
    if to_time:
        samples: Dict[str, List[float]] = {}
        best = time_models_alternating({k: make() for k, (make, _) in to_time.items()}, example,
                                       timer=timer, threads=threads, rounds=calibration_rounds,
                                       runtime=runtime,
                                       macs={k: macs for k, (_, macs) in to_time.items()},
                                       samples=samples)
        measured += len(best)
        for k, (t, _) in best.items():
            cache.models[k] = float(t)
            cache.models[k + "#spread"] = timing_spread(samples.get(k, []))
        if model_key in best:
            cache.models[timed_by_key] = 1.0 if best[model_key][1] == "gcnprune_run" else 0.0
        cache.save()
    base = cache.models[model_key]
    timed_by = "gcnprune_run" if cache.models.get(timed_by_key) == 1.0 else "torch"
    calib = None if half is None else (half, cache.models[half_key])
    lm = LatencyModel(space.num_groups, specs, base, meta, timed_by, [g.size for g in space.groups],
                      calibration=calib)
    lm.measured_points, lm.cached_points = measured, len({s.point_key(a, b) for s in specs
                                                          for a in s.xs for b in s.ys}) - len(todo)
    lm.example_shape = list(example.shape)
    lm.runtime, lm.device = runtime, device
    spreads = [cache.models[k + "#spread"] for k in (model_key, half_key)
               if k is not None and k + "#spread" in cache.models]
    lm.calibration_spread = max(spreads) if spreads else None
    if lm.calibration_spread is not None and lm.calibration_spread > UNSTABLE_SPREAD:
        logger.warning(
            "latency model: the end-to-end calibration timings varied by %.0f%% (median over best "
            "of %d rounds): the machine was busy or noisy, so a latency budget may miss its target "
            "(measured speed-ups below the predicted ones). Re-measure on an idle machine%s.",
            100 * lm.calibration_spread, calibration_rounds,
            "" if cache.path is None else f" (delete {cache.path} or use another latency_cache_dir)")
    if lm.calibration_error is not None and abs(lm.calibration_error) > CALIBRATION_MISS:
        logger.warning(
            "latency model: fitted to the unpruned and the half-width network, it predicts the "
            "half-width one %+.0f%% off its measured time (scale %.2f, clamped to [0.5, 2]): the "
            "isolated layer timings and the end-to-end ones disagree, so predictions of pruned "
            "networks may be off by as much. Re-measure on an idle machine%s.",
            100 * lm.calibration_error, lm.scale,
            "" if cache.path is None else f" (delete {cache.path} or use another latency_cache_dir)")
    lm.timer = timer
    if lm.remainder < 0:
        logger.info("latency model: the tabled layers sum to more than the end-to-end time "
                    "(remainder %.3g ms; per-call overhead of isolated layers)", lm.remainder * 1e3)
    return lm


def _half_counts(space) -> List[int]:
    """Every group at the legal width nearest half its size (the calibration network)."""
    out = []
    for g in range(space.num_groups):
        size = space.groups[g].size
        legal = [w for w in range(space.min_keep(g), size + 1) if space.valid_count(g, w)]
        out.append(min(legal, key=lambda w: (abs(w - size / 2), w)))
    return out


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
