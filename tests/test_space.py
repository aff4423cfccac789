"""PruningSpace: groups, masked evaluation == surgery, cost model vs an independent counter,
plans, bad input, and the user's model left untouched."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from gcnprune_fast.models import get_model
from gcnprune_fast.space import ChannelGroup, PruningSpace, load_pruned

torch.set_num_threads(1)


def _randomize_bn(model):
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model


def _build(name):
    if name == "tv_resnet18":
        return torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)
    return get_model(name), torch.randn(2, 3, 32, 32)


def _random_masks(space, p=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for g in space.groups:
        m = torch.rand(g.size, generator=gen) < p
        m[torch.randint(g.size, (1,), generator=gen)] = True  # never empty
        masks.append(m)
    return masks


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m), m.training) for n, m in model.named_modules()],
            {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()})


def _assert_unchanged(model, snap):
    state, structure, hooks = snap
    now = model.state_dict()
    assert state.keys() == now.keys()
    for k in state:
        assert torch.equal(state[k], now[k]), k
    assert [(n, type(m), m.training) for n, m in model.named_modules()] == structure
    assert {n: (len(m._forward_hooks), len(m._forward_pre_hooks))
            for n, m in model.named_modules()} == hooks


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    model = _randomize_bn(get_model("resnet20")).eval()
    return model, PruningSpace(model, torch.randn(1, 3, 32, 32))


def test_resnet20_groups(r20):
    model, space = r20
    # 3 residual streams + one group per block's conv1; the classifier is protected.
    assert space.num_groups == 12
    assert all(isinstance(g, ChannelGroup) for g in space.groups)
    assert [g.index for g in space.groups] == list(range(12))
    residual = [g for g in space.groups if g.name.startswith("residual")]
    assert sorted(g.size for g in residual) == [16, 32, 64]
    stream1 = next(g for g in residual if g.size == 16)
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stream1.producers)
    assert "layer2.0.shortcut.0" in stream1.consumers and "bn1" in stream1.layers
    g = next(g for g in space.groups if g.root == "layer2.1.conv1")
    assert g.name == "layer2.1.conv1" and g.size == 32 and g.consumers == ("layer2.1.conv2",)
    assert "fc" not in [g.root for g in space.groups]
    # MACs 41.2M (+ BN, ReLU and pooling element ops, the torch-pruning counting convention)
    assert space.base_flops == 41_407_114 and space.base_params == 272_474


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "mobilenet_v2", "simple_cnn", "tv_resnet18"])
def test_masked_equals_pruned_and_cost_matches_counter(name):
    import torch_pruning as tp
    torch.manual_seed(0)
    model, x = _build(name)
    model = _randomize_bn(model).eval()
    snap = _snapshot(model)
    space = PruningSpace(model, x[:1])
    masks = _random_masks(space, p=0.6, seed=len(name))
    pruned = space.prune(masks).eval()
    with torch.no_grad():
        with space.masked(masks) as masked_model:
            assert masked_model is model
            y_masked = model(x)
        y_pruned = pruned(x)
    torch.testing.assert_close(y_masked, y_pruned, rtol=1e-4, atol=1e-5)
    flops, params = space.cost(masks)
    ref_flops, ref_params = tp.utils.count_ops_and_params(pruned, x[:1])
    assert flops == pytest.approx(ref_flops, rel=1e-6) and params == ref_params
    assert (space.base_flops, space.base_params) == pytest.approx(
        tp.utils.count_ops_and_params(model, x[:1]), rel=1e-6)
    _assert_unchanged(model, snap)


def test_float_masks_give_taylor_gradients(r20):
    model, space = r20
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y0 = model(x)
    masks = [torch.ones(g.size, requires_grad=True) for g in space.groups]
    with space.masked(masks):
        y = model(x)
    torch.testing.assert_close(y, y0)
    y.square().sum().backward()
    assert all(m.grad is not None and m.grad.shape == (g.size,) for m, g in zip(masks, space.groups))
    assert all(m.grad.abs().sum() > 0 for m in masks)
    # a second forward/backward in the same context works (masks are applied per call)
    bool_masks = _random_masks(space, seed=3)
    float_masks = [m.float() for m in bool_masks]
    with torch.no_grad():
        with space.masked(bool_masks):
            yb = model(x)
        with space.masked(float_masks):
            yf = model(x)
    torch.testing.assert_close(yb, yf)


def test_hooks_removed_on_exception(r20):
    model, space = r20
    snap = _snapshot(model)
    with pytest.raises(KeyError):
        with space.masked(space.full_masks()):
            raise KeyError("boom")
    with pytest.raises(KeyError):
        with space.feature_hooks(lambda g, a: None):
            raise KeyError("boom")
    _assert_unchanged(model, snap)


def test_feature_hooks(r20):
    model, space = r20
    seen = {}
    with torch.no_grad(), space.feature_hooks(lambda g, a: seen.setdefault(g, a)):
        model(torch.randn(3, 3, 32, 32))
    assert sorted(seen) == list(range(space.num_groups))
    for g in space.groups:
        a = seen[g.index]
        assert a.shape[0] == 3 and a.shape[1] == g.size
        assert g.feature_activation in ("consumed", "post-activation", "pre-activation")
        if g.feature_activation == "consumed":
            assert (a >= 0).all()  # block outputs are after the final ReLU
    stream = next(g for g in space.groups if g.name.startswith("residual") and g.size == 16)
    assert stream.feature_activation == "consumed" and stream.feature_module in (
        "relu", "layer1.0.relu2", "layer1.1.relu2", "layer1.2.relu2")
    inner = next(g for g in space.groups if g.root == "layer1.0.conv1")
    assert inner.feature_module == "layer1.0.relu1" and inner.feature_activation == "consumed"
    # reading the feature equals what the consumer conv sees
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        seen.clear()
        with space.feature_hooks(lambda g, a: seen.setdefault(g, a)):
            model(x)
        expect = F.relu(model.layer1[0].bn1(model.layer1[0].conv1(F.relu(model.bn1(model.conv1(x))))))
    torch.testing.assert_close(seen[inner.index], expect)


def test_feature_module_respects_inplace_ops():
    # torchvision's Bottleneck: bn2 -> shared in-place ReLU; bn3 += identity in place.
    model = torchvision.models.resnet50(num_classes=10).eval()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32))
    inner = next(g for g in space.groups if g.root == "layer1.0.conv2")
    assert inner.feature_module == "layer1.0.bn2" and inner.feature_activation == "pre-activation"
    stream = next(g for g in space.groups if g.size == 256)
    assert stream.feature_module.startswith("layer1.") and "bn" not in stream.feature_module


def test_feature_module_vgg_is_post_relu():
    space = PruningSpace(get_model("vgg16_bn").eval(), torch.randn(1, 3, 32, 32))
    g = next(g for g in space.groups if g.root == "features.0")
    assert g.feature_module == "features.2" and g.feature_activation == "consumed"


def test_cost_matches_torch_pruning_counter(r20):
    import torch_pruning as tp
    model, space = r20
    x = torch.randn(1, 3, 32, 32)
    masks = _random_masks(space, p=0.4, seed=5)
    flops, params = space.cost(masks)
    ref_flops, ref_params = tp.utils.count_ops_and_params(space.prune(masks), x)
    assert flops == pytest.approx(ref_flops, rel=1e-6) and params == ref_params
    counts = torch.stack([torch.tensor([int(m.sum()) for m in masks]),
                          torch.tensor([g.size for g in space.groups])])
    f, p = space.cost_from_counts(counts)
    assert f.dtype == torch.float64 and f.shape == (2,)
    assert f[0].item() == pytest.approx(flops) and p[0].item() == pytest.approx(params)
    assert f[1].item() == pytest.approx(space.base_flops) and p[1].item() == space.base_params
    f3, _ = space.cost_from_counts(counts.view(2, 1, -1).expand(2, 3, -1))
    assert f3.shape == (2, 3)
    with pytest.raises(ValueError, match="counts must have shape"):
        space.cost_from_counts(torch.ones(5, dtype=torch.long))


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 1)
        self.bn = nn.BatchNorm2d(11)
        self.c = nn.Conv2d(11, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = F.adaptive_avg_pool2d(F.relu(self.c(y)), 4)
        return self.fc(torch.flatten(y, 1))


def test_concat_and_flatten_linear():
    import torch_pruning as tp
    model = _randomize_bn(_Concat()).eval()
    x = torch.randn(2, 3, 8, 8)
    space = PruningSpace(model, x[:1])
    assert sorted(g.root for g in space.groups) == ["a", "b", "c"]
    masks = _random_masks(space, p=0.5, seed=4)
    pruned = space.prune(masks)
    with torch.no_grad(), space.masked(masks):
        torch.testing.assert_close(model(x), pruned(x), rtol=1e-4, atol=1e-5)
    f, p = space.cost(masks)
    rf, rp = tp.utils.count_ops_and_params(pruned, x[:1])
    assert f == pytest.approx(rf, rel=1e-6) and p == rp
    c = next(g for g in space.groups if g.root == "c")
    assert pruned.fc.in_features == 16 * int(masks[c.index].sum())


def test_weight_stats_and_filter_matrix(r20):
    model, space = r20
    stats = space.weight_stats()
    assert len(stats) == space.num_groups
    g = next(g for g in space.groups if g.root == "layer1.0.conv1")
    w = model.layer1[0].conv1.weight.detach()
    torch.testing.assert_close(stats[g.index]["l1"], w.abs().sum((1, 2, 3)))
    torch.testing.assert_close(stats[g.index]["l2"], w.flatten(1).norm(dim=1))
    torch.testing.assert_close(stats[g.index]["bn_gamma"], model.layer1[0].bn1.weight.detach().abs())
    fm = space.filter_matrix(g.index)
    assert fm.shape == (16, 16 * 9)
    torch.testing.assert_close(fm, w.flatten(1))
    stream = next(g for g in space.groups if g.name.startswith("residual") and g.size == 16)
    # stem conv (27) + three conv2 (144 each) filters
    assert space.filter_matrix(stream.index).shape == (16, 27 + 3 * 144)
    with pytest.raises(ValueError, match="group index"):
        space.filter_matrix(99)


def test_mask_validation(r20):
    model, space = r20
    full = space.full_masks()
    assert all(m.dtype == torch.bool and m.all() for m in full)
    with pytest.raises(ValueError, match="expected 12 masks"):
        space.cost(full[:-1])
    with pytest.raises(TypeError, match="bool"):
        space.prune([m.float() for m in full])
    with pytest.raises(TypeError, match="list of 12 tensors"):
        space.prune(torch.ones(12, dtype=torch.bool))
    bad = list(full)
    bad[3] = torch.ones(full[3].numel() + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mask 3 .* must have shape"):
        space.plan(bad)
    bad[3] = torch.zeros_like(full[3])
    with pytest.raises(ValueError, match="keeps zero channels"):
        space.prune(bad)
    with pytest.raises(ValueError, match="keeps zero channels"):
        space.plan(bad)


def test_round_to_and_min_channels():
    model = get_model("resnet20").eval()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32), round_to=4, min_channels=6)
    assert all(space.min_keep(g.index) == 8 for g in space.groups)
    masks = _random_masks(space, p=0.5, seed=7)
    if all(space.valid_count(i, int(m.sum())) for i, m in enumerate(masks)):
        masks[0][:] = False
        masks[0][:5] = True
    with pytest.raises(ValueError, match="round_to=4"):
        space.prune(masks)
    rounded = space.round_masks(masks, scores=[torch.arange(g.size, dtype=torch.float) for g in space.groups])
    for m, r, g in zip(masks, rounded, space.groups):
        k = int(r.sum())
        assert (k % 4 == 0 or k == g.size) and k >= 8 and bool((r | ~m).all())  # only adds
    pruned = space.prune(rounded)
    assert all(c.out_channels % 4 == 0 for c in pruned.modules() if isinstance(c, nn.Conv2d))
    with pytest.raises(ValueError, match="round_to"):
        PruningSpace(model, torch.randn(1, 3, 32, 32), round_to=0)


def test_plan_roundtrip_and_load_pruned(r20, tmp_path):
    model, space = r20
    masks = _random_masks(space, p=0.5, seed=11)
    pruned = space.prune(masks)
    plan = space.plan(masks)
    plan = json.loads(json.dumps(plan))
    assert plan["groups"][0]["kept"] == torch.nonzero(masks[0]).flatten().tolist()
    torch.save(pruned.state_dict(), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    fresh = get_model("resnet20")
    rebuilt = load_pruned(fresh, plan, state).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned.eval()(x))
    assert fresh.layer1[0].conv1.out_channels == 16  # the fresh original is not modified
    with pytest.raises(ValueError, match="fingerprint"):
        load_pruned(get_model("resnet20", num_classes=5), plan, state)
    with pytest.raises(ValueError, match="plan is for"):
        load_pruned(get_model("simple_cnn"), plan)
    with pytest.raises(ValueError, match="state_dict does not fit"):
        load_pruned(get_model("resnet20"), plan, get_model("resnet20").state_dict())
    with pytest.raises(ValueError, match="not a pruning plan"):
        load_pruned(fresh, {"groups": []})


def test_bad_inputs():
    model = get_model("simple_cnn").eval()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"shape \(1, 1, 32, 32\)"):
        PruningSpace(model, torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="example_inputs"):
        PruningSpace(model, [[1, 2]])
    with pytest.raises(TypeError, match="nn.Module"):
        PruningSpace(lambda x: x, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="'features.99' is not a submodule"):
        PruningSpace(model, torch.randn(1, 3, 32, 32), ignored_layers=["features.99"])
    with pytest.raises(ValueError, match="Conv2d object is not a submodule"):
        PruningSpace(model, torch.randn(1, 3, 32, 32), ignored_layers=[nn.Conv2d(3, 3, 1)])
    with pytest.raises(ValueError, match="no prunable channel groups"):
        PruningSpace(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="no prunable channel groups"):
        PruningSpace(nn.Sequential(nn.ReLU()), torch.randn(1, 3))
    _assert_unchanged(model, snap)


def test_ignored_layers_by_module_and_name():
    model = get_model("simple_cnn").eval()
    base = PruningSpace(model, torch.randn(1, 3, 32, 32))
    s1 = PruningSpace(model, torch.randn(1, 3, 32, 32), ignored_layers=[model.features[0]])
    s2 = PruningSpace(model, torch.randn(1, 3, 32, 32), ignored_layers="features.0")
    assert base.num_groups == 4 and s1.num_groups == s2.num_groups == 3
    assert "features.0" not in [g.root for g in s1.groups]
    assert s1.base_flops == base.base_flops


def test_model_in_train_mode_is_untouched():
    model = get_model("resnet20").train()
    snap = _snapshot(model)
    space = PruningSpace(model, torch.randn(2, 3, 32, 32))
    pruned = space.prune(_random_masks(space, seed=1))
    assert pruned.training and all(m.training for m in pruned.modules())
    _assert_unchanged(model, snap)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_masked_equals_pruned():
    model = _randomize_bn(get_model("resnet20")).eval().cuda()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    space = PruningSpace(model, x[:1])
    masks = [m.cuda() for m in _random_masks(space, seed=9)]
    pruned = space.prune(masks)
    with torch.no_grad(), space.masked(masks):
        torch.testing.assert_close(model(x), pruned(x), rtol=1e-4, atol=1e-4)
    assert space.cost(masks) == space.cost([m.cpu() for m in masks])
    assert all(s["l1"].shape == (g.size,) for s, g in zip(space.weight_stats(), space.groups))


# ---------------------------------------------------------------------- group offsets and graph
def _edges(graph):
    """Directed edge set {(row, col)} of a CSRGraph."""
    rows = torch.repeat_interleave(torch.arange(graph.num_rows), graph.indptr.diff())
    return set(zip(rows.tolist(), graph.indices.tolist()))


def _check_csr(graph, num_groups):
    assert graph.indptr.dtype == graph.indices.dtype == torch.int64
    assert graph.values.dtype == torch.float32 and bool((graph.values == 1).all())
    assert graph.num_rows == num_groups and graph.indptr[0] == 0 and graph.indptr[-1] == graph.nnz
    for r in range(num_groups):
        cols = graph.indices[graph.indptr[r]:graph.indptr[r + 1]]
        assert bool((cols.diff() > 0).all()), f"row {r}: columns not sorted / duplicated"
        assert r not in cols.tolist(), f"row {r}: self loop"
    assert bool(((graph.indices >= 0) & (graph.indices < num_groups)).all())


def _by_root(space, root):
    return next(g.index for g in space.groups if g.root == root or root in g.producers)


def test_group_offsets(r20):
    _, space = r20
    offsets = space.group_offsets()
    sizes = [g.size for g in space.groups]
    assert offsets.dtype == torch.int64 and offsets.shape == (space.num_groups + 1,)
    assert offsets[0] == 0 and offsets.diff().tolist() == sizes
    assert offsets[-1] == torch.cat(space.full_masks()).numel() == sum(sizes)
    # row g of the stacked filters of group g start at offsets[g]
    stacked = torch.cat([space.filter_matrix(g.index)[:, :1] for g in space.groups])
    g = space.num_groups // 2
    torch.testing.assert_close(stacked[offsets[g]:offsets[g + 1]], space.filter_matrix(g)[:, :1])
    offsets[0] = 99  # a fresh tensor per call
    assert space.group_offsets()[0] == 0


def test_group_graph_resnet20_residual_and_shortcuts(r20):
    _, space = r20
    stream = {g.size: g.index for g in space.groups if g.name.startswith("residual")}
    s1, s2, s3 = stream[16], stream[32], stream[64]
    inner = {f"{i}.{j}": _by_root(space, f"layer{i}.{j}.conv1") for i in (1, 2, 3) for j in (0, 1, 2)}
    expected = set()
    for j in range(3):
        expected |= {(inner[f"1.{j}"], s1), (inner[f"2.{j}"], s2), (inner[f"3.{j}"], s3)}  # conv2
    expected |= {(s1, inner[f"1.{j}"]) for j in range(3)} | {(s1, inner["2.0"]), (s1, s2)}
    expected |= {(s2, inner["2.1"]), (s2, inner["2.2"]), (s2, inner["3.0"]), (s2, s3)}
    expected |= {(s3, inner["3.1"]), (s3, inner["3.2"])}
    directed = space.group_graph(symmetric=False)
    _check_csr(directed, space.num_groups)
    assert _edges(directed) == expected
    sym = space.group_graph()
    _check_csr(sym, space.num_groups)
    assert _edges(sym) == expected | {(b, a) for a, b in expected}
    assert sym.nnz == len(expected | {(b, a) for a, b in expected})  # duplicates merged
    dense = sym.to_dense()
    assert torch.equal(dense, dense.T)
    with pytest.raises(TypeError, match="symmetric"):
        space.group_graph(symmetric="yes")


def test_group_graph_vgg_is_a_chain():
    model = get_model("vgg16_bn").eval()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    order = [_by_root(space, n) for n in convs]
    assert sorted(order) == list(range(space.num_groups)) == sorted(range(13))
    chain = set(zip(order[:-1], order[1:]))
    assert _edges(space.group_graph(symmetric=False)) == chain
    assert _edges(space.group_graph()) == chain | {(b, a) for a, b in chain}
    # an ignored layer in the chain: the groups on both sides are joined through it
    ignored = PruningSpace(model, torch.randn(1, 3, 32, 32), ignored_layers=[convs[2]])
    order = [_by_root(ignored, n) for n in convs[:2] + convs[3:]]
    assert ignored.num_groups == 12
    assert _edges(ignored.group_graph(symmetric=False)) == set(zip(order[:-1], order[1:]))


def test_group_graph_mobilenet_v2_depthwise():
    model = get_model("mobilenet_v2").eval()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32))
    directed = space.group_graph(symmetric=False)
    _check_csr(directed, space.num_groups)
    edges = _edges(directed)
    dw = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    for name in dw:  # each depthwise conv sits in the group of its input (no group of its own)
        assert sum(name in g.producers for g in space.groups) == 1
    stem = _by_root(space, "features.0.0")
    p1 = _by_root(space, "features.1.conv.1")  # block 1: depthwise + projection
    e2 = _by_root(space, "features.2.conv.0.0")  # block 2: expand -> depthwise -> project
    assert "features.1.conv.0.0" in space.groups[stem].producers  # depthwise joins the stem group
    assert "features.2.conv.1.0" in space.groups[e2].producers
    s24 = _by_root(space, "features.2.conv.2")  # residual stream of blocks 2-3
    e3 = _by_root(space, "features.3.conv.0.0")
    assert s24 == _by_root(space, "features.3.conv.2") and space.groups[s24].size == 24
    assert {(stem, p1), (p1, e2), (e2, s24), (s24, e3), (e3, s24)} <= edges
    assert (stem, e2) not in edges and (p1, s24) not in edges  # only direct reads
    # every expand group is read by exactly the projection after its depthwise conv
    checked = 0
    for g in space.groups:
        for dwn in (p for p in g.producers if p in dw):
            block = ".".join(dwn.split(".")[:2])  # features.k
            proj = block + (".conv.2" if dwn.endswith("conv.1.0") else ".conv.1")
            assert {h for (a, h) in edges if a == g.index} == {_by_root(space, proj)}
            checked += 1
    assert checked == len(dw) == 17
    # the undirected graph is connected: every group is reachable from the stem
    sym = space.group_graph()
    seen, todo = {stem}, [stem]
    while todo:
        r = todo.pop()
        for c in sym.indices[sym.indptr[r]:sym.indptr[r + 1]].tolist():
            if c not in seen:
                seen.add(c)
                todo.append(c)
    assert seen == set(range(space.num_groups))


def test_group_graph_concat():
    space = PruningSpace(_Concat().eval(), torch.randn(1, 3, 8, 8))
    a, b, c = (_by_root(space, n) for n in "abc")
    # a and b are concatenated into c's input: no edge between the two siblings
    assert _edges(space.group_graph(symmetric=False)) == {(a, c), (b, c)}
    assert _edges(space.group_graph()) == {(a, c), (b, c), (c, a), (c, b)}


def test_group_graph_through_ignored_residual_stream():
    model = get_model("resnet20").eval()
    space = PruningSpace(model, torch.randn(1, 3, 32, 32), ignored_layers=["layer2.0.shortcut.0"])
    assert not any(g.size == 32 and g.name.startswith("residual") for g in space.groups)
    edges = _edges(space.group_graph(symmetric=False))
    s1 = next(g.index for g in space.groups if g.name.startswith("residual") and g.size == 16)
    i20, i21 = _by_root(space, "layer2.0.conv1"), _by_root(space, "layer2.1.conv1")
    # layer2.1.conv1 reads the unprunable stream 2, written by layer2.0.conv2 (reads i20) and the
    # ignored shortcut (reads stream 1)
    assert {(s1, i20), (s1, i21), (i20, i21)} <= edges
    assert (i21, i20) not in edges


# ---------------------------------------------------------------------- ignored layers, surgery
def test_resolve_ignored_layers():
    from gcnprune_fast.space import resolve_ignored_layers
    model = get_model("simple_cnn")
    conv = model.features[0]
    assert resolve_ignored_layers(model, None) == ()
    assert resolve_ignored_layers(model, "features.3") == ("features.3",)
    assert resolve_ignored_layers(model, conv) == ("features.0",)
    assert resolve_ignored_layers(model, ["features.3", conv, "features.3", model.features[3]]) == (
        "features.3", "features.0")
    assert resolve_ignored_layers(model, (m for m in [conv])) == ("features.0",)
    with pytest.raises(ValueError, match=r"ignored_layers\[1\]: 'features\.99' is not a submodule"):
        resolve_ignored_layers(model, [conv, "features.99"])
    with pytest.raises(ValueError, match=r"ignored_layers\[0\]: Linear object is not a submodule"):
        resolve_ignored_layers(model, [nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="the model itself"):
        resolve_ignored_layers(model, [model])
    with pytest.raises(ValueError, match="the model itself"):
        resolve_ignored_layers(model, "")
    with pytest.raises(TypeError, match=r"ignored_layers\[2\]: .* got int"):
        resolve_ignored_layers(model, ["features.0", conv, 3])
    with pytest.raises(TypeError, match="got float"):
        resolve_ignored_layers(model, 1.5)


def test_space_attributes_and_prune_model(r20):
    from gcnprune_fast.space import prune_model
    model, space = r20
    other = PruningSpace(model, torch.randn(1, 3, 32, 32), round_to=2, min_channels=3)
    assert (space.round_to, space.min_channels) == (1, 1) and (other.round_to, other.min_channels) == (2, 3)
    masks = _random_masks(space, p=0.5, seed=5)
    keep = {g.root: m for g, m in zip(space.groups, masks)}
    a = space.prune(masks)
    b = prune_model(model, space.example_inputs, keep, output_shape=space.output_shape)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    same = prune_model(model, space.example_inputs[0], {})
    assert same is not model and all(torch.equal(p, q) for p, q in zip(same.parameters(), model.parameters()))
    with pytest.raises(TypeError, match="bool"):
        prune_model(model, space.example_inputs, {"conv1": masks[0].float()})
    with pytest.raises(RuntimeError, match="output shape"):
        prune_model(model, space.example_inputs, keep, output_shape=(1, 11))


def test_frozen_parameters_do_not_shrink_the_space():
    """Pruning does not depend on requires_grad: a frozen stem / layer1 / whole backbone gives the
    same groups and costs as the trainable model, and the pruned model keeps the frozen flags."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = PruningSpace(model, x)
    masks = _random_masks(ref, p=0.5, seed=3)
    ref_out = ref.prune(masks).eval()(x)
    for frozen in ([model.conv1, model.bn1, model.layer1], [model]):
        for mod in frozen:
            mod.requires_grad_(False)
        space = PruningSpace(model, x)
        assert [(g.name, g.size, g.layers) for g in space.groups] == [
            (g.name, g.size, g.layers) for g in ref.groups]
        assert (space.base_flops, space.base_params) == (ref.base_flops, ref.base_params)
        assert space.cost(masks) == ref.cost(masks)
        pruned = space.prune(masks).eval()
        torch.testing.assert_close(pruned(x), ref_out)
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        assert {n: p.requires_grad for n, p in pruned.named_parameters()} == flags
        assert not all(flags.values())
    model.requires_grad_(True)


