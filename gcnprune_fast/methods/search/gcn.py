"""A GCN layer usable at both levels: over the block-diagonal channel graph of every layer (one
weight matrix per pruning group, channel-gcn) and over the network graph of the groups (one shared
weight, a network-level aggregator).

    GCNLayer(x) = A_norm X W (+ b)       A_norm from ops.gcn_norm, product by ops.spmm

Per-group weights keep "one agent per layer" as cheap as one shared layer: the rows of X are
ordered by group, scattered into a padded [G, C_max, d] tensor and multiplied by the stacked
weights [G, d, h] with one ``bmm``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from gcnprune_fast import ops

__all__ = ["GroupedLinear", "GCNLayer", "uniform_parameter"]


def uniform_parameter(*shape: int, fan_in: int, generator: Optional[torch.Generator]) -> nn.Parameter:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialization from ``generator`` (reproducible)."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound, generator=generator))


class GroupedLinear(nn.Module):
    """x [N, d] -> [N, h] with the weights of each row's group.

    Args:
        in_dim, out_dim: d and h.
        group_sizes: rows per group, in row order (one weight per group); None = one shared weight.
        generator: for a reproducible initialization (U(+-1/sqrt(d)) weights, zero bias).
    """

    def __init__(self, in_dim: int, out_dim: int, group_sizes: Optional[Sequence[int]] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.shared = group_sizes is None
        n_w = 1
        if not self.shared:
            sizes = torch.as_tensor(list(group_sizes), dtype=torch.long)
            if sizes.numel() == 0 or (sizes <= 0).any():
                raise ValueError(f"group_sizes must be positive, got {list(group_sizes)}")
            n_w = sizes.numel()
            offsets = torch.zeros(n_w + 1, dtype=torch.long)
            offsets[1:] = torch.cumsum(sizes, 0)
            group_id = torch.repeat_interleave(torch.arange(n_w), sizes)
            local = torch.arange(int(offsets[-1])) - offsets[group_id]
            self.c_max = int(sizes.max())
            self.register_buffer("pad_index", group_id * self.c_max + local, persistent=False)
        self.num_weights = n_w
        self.weight = uniform_parameter(n_w, in_dim, out_dim, fan_in=in_dim, generator=generator)
        self.bias = nn.Parameter(torch.zeros(n_w, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return x @ self.weight[0] + self.bias[0]
        g = self.num_weights
        padded = x.new_zeros(g * self.c_max, x.shape[1]).index_copy(0, self.pad_index, x)
        out = torch.bmm(padded.view(g, self.c_max, -1), self.weight) + self.bias[:, None, :]
        return out.reshape(g * self.c_max, -1).index_select(0, self.pad_index)


class GCNLayer(nn.Module):
    """``linear(spmm(graph, x))`` over a normalized CSR graph (see :class:`GroupedLinear`)."""

    def __init__(self, in_dim: int, out_dim: int, group_sizes: Optional[Sequence[int]] = None,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.linear = GroupedLinear(in_dim, out_dim, group_sizes, generator)

    def forward(self, graph: ops.CSRGraph, x: torch.Tensor,
                ax: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``ax`` may pass a precomputed ``spmm(graph, x)`` (x constant across calls)."""
        return self.linear(ops.spmm(graph, x) if ax is None else ax)
