"""Property tests on a small net that has every coupling kind at once (residual add, concat,
depthwise conv, flatten -> linear): for any valid masks, masked evaluation equals surgery and the
cost model equals an independent counter."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gcnprune_fast.space import PruningSpace

torch.set_num_threads(1)


class MixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.res = nn.Conv2d(8, 8, 3, padding=1)  # residual branch (with bias)
        self.res_bn = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 12, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.dw_bn = nn.BatchNorm2d(12)
        self.side = nn.Conv2d(8, 5, 1)
        self.cat_bn = nn.BatchNorm2d(17)
        self.head = nn.Conv2d(17, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(x + self.res_bn(self.res(x)))
        a = F.relu6(self.dw_bn(self.dw(F.relu6(self.expand_bn(self.expand(x))))))
        y = F.relu(self.cat_bn(torch.cat([a, self.side(x)], 1)))
        y = F.adaptive_avg_pool2d(F.relu(self.head(y)), 2)
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    model = MixedNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model, PruningSpace(model, torch.randn(1, 3, 8, 8))


def test_mixed_groups(mixed):
    _, space = mixed
    sizes = sorted((g.root, g.size) for g in space.groups)
    # residual stream (stem + res), expand/dw, side, head; fc is protected
    assert sorted(s for _, s in sizes) == [5, 6, 8, 12]
    dw_group = next(g for g in space.groups if g.size == 12)
    assert "dw" in dw_group.producers and "expand" in dw_group.producers
    assert set(dw_group.consumers) == {"head"}


def test_mixed_group_graph(mixed):
    _, space = mixed
    stream, expand, side, head = (next(g.index for g in space.groups if name in g.producers)
                                  for name in ("stem", "expand", "side", "head"))
    assert "res" in space.groups[stream].producers and "dw" in space.groups[expand].producers
    # res reads and writes the stream (no self loop); dw belongs to the expand group; the
    # concat of expand/dw and side feeds head; fc's output is protected
    expected = {(stream, expand), (stream, side), (expand, head), (side, head)}
    directed = space.group_graph(symmetric=False)
    rows = torch.repeat_interleave(torch.arange(space.num_groups), directed.indptr.diff())
    assert set(zip(rows.tolist(), directed.indices.tolist())) == expected
    dense = space.group_graph().to_dense()
    assert torch.equal(dense, dense.T) and int(dense.sum()) == 2 * len(expected)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_masked_equals_pruned_any_masks(mixed, data):
    import torch_pruning as tp
    model, space = mixed
    masks = []
    for g in space.groups:
        bits = data.draw(st.lists(st.booleans(), min_size=g.size, max_size=g.size))
        m = torch.tensor(bits, dtype=torch.bool)
        if not m.any():
            m[data.draw(st.integers(0, g.size - 1))] = True
        masks.append(m)
    x = torch.randn(2, 3, 8, 8)
    pruned = space.prune(masks)
    with torch.no_grad():
        with space.masked(masks):
            y_masked = model(x)
        torch.testing.assert_close(y_masked, pruned(x), rtol=1e-4, atol=1e-5)
    flops, params = space.cost(masks)
    ref_flops, ref_params = tp.utils.count_ops_and_params(pruned, x[:1])
    assert flops == pytest.approx(ref_flops, rel=1e-9) and params == ref_params
    counts = torch.tensor([int(m.sum()) for m in masks])
    f, p = space.cost_from_counts(counts)
    assert f.item() == pytest.approx(flops) and p.item() == pytest.approx(params)
