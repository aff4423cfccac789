"""gcnprune_fast: structured channel pruning for CNNs with graph convolution networks and RL.

Data flows one way: model + data -> features (ops.gap_stats) -> channel graphs (ops.knn_graph)
-> policy (methods) -> masks -> surgery (space) -> fine-tune -> export.
"""
__version__ = "0.1.0"

from gcnprune_fast import ops  # noqa: F401  (loads the native library, registers the ops)
