"""Latency as a budget: a latency table measured on the target device and a latency cost model
over the pruning space (``latency_from_counts(counts [..., G]) -> seconds [...]``).

``build_latency_model(space, device=, batch=, threads=, timer=, cache_dir=)`` measures (or reads
from the on-disk cache) every prunable layer at the widths a search can choose and the end-to-end
time of the unpruned model; ``measure_latency(model, example, ...)`` times a (compact) model the
way it is deployed. See ``latency/table.py`` and ``latency/measure.py``.
"""
from gcnprune_fast.latency.measure import Timer, device_name, runner_path, time_model
from gcnprune_fast.latency.report import latency_report
from gcnprune_fast.latency.table import (LatencyCache, LatencyModel, LayerSpec, build_latency_model,
                                         default_cache_dir, layer_specs)

__all__ = ["Timer", "device_name", "runner_path", "time_model", "LatencyCache", "LatencyModel",
           "LayerSpec", "build_latency_model", "default_cache_dir", "layer_specs", "latency_report"]
