"""Analytic FLOPs/params model of a network as a function of the kept channels per group.

Every channel dimension the counter needs (a layer's input or output channels, the channels of a
BN, an activation or a pooling op) is a *signature*: ``const + sum_g coef[g] * count[g]``, an
affine function of the kept-channel counts of the groups that run through it (a concatenation or
a flatten -> Linear gives several groups or a coefficient > 1). Each counted op then adds a bilinear
(``k * sig_in * sig_out``: conv and linear MACs and weights) or linear term (``k * sig``: biases,
BN, activations, pooling). Evaluating the model is two small matrix products, vectorized over any
batch of count vectors.

Counting convention (the one of torch-pruning's ``count_ops_and_params``, per example in the
batch; only modules of exactly these types count, subclasses do not):
conv and linear: multiply-accumulates + one add per output element for a bias (torch-pruning adds
a linear layer's bias once per batch, so for batch 1 the two agree exactly and for tokens or
larger batches we count slightly more); BatchNorm/InstanceNorm/GroupNorm/LayerNorm: 2 per input
element when affine, else 1; ReLU/ReLU6/PReLU/ELU/LeakyReLU/GELU: 1 per output element; pooling:
1 per input element; Upsample: 1 per output element. MultiheadAttention and recurrent layers are
not counted (their params are counted as constants). Params: every parameter of the model; those
of pruned layers follow their kept channels.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:  # pragma: no cover
    from gcnprune_fast.space._dependency import RawGroup
    from gcnprune_fast.space.tracing import Trace

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)
_ACT_TYPES = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU)
_POOL_TYPES = (nn.MaxPool1d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool2d, nn.MaxPool3d,
               nn.AvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d,
               nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool3d)


class CostModel:
    """FLOPs (MACs) and params as functions of kept counts per group.

    Built by ``build_cost_model``; use ``space.cost`` / ``space.cost_from_counts``.

    Args:
        num_groups: G.
        sizes: group sizes [G].

    Build with ``signature`` / ``add_quad`` / ``add_lin`` / ``add_const``, then ``finalize`` folds
    everything into ``value(x) = x^T Q x + b^T x + const`` for flops and for params.
    """

    def __init__(self, num_groups: int, sizes: Sequence[int]):
        self.num_groups = num_groups
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self._sig_rows: List[np.ndarray] = []
        self._sig_const: List[float] = []
        self._sig_index: Dict[tuple, int] = {}
        self._quad = {"flops": [], "params": []}  # (i, j, k)
        self._lin = {"flops": [], "params": []}  # (i, k)
        self._const = {"flops": 0.0, "params": 0.0}
        self.notes: List[str] = []

    # -- building ---------------------------------------------------------------------------
    def signature(self, key, total: int, members: Dict[int, int]) -> int:
        """Index of the signature of a channel dim with ``total`` channels, of which
        ``members[g]`` belong to group g (the rest are fixed)."""
        k = (key, int(total))
        if k in self._sig_index:
            return self._sig_index[k]
        row = np.zeros(self.num_groups, dtype=np.float64)
        fixed = float(total)
        if sum(members.values()) > total:
            self.notes.append(f"dimension {key} has more grouped channels than its size; counted fixed")
            members = {}
        for g, n in members.items():
            row[g] += n / self.sizes[g]  # n channels of the dim per size_g channels of group g
            fixed -= n
        self._sig_rows.append(row)
        self._sig_const.append(fixed)
        self._sig_index[k] = len(self._sig_rows) - 1
        return self._sig_index[k]

    def add_quad(self, what: str, i: int, j: int, k: float):
        if k:
            self._quad[what].append((i, j, float(k)))

    def add_lin(self, what: str, i: int, k: float):
        if k:
            self._lin[what].append((i, float(k)))

    def add_const(self, what: str, k: float):
        self._const[what] += float(k)

    def finalize(self):
        """Fold the terms into a quadratic form over the counts x [G]:
        ``value = x^T Q x + b^T x + const`` (sig = A x + c substituted), for flops and params."""
        s = len(self._sig_rows)
        A = np.stack(self._sig_rows) if s else np.zeros((0, self.num_groups))  # [S, G]
        c = np.asarray(self._sig_const, dtype=np.float64)  # [S]
        self._forms = {}
        for what in ("flops", "params"):
            Q = np.zeros((self.num_groups, self.num_groups))
            b = np.zeros(self.num_groups)
            const = self._const[what]
            for i, k in self._lin[what]:
                b += k * A[i]
                const += k * c[i]
            for i, j, k in self._quad[what]:
                # k (A_i x + c_i)(A_j x + c_j)
                Q += k * np.outer(A[i], A[j])
                b += k * (c[j] * A[i] + c[i] * A[j])
                const += k * c[i] * c[j]
            Q = 0.5 * (Q + Q.T)
            self._forms[what] = (Q, b, float(const))
        # stacked for one matmul: [G, 2G] and [2]
        self._Q_both = np.concatenate([self._forms["flops"][0], self._forms["params"][0]], axis=1)
        self._b_both = np.stack([self._forms["flops"][1], self._forms["params"][1]], axis=1)  # [G, 2]
        self._c_both = np.array([self._forms["flops"][2], self._forms["params"][2]])
        self._t_Q = torch.from_numpy(self._Q_both)  # [G, 2G]
        self._t_b = torch.from_numpy(self._b_both)  # [G, 2]
        self._t_c = torch.from_numpy(self._c_both)  # [2]

    # -- evaluating -------------------------------------------------------------------------
    def evaluate(self, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """counts [..., G] (int or float) -> (flops [...], params [...]) float64."""
        G = self.num_groups
        x = counts.to(torch.float64)
        xq = x @ self._t_Q  # [..., 2G]
        quad = torch.stack([(xq[..., :G] * x).sum(-1), (xq[..., G:] * x).sum(-1)], dim=-1)
        out = quad + x @ self._t_b + self._t_c  # [..., 2]
        return out[..., 0], out[..., 1]

    def evaluate_one(self, counts: np.ndarray) -> np.ndarray:
        """One count vector [G] (numpy) -> array [2] float64 (flops, params): fast single-call path."""
        x = counts.astype(np.float64, copy=False)
        G = self.num_groups
        return (x @ self._Q_both).reshape(2, G) @ x + (x @ self._b_both + self._c_both)


def build_cost_model(trace: "Trace", raws: Sequence["RawGroup"], sizes: Sequence[int]) -> CostModel:
    """The cost model of a traced network (``space.tracing.Trace``) whose groups are ``raws``
    (sizes ``sizes``), following the counting convention in this module's docstring.

    FLOPs come from the recorded module calls (their input/output shapes, per example in the
    batch), params from every parameter of the traced copy (each counted once)."""
    deps, records = trace.deps, trace.records
    model = trace.model
    G = len(sizes)
    cost = CostModel(G, list(sizes))
    members: Dict[Tuple[int, str], Dict[int, int]] = {}
    for g, raw in enumerate(raws):
        for d in raw.dims:
            for role in d.roles:
                members.setdefault((d.node_id, role), {})
                members[(d.node_id, role)][g] = members[(d.node_id, role)].get(g, 0) + len(d.local)
    module2node = deps.module_node_ids

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

    batch = trace.inputs[0].shape[0] if trace.inputs[0].dim() else 1
    for r in records:
        mod, typ, x, y = r["module"], type(r["module"]), r["input"], r.get("output")
        if x is None or y is None:
            continue
        if typ in _CONV_TYPES:
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
        elif typ in _NORM_TYPES or typ is nn.LayerNorm:
            if typ is nn.GroupNorm:
                total = mod.num_channels
            elif typ is nn.LayerNorm:
                total = mod.normalized_shape[-1]
            else:
                total = mod.num_features
            i = sig_of_module(mod, "out", total)
            affine = mod.elementwise_affine if typ is nn.LayerNorm else mod.affine
            cost.add_lin("flops", i, x.numel() / batch / total * (2 if affine else 1))
        elif typ in _ACT_TYPES or typ is nn.Upsample:
            i, per = sig_of_tensor(y)
            if i is None:
                cost.add_const("flops", y.numel() / batch)
            else:
                cost.add_lin("flops", i, per / batch)
        elif typ in _POOL_TYPES:
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
            if isinstance(mod, tuple(_CONV_TYPES)) and pname == "weight":
                k = math.prod(mod.kernel_size)
                i_out = sig_of_module(mod, "out", mod.out_channels)
                if mod.groups == mod.out_channels and mod.out_channels > 1:
                    cost.add_lin("params", i_out, k * (mod.in_channels // mod.groups))
                else:
                    i_in = sig_of_module(mod, "in", mod.in_channels)
                    cost.add_quad("params", i_in, i_out, k / mod.groups)
            elif isinstance(mod, tuple(_CONV_TYPES)) and pname == "bias":
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
            elif p in module2node:  # a bare nn.Parameter pruned along one dim
                nid = module2node[p]
                dim = deps.pruning_dims[nid] if deps.pruning_dims[nid] is not None else -1
                total = p.shape[dim]
                i = cost.signature((nid, "out"), total, members.get((nid, "out"), {}))
                cost.add_lin("params", i, p.numel() / total)
            else:
                cost.add_const("params", p.numel())
    cost.finalize()
    return cost