class _ChannelsLastBlock(nn.Module):
    """ConvNeXt's pattern: depthwise conv, then LayerNorm and an MLP on [N, H, W, C] tensors."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class _ChannelsLastNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = _ChannelsLastBlock(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, feats):
        return self.conv1(self.relu1(self.norm1(torch.cat(feats, 1))))


class _DenseNet(nn.Module):
    """DenseNet's pattern: each layer's BN normalizes the concatenation of all earlier outputs."""

    def __init__(self, growth=4, layers=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.layers = nn.ModuleList(_DenseLayer(6 + i * growth, growth) for i in range(layers))
        c = 6 + layers * growth
        self.norm, self.relu = nn.BatchNorm2d(c), nn.ReLU()
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(feats))
        return self.head(self.relu(self.norm(torch.cat(feats, 1))).mean((2, 3)))


def _feature_views(space, model, x):
    seen = {}
    with torch.no_grad(), space.feature_hooks(lambda g, a: seen.setdefault(g, a.clone())):
        model(x)
    return seen


def test_feature_view_channels_last_tokens():
    torch.manual_seed(0)
    model = _ChannelsLastNet().eval()
    x = torch.randn(2, 3, 6, 6)
    space = PruningSpace(model, x)
    inner = next(g for g in space.groups if g.root == "block.fc1")
    assert inner.feature_module == "block.act" and inner.feature_dim == 3
    assert inner.feature_index is None and inner.feature_activation == "consumed"
    seen = _feature_views(space, model, x)
    assert all(seen[g.index].shape[:2] == (2, g.size) for g in space.groups)
    with torch.no_grad():
        b = model.block
        expect = b.act(b.fc1(b.norm(b.dw(model.stem(x)).permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
    torch.testing.assert_close(seen[inner.index], expect)


def test_feature_view_concatenated_outputs():
    torch.manual_seed(0)
    model = _randomize_bn(_DenseNet()).eval()
    x = torch.randn(2, 3, 6, 6)
    space = PruningSpace(model, x)
    seen = _feature_views(space, model, x)
    assert all(seen[g.index].shape[:2] == (2, g.size) for g in space.groups)
    g1 = next(g for g in space.groups if g.root == "layers.0.conv1")
    # layer 1 reads [stem (6), layer 0 (4)]: layer 0's channels are 6..9 of its relu1 output
    assert g1.feature_module == "layers.1.relu1" and g1.feature_activation == "consumed"
    assert g1.feature_index == (6, 7, 8, 9)
    with torch.no_grad():
        feats = [model.stem(x)]
        feats.append(model.layers[0](feats))
        expect = model.layers[1].relu1(model.layers[1].norm1(torch.cat(feats, 1)))[:, 6:10]
    torch.testing.assert_close(seen[g1.index], expect)
    masks = _random_masks(space, p=0.5, seed=1)
    pruned = space.prune(masks).eval()
    with torch.no_grad(), space.masked(masks):
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["densenet121", "convnext_tiny"])
def test_default_method_on_concat_and_channels_last_models(name):
    """Every model l1 prunes, the default method prunes: channel features of torchvision
    DenseNet-121 (concatenations) and ConvNeXt-tiny (channels-last MLPs), then a tiny search."""
    import gcnprune_fast
    from gcnprune_fast.features import collect_features
    from helpers import random_batches
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    loader = random_batches(n=8, bs=4, size=32)
    space = PruningSpace(model, loader[0][0])
    feats = collect_features(space, loader, max_samples=8)
    assert [f.shape for f in feats.gap] == [(g.size, 8) for g in space.groups]
    assert all(torch.isfinite(f).all() for f in feats.gap)
    result = gcnprune_fast.prune(model, loader, flops=0.7, episodes=2, feature_samples=8,
                                 reward_samples=8, progress=False)
    with torch.no_grad():
        assert result.model(loader[0][0]).shape == (4, 10)


class _GhostModule(nn.Module):
    """GhostNet's pattern: cat([x1, depthwise(x1)]) (every channel of x1 carried twice), gated by
    an SE whose expand conv writes the concatenated width (it roots the group)."""

    def __init__(self, cin, half):
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(cin, half, 1), nn.BatchNorm2d(half), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, groups=half),
                                   nn.BatchNorm2d(half), nn.ReLU())
        self.reduce = nn.Conv2d(2 * half, 4, 1)
        self.expand = nn.Conv2d(4, 2 * half, 1)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], 1)
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(out.mean((2, 3), keepdim=True)))))
        return out * gate


class _GhostNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.ghost = _GhostModule(8, 6)
        self.conv = nn.Conv2d(12, 10, 3, padding=1)
        self.head = nn.Linear(10, 5)

    def forward(self, x):
        return self.head(self.conv(self.ghost(self.stem(x))).mean((2, 3)))


def test_tied_channels_are_one_group_channel():
    """A group whose root layer's output carries a channel twice (GhostNet) has one group channel
    per tied class: masks, cost, masked evaluation and surgery agree exactly."""
    import torch_pruning as tp
    torch.manual_seed(0)
    model = _randomize_bn(_GhostNet()).eval()
    x = torch.randn(1, 3, 8, 8)
    space = PruningSpace(model, x)
    tied = next(g for g in space.groups if g.root == "ghost.expand")
    assert tied.size == 6 and "ghost.primary.0" in tied.producers and tied.cost_exact
    assert space.cost_exact
    for seed in range(3):
        masks = _random_masks(space, p=0.5, seed=seed)
        pruned = space.prune(masks).eval()
        assert pruned.ghost.primary[0].out_channels == int(masks[tied.index].sum())
        assert pruned.ghost.expand.out_channels == 2 * int(masks[tied.index].sum())
        with torch.no_grad(), space.masked(masks):
            torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)
        flops, params = tp.utils.count_ops_and_params(pruned, x)
        assert space.cost(masks) == (flops, params)
        plan = space.plan(masks)
        rebuilt = load_pruned(_GhostNet(), plan, pruned.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), pruned(x))
    assert space.weight_stats()[tied.index]["l1"].shape == (6,)


class _GroupedBlock(nn.Module):
    """ResNeXt's pattern: 1x1 conv, grouped 3x3 conv (4 groups), 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(self.conv3(x).mean((2, 3)))


