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

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

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

    Built by ``PruningSpace``; use ``space.cost`` / ``space.cost_from_counts``.

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
