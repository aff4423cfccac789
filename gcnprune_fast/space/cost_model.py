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
        dim_groups: maps ``(node_key, role)`` to ``{group: channels of that dim in the group}``.
        sizes: group sizes [G].
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
        """Freeze the terms into tensors (call once after building)."""
        s = len(self._sig_rows)
        self.A = torch.tensor(np.stack(self._sig_rows) if s else np.zeros((0, self.num_groups)),
                              dtype=torch.float64)  # [S, G]
        self.A_T = self.A.t().contiguous()
        self.c = torch.tensor(self._sig_const, dtype=torch.float64)  # [S]
        self._tensors = {}
        for what in ("flops", "params"):
            lin = np.zeros(s)
            for i, k in self._lin[what]:
                lin[i] += k
            q = self._quad[what]
            qi = torch.tensor([t[0] for t in q], dtype=torch.long)
            qj = torch.tensor([t[1] for t in q], dtype=torch.long)
            qk = torch.tensor([t[2] for t in q], dtype=torch.float64)
            self._tensors[what] = (torch.tensor(lin), qi, qj, qk, self._const[what])
        # numpy copies for fast single evaluations
        self._np = {w: (t[0].numpy(), t[1].numpy(), t[2].numpy(), t[3].numpy(), t[4])
                    for w, t in self._tensors.items()}
        self._A_T_np, self._c_np = self.A_T.numpy(), self.c.numpy()

    # -- evaluating -------------------------------------------------------------------------
    def evaluate(self, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """counts [..., G] (int or float) -> (flops [...], params [...]) float64."""
        x = counts.to(torch.float64)
        sig = x @ self.A_T + self.c  # [..., S]
        out = []
        for what in ("flops", "params"):
            lin, qi, qj, qk, const = self._tensors[what]
            val = sig @ lin + const
            if qk.numel():
                val = val + (sig[..., qi] * sig[..., qj]) @ qk
            out.append(val)
        return out[0], out[1]

    def evaluate_one(self, counts: np.ndarray) -> Tuple[float, float]:
        """One count vector [G] (numpy) -> (flops, params) as floats (fast path for single calls)."""
        sig = counts.astype(np.float64) @ self._A_T_np + self._c_np
        out = []
        for what in ("flops", "params"):
            lin, qi, qj, qk, const = self._np[what]
            out.append(float(sig @ lin + const + (sig[qi] * sig[qj]) @ qk))
        return out[0], out[1]
