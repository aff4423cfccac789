"""Small shared model-level builders for the tests (importable because pytest puts tests/ on
sys.path). The op-level ones -- markers, devices, dtypes, tolerances, sample inputs, random CSR
graphs -- are in tests/conftest.py."""
import torch

from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace


def random_batches(n=32, bs=16, size=16, seed=0, num_classes=10):
    """A list-of-batches "loader" of n random 3-channel images with random labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]


def simple_cnn_space(**space_options):
    """PruningSpace over a freshly seeded simple_cnn in eval mode, 16x16 inputs."""
    torch.manual_seed(0)
    model = get_model("simple_cnn").eval()
    return PruningSpace(model, torch.randn(2, 3, 16, 16), **space_options)


def half_masks(space, seed=0):
    """Keep-masks keeping a random half (at least one channel) of every group."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for g in space.groups:
        m = torch.zeros(g.size, dtype=torch.bool)
        m[torch.randperm(g.size, generator=gen)[:max(1, g.size // 2)]] = True
        masks.append(m)
    return masks
