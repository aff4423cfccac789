# PLACEHOLDER (being written): gap_stats, GapStats, GapAccumulator
from typing import NamedTuple
import torch
class GapStats(NamedTuple):
    gap: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    abs_mean: torch.Tensor
    zero_frac: torch.Tensor
    max: torch.Tensor
def gap_stats(x):
    raise NotImplementedError
class GapAccumulator:
    pass
