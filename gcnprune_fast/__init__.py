"""gcnprune_fast: structured channel pruning for CNNs with graph convolution networks and RL.

Data flows one way: model + data -> features (ops.gap_stats) -> channel graphs (ops.knn_graph)
-> policy (methods) -> keep-masks -> surgery (space) -> fine-tune (training) -> export.

Main entry points::

    result = gcnprune_fast.prune(model, loader, flops=0.5)   # -> PruneResult
    gcnprune_fast.load_pruned(fresh_model, plan, state_dict)  # rebuild a saved pruned model
    gcnprune_fast.export_model(result.model, "model.pt", example_inputs, format="torchscript")
"""
__version__ = "0.1.0"

from gcnprune_fast import ops  # noqa: F401  (loads the native library, registers the ops)

# The heavier layers are imported on first use so that `import gcnprune_fast` stays cheap and
# the ops can be used without torchvision / torch-pruning.
_LAZY = {
    "prune": ("gcnprune_fast.api", "prune"),
    "PruneResult": ("gcnprune_fast.api", "PruneResult"),
    "PruningSpace": ("gcnprune_fast.space", "PruningSpace"),
    "load_pruned": ("gcnprune_fast.space", "load_pruned"),
    "export_model": ("gcnprune_fast.export", "export_model"),
    "models": ("gcnprune_fast.models", None),
}

__all__ = ["ops", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gcnprune_fast' has no attribute {name!r}")
