"""The pruning space: coupled channel groups, keep-masks, masked evaluation, the cost model,
surgery and plans. ``PruningSpace(model, example_inputs)`` is the entry point."""
from gcnprune_fast.space.pruning_space import (ChannelGroup, PruningSpace, load_pruned,
                                                structure_fingerprint)

__all__ = ["PruningSpace", "ChannelGroup", "load_pruned", "structure_fingerprint"]