def test_grouped_conv_groups_are_offered():
    """Grouped convs: each conv group loses the same within-group channels (tied channels), so
    the conv stays a valid grouped conv; cost and masked evaluation are exact."""
    import torch_pruning as tp
    torch.manual_seed(0)
    model = _randomize_bn(_GroupedBlock()).eval()
    x = torch.randn(1, 3, 8, 8)
    space = PruningSpace(model, x)
    by_root = {g.root: g for g in space.groups}
    assert by_root["conv1"].size == 4 and by_root["conv2"].size == 6  # 16 / 4 and 24 / 4
    assert not space.skipped_groups and space.cost_exact
    for seed in range(3):
        masks = _random_masks(space, p=0.5, seed=seed)
        pruned = space.prune(masks).eval()
        assert pruned.conv2.groups == 4
        assert pruned.conv2.in_channels == 4 * int(masks[by_root["conv1"].index].sum())
        with torch.no_grad(), space.masked(masks):
            torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)
        assert space.cost(masks) == tuple(tp.utils.count_ops_and_params(pruned, x))
    feats = {}
    with torch.no_grad(), space.feature_hooks(lambda g, a: feats.setdefault(g, a.shape)):
        model(x)
    assert all(feats[g.index][1] == g.size for g in space.groups)


class _SplitNet(nn.Module):
    """Res2Net / MixNet pattern: a conv's output split with sizes written in the code."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        xa, xb = torch.split(self.conv1(x), 4, dim=1)
        x = torch.cat([self.a(xa), self.b(xb)], 1)
        return self.head(torch.relu(self.conv2(x)).mean((2, 3)))


def test_groups_through_fixed_size_splits_are_skipped():
    import torch_pruning as tp
    torch.manual_seed(0)
    model = _SplitNet().eval()
    x = torch.randn(1, 3, 8, 8)
    space = PruningSpace(model, x)
    assert [s.split(" ")[0] for s in space.skipped_groups] == ["conv1"]
    assert "split/chunk" in space.skipped_groups[0]
    assert sorted(g.root for g in space.groups) == ["a", "b", "conv2"]
    masks = _random_masks(space, p=0.5, seed=0)
    pruned = space.prune(masks).eval()
    with torch.no_grad(), space.masked(masks):
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)
    assert space.cost(masks) == tuple(tp.utils.count_ops_and_params(pruned, x))


def test_memory_error_is_not_called_an_unsupported_op():
    """A MemoryError inside torch-pruning (e.g. under a heap cap) is reported as memory, not as
    an op torch-pruning does not support."""
    from gcnprune_fast.space._dependency import _describe_failure
    try:
        raise MemoryError()
    except MemoryError as e:
        text = _describe_failure(e)
    assert text.startswith("out of memory") and "unsupported op" not in text
    try:
        raise IndexError("index 3 is out of bounds")
    except IndexError as e:
        assert _describe_failure(e) == "IndexError: index 3 is out of bounds"
