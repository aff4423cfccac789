"""The CSR graph type shared by the graph ops."""
from __future__ import annotations

from typing import NamedTuple

import torch


class CSRGraph(NamedTuple):
    """A sparse graph in compressed-sparse-row form.

    indptr:  int64 [R + 1], row r's entries are ``indices[indptr[r]:indptr[r+1]]``
    indices: int64 [nnz], column (neighbour) ids, sorted within each row
    values:  float [nnz], edge weights
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def to_dense(self, num_cols: int | None = None) -> torch.Tensor:
        """Dense [R, num_cols] matrix (for tests and small graphs)."""
        n = self.num_rows
        num_cols = n if num_cols is None else num_cols
        rows = torch.repeat_interleave(torch.arange(n, device=self.indptr.device),
                                       self.indptr.diff())
        out = torch.zeros(n, num_cols, dtype=self.values.dtype, device=self.values.device)
        out.index_put_((rows, self.indices), self.values, accumulate=True)
        return out

    def to(self, device) -> "CSRGraph":
        """The same graph on another device."""
        return CSRGraph(self.indptr.to(device), self.indices.to(device), self.values.to(device))
