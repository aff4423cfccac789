"""GCN agents of method A: one 2-layer GCN + linear head per pruning group, all groups at once.

All groups' channels are the nodes of ONE block-diagonal graph (rows ordered by group, group g
occupying rows ``offsets[g]:offsets[g+1]``), so each GCN layer is one ``ops.spmm`` over every
layer of the network plus one *grouped* matmul (the shared
:class:`~gcnprune_fast.methods.search.gcn.GCNLayer`). That keeps "separate weights per group"
(the paper's one agent per layer) as cheap as one shared GCN.

Per node c of group g (A = the normalized graph, X the node features [N, d]):

    H1 = relu(A X W1[g] + b1[g])                        [N, hidden]
    H2 = relu(A H1 W2[g] + b2[g])                       [N, hidden]
    logit_c = H2 . w_head[g] + X . w_skip[g] + bias[g]  keep-probability pi_c = sigmoid(logit_c)

The linear skip from the node features to the logit lets the warm start express a magnitude
ranking exactly (see :meth:`ChannelGCNPolicy.warm_start`); the GCN then learns corrections from
similarity/redundancy and the activation statistics. With ``shared=True`` W1, b1, W2, b2 and the
head are shared and a learned group embedding (dimension ``embed_dim``) is appended to X.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from gcnprune_fast import ops
from gcnprune_fast.methods.search.gcn import GCNLayer

__all__ = ["ChannelGCNPolicy"]


class ChannelGCNPolicy(nn.Module):
    """Keep-probability logits for every channel of every group.

    Args:
        group_sizes: C_g per group (rows of the graph are grouped in this order).
        in_dim: node feature dimension d.
        hidden: GCN width (32 in the paper's setting).
        shared: one GCN for all groups plus a group embedding, instead of one GCN per group.
        embed_dim: group-embedding size for ``shared=True``.
        use_gcn: False drops the GCN branch (an ablation: logits from the linear skip + bias only).
        generator: torch.Generator for a reproducible initialization.
    """

    def __init__(self, group_sizes: Sequence[int], in_dim: int, hidden: int = 32,
                 shared: bool = False, embed_dim: int = 8, use_gcn: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        sizes = torch.as_tensor(list(group_sizes), dtype=torch.long)
        if sizes.numel() == 0 or (sizes <= 0).any():
            raise ValueError(f"group_sizes must be positive, got {list(group_sizes)}")
        num_groups = sizes.numel()
        self.num_groups, self.in_dim, self.hidden, self.shared = num_groups, in_dim, hidden, shared
        self.use_gcn = use_gcn
        self.register_buffer("group_id", torch.repeat_interleave(torch.arange(num_groups), sizes),
                             persistent=False)
        per_group = None if shared else [int(s) for s in sizes]
        d1 = in_dim + (embed_dim if shared else 0)
        if shared:
            self.embed = nn.Parameter(torch.randn(num_groups, embed_dim, generator=generator) * 0.1)
        self.gcn1 = GCNLayer(d1, hidden, per_group, generator)
        self.gcn2 = GCNLayer(hidden, hidden, per_group, generator)
        # Zero head: the initial policy is exactly the warm start's (set by warm_start()); the head
        # gets gradients at once and the GCN layers follow.
        self.w_head = nn.Parameter(torch.zeros(1 if shared else num_groups, hidden))
        self.w_skip = nn.Parameter(torch.zeros(num_groups, in_dim))
        self.bias = nn.Parameter(torch.zeros(num_groups))

    def forward(self, graph: ops.CSRGraph, x: torch.Tensor, ax: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N] for node features x [N, d] over the normalized block-diagonal ``graph``.
        ``ax`` may pass a precomputed ``spmm(graph, x)`` (x is constant during a search)."""
        gid = self.group_id
        skip, bias = (x * self.w_skip[gid]).sum(1), self.bias[gid]
        if not self.use_gcn:
            return skip + bias
        if self.shared:
            x_in, ax = torch.cat([x, self.embed[gid]], dim=1), None
        else:
            x_in = x
        h = torch.relu(self.gcn1(graph, x_in, ax))
        h = torch.relu(self.gcn2(graph, h))
        head = self.w_head[0][None, :] if self.shared else self.w_head[gid]
        return (h * head).sum(1) + skip + bias

    @torch.no_grad()
    def warm_start(self, feature_index: int, thresholds: torch.Tensor, scale: float) -> None:
        """Start as a soft magnitude ranking: logit_c ~= scale * (x_c[feature_index] - t_g), so
        pi_c > 0.5 exactly for the channels whose (standardized) feature exceeds the group's
        threshold ``thresholds[g]`` (e.g. the channels that global L1 ranking keeps)."""
        self.w_skip.zero_()
        self.w_skip[:, feature_index] = scale
        self.bias.copy_(-scale * thresholds.to(self.bias.dtype))
