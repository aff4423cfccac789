"""The pruning space in several threads at once (issue 11, item 1).

torch-pruning's index-mapping refresh used to be skipped by patching a module-level function for
the duration of a call: two overlapping calls could restore each other's patch, leaving it in place
for the life of the process, after which every concat model (DenseNet, GoogLeNet) was pruned with
stale index mappings. Nothing global may be patched now: surgery in several threads gives the same
models as sequential surgery, and concat models still prune correctly afterwards.
"""
import threading

import torch
import torch.nn as nn

from gcnprune_fast.space import PruningSpace
from helpers import half_masks


class _Inception(nn.Module):
    """Two branches concatenated (GoogLeNet-like)."""

    def __init__(self, cin, a, b):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, a, 1), nn.BatchNorm2d(a), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(cin, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x)], 1)


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.inc1 = _Inception(8, 6, 10)
        self.inc2 = _Inception(16, 12, 4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.inc2(self.inc1(self.stem(x)))
        return self.head(x.mean((2, 3)))


class DenseNetLike(nn.Module):
    """Every layer reads the concatenation of all previous outputs (DenseNet's dense block)."""

    def __init__(self, layers=4, growth=6):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        c = 8
        self.norms, self.convs = nn.ModuleList(), nn.ModuleList()
        for _ in range(layers):
            self.norms.append(nn.BatchNorm2d(c))
            self.convs.append(nn.Conv2d(c, growth, 3, padding=1))
            c += growth
        self.norm = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        feats = [self.stem(x)]
        for norm, conv in zip(self.norms, self.convs):
            feats.append(conv(torch.relu(norm(torch.cat(feats, 1)))))
        x = torch.relu(self.norm(torch.cat(feats, 1)))
        return self.head(x.mean((2, 3)))


def _randomize_bn(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _check_pruned_matches_masked(space, model, masks, x):
    pruned = space.prune(masks).eval()
    with torch.no_grad():
        out = pruned(x)
        with space.masked(masks):
            ref = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert space.cost(masks)[1] == sum(p.numel() for p in pruned.parameters())
    return pruned


def test_surgery_in_threads_then_concat_models_sequentially():
    torch.manual_seed(0)
    model = _randomize_bn(ConcatNet(), 1)
    x = torch.randn(2, 3, 12, 12)
    space = PruningSpace(model, x)
    masks = [half_masks(space, s) for s in range(4)]
    expected = [space.prune(m).state_dict() for m in masks]

    results, errors = {}, []
    barrier = threading.Barrier(8)

    def work(i):
        try:
            barrier.wait()
            for r in range(3):
                k = (i + r) % 4
                sd = space.prune(masks[k]).state_dict()
                results[(i, r)] = (k, sd)
                PruningSpace(model, x)  # tracing in parallel too
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 24
    for k, sd in results.values():
        assert sd.keys() == expected[k].keys()
        for name, v in sd.items():
            assert torch.equal(v, expected[k][name]), name

    # nothing leaked: concat models are still pruned correctly, one after the other
    for seed, net in enumerate([DenseNetLike(), DenseNetLike(layers=6, growth=4), ConcatNet()]):
        torch.manual_seed(seed)
        net = _randomize_bn(net, seed)
        xs = torch.randn(2, 3, 10, 10)
        sp = PruningSpace(net, xs)
        for s in range(2):
            _check_pruned_matches_masked(sp, net, half_masks(sp, 10 * seed + s), xs)


def test_no_global_torch_pruning_state_is_patched():
    import torch_pruning as tp
    before = {k: getattr(tp.dependency.index_mapping, k)
              for k in dir(tp.dependency.index_mapping) if not k.startswith("__")}
    import warnings
    filters, show = list(warnings.filters), warnings.showwarning
    torch.manual_seed(0)
    net = _randomize_bn(DenseNetLike(), 0)
    x = torch.randn(1, 3, 8, 8)
    space = PruningSpace(net, x)
    _check_pruned_matches_masked(space, net, half_masks(space, 0), x)
    after = {k: getattr(tp.dependency.index_mapping, k)
             for k in dir(tp.dependency.index_mapping) if not k.startswith("__")}
    assert after == before
    assert warnings.filters == filters and warnings.showwarning is show
