"""Report entries of a latency-budgeted (or latency-measured) pruning: predicted and measured
latency before and after, the speed-ups next to the FLOPs ratio, and how the times were taken."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from gcnprune_fast.latency.measure import time_model
from gcnprune_fast.latency.table import LatencyModel

__all__ = ["latency_report"]


def latency_report(lm: LatencyModel, compact: nn.Module, counts, *, flops_ratio: float,
                   measure_after: bool = True, macs_after: Optional[float] = None) -> Dict[str, Any]:
    """Entries for ``PruneResult.report``: ``latency_before_ms`` (measured end-to-end, unpruned),
    ``latency_predicted_ms`` (the latency model at the kept counts), ``latency_after_ms`` (the
    compact model timed the same way as the unpruned one, when ``measure_after``), the speed-ups,
    ``latency_prediction_error`` ((predicted - measured) / measured), ``latency_timed_by``
    ("gcnprune_run": the C++ runner in a fresh process; "torch": in-process) and the table's
    device / torch / threads / batch / clock."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    before = float(lm.base_latency)
    predicted = float(lm.latency_from_counts(counts))
    out: Dict[str, Any] = {
        "latency_before_ms": before * 1e3,
        "latency_predicted_ms": predicted * 1e3,
        "latency_speedup_predicted": before / predicted if predicted > 0 else None,
        "latency_flops_ratio": float(flops_ratio),
        "latency_flops_speedup": 1.0 / float(flops_ratio) if flops_ratio > 0 else None,
        "latency_table": {**lm.summary()},
    }
    if measure_after:
        example = torch.zeros(lm.example_shape, device=lm.device)
        work = compact
        first = next(iter(compact.parameters()), None)
        if first is not None and first.device != torch.device(lm.device):
            import copy
            work = copy.deepcopy(compact).to(lm.device)
        after, timed_by = time_model(work.eval(), example, timer=lm.timer, threads=lm.meta["threads"],
                                     runtime=lm.runtime, macs=macs_after)
        out.update({
            "latency_after_ms": after * 1e3,
            "latency_speedup_measured": before / after if after > 0 else None,
            "latency_prediction_error": (predicted - after) / after if after > 0 else None,
            "latency_timed_by": timed_by,
        })
        if timed_by != lm.timed_by:
            out["latency_note"] = (f"the unpruned model was timed by {lm.timed_by}, the pruned one "
                                   f"by {timed_by}")
    else:
        out["latency_timed_by"] = lm.timed_by
    return out
