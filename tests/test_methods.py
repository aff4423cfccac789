"""Baseline criteria, allocation (global / uniform) and the budget projection (action wall)."""
import pytest
import torch

from gcnprune_fast.methods import Budget, SearchContext, allocate, method_names, run_method
from gcnprune_fast.methods.allocation import check_budget_reachable, project_to_budget, standardize
from gcnprune_fast.methods.criteria import CRITERIA
from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace
from helpers import random_batches, simple_cnn_space


def _loader(n=32, **kw):
    return random_batches(n=n, **kw)


@pytest.fixture(scope="module")
def space():
    return simple_cnn_space()


@pytest.fixture(scope="module")
def space8(space):
    return PruningSpace(space.model, torch.randn(2, 3, 16, 16), round_to=8)


def _ctx(space, **kw):
    return SearchContext(space=space, budget=kw.pop("budget", Budget.from_ratios(space, 0.5)),
                         loader=_loader(), device=torch.device("cpu"), **kw)


def _ok(space, masks, budget, round_to=1):
    f, p = space.cost(masks)
    assert budget.feasible(f, p)
    for g, m in enumerate(masks):
        k = int(m.sum())
        assert k >= space.min_keep(g)
        assert k == m.numel() or k % round_to == 0


def test_method_names():
    # the criteria and the default method; search methods of their own modules come on top
    assert set(method_names()) >= {"channel-gcn", "l1", "l2", "fpgm", "hrank", "taylor",
                                   "bn-scale", "random"}
    assert method_names()[0] == "channel-gcn"


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criteria_shapes_and_finite(space, name):
    scores = CRITERIA[name](space, _ctx(space))
    assert [s.shape for s in scores] == [(g.size,) for g in space.groups]
    assert all(torch.isfinite(s).all() for s in scores)


def test_l1_matches_manual_filter_norm(space):
    scores = CRITERIA["l1"](space, _ctx(space))
    g = next(i for i, grp in enumerate(space.groups) if grp.name == "features.0")
    w = space.model.features[0].weight.detach()
    torch.testing.assert_close(scores[g], w.abs().flatten(1).sum(1).double())


def test_fpgm_prefers_outlier_filter():
    conv_model = get_model("simple_cnn").eval()
    with torch.no_grad():
        w = conv_model.features[0].weight
        w.copy_(torch.randn(1, *w.shape[1:]).expand_as(w) + 0.01 * torch.randn_like(w))
        w[5] += 3.0  # far from the geometric median -> most important
    sp = PruningSpace(conv_model, torch.randn(2, 3, 16, 16))
    g = next(i for i, grp in enumerate(sp.groups) if grp.name == "features.0")
    assert int(CRITERIA["fpgm"](sp, None)[g].argmax()) == 5


def test_random_scores_follow_seed(space):
    a = CRITERIA["random"](space, _ctx(space, seed=3))
    b = CRITERIA["random"](space, _ctx(space, seed=3))
    c = CRITERIA["random"](space, _ctx(space, seed=4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("flops,params", [(0.5, None), (None, 0.3), (0.6, 0.4)])
@pytest.mark.parametrize("round_to", [1, 8])
def test_projection_feasible_and_drops_lowest(space, space8, flops, params, round_to):
    budget = Budget.from_ratios(space, flops, params)
    gen = torch.Generator().manual_seed(1)
    scores = [torch.randn(g.size, generator=gen, dtype=torch.float64) for g in space.groups]
    start = [torch.rand(g.size, generator=gen) < 0.9 for g in space.groups]
    masks = project_to_budget(space, start, scores, budget, round_to=round_to)
    sp = space if round_to == 1 else space8
    _ok(sp, masks, budget, round_to)
    for m, s, m0 in zip(masks, scores, start):
        assert not (m & ~m0).any() or int(m0.sum()) < 8  # only removes (unless repairing)
        kept, dropped_now = s[m], s[m0 & ~m]
        if kept.numel() and dropped_now.numel():
            # within a group the channels removed by the wall score no higher than every kept
            # one: removal takes a group's lowest-scored channels first (in round_to chunks)
            assert dropped_now.max() <= kept.min()


def test_fill_uses_budget(space):
    budget = Budget.from_ratios(space, 0.5)
    scores = standardize(CRITERIA["l1"](space, None))
    few = [torch.zeros(g.size, dtype=torch.bool) for g in space.groups]
    plain = project_to_budget(space, few, scores, budget)
    filled = project_to_budget(space, few, scores, budget, fill=True)
    _ok(space, filled, budget)
    assert space.cost(filled)[0] > space.cost(plain)[0]
    # the fill adds channels best-first while the budget holds, so it stops exactly where the
    # next channel in that order (the best-scored dropped channel of all groups) breaks it
    best = max(((float(s[~m].max()), -g) for g, (m, s) in enumerate(zip(filled, scores))
                if (~m).any()))
    g = -best[1]
    nxt = [m.clone() for m in filled]
    dropped = torch.nonzero(~nxt[g]).flatten()
    nxt[g][dropped[scores[g][dropped].argmax()]] = True
    assert not bool(budget.feasible(*space.cost(nxt)))
    # and every kept channel of a group scores at least as high as its dropped ones
    for m, s in zip(filled, scores):
        if m.any() and (~m).any():
            assert s[m].min() >= s[~m].max()


def test_global_vs_uniform(space):
    budget = Budget.from_ratios(space, 0.5)
    scores = CRITERIA["l1"](space, None)
    uni = allocate(space, scores, budget, allocation="uniform")
    glob = allocate(space, scores, budget, allocation="global")
    _ok(space, uni, budget)
    _ok(space, glob, budget)
    ratios = [float(m.float().mean()) for m in uni]
    assert max(ratios) - min(ratios) < 0.1
    # within each group the kept channels are the top-scored ones
    for m, s in zip(uni, scores):
        if (~m).any():
            assert s[m].min() >= s[~m].max()
    with pytest.raises(ValueError, match="allocation"):
        allocate(space, scores, budget, allocation="greedy")


def test_budget_validation(space):
    with pytest.raises(ValueError, match="budget"):
        Budget.from_ratios(space)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="outside"):
            Budget.from_ratios(space, flops=bad)
    with pytest.raises(TypeError):
        Budget.from_ratios(space, flops="half")
    tight = PruningSpace(space.model, torch.randn(2, 3, 16, 16), min_channels=64)
    with pytest.raises(ValueError, match="minimum|below what"):
        check_budget_reachable(tight, Budget.from_ratios(tight, 0.05))


@pytest.mark.parametrize("name", ["l1", "fpgm", "random", "hrank", "taylor"])
def test_run_baseline_meets_budget(space, name):
    ctx = _ctx(space, budget=Budget.from_ratios(space, 0.4), options={"allocation": "uniform"})
    result = run_method(name, ctx)
    _ok(space, result.masks, ctx.budget)


def test_unknown_method_and_options(space):
    with pytest.raises(ValueError, match="channel-gcn"):
        run_method("magic", _ctx(space))
    with pytest.raises(TypeError, match="unknown option"):
        run_method("l1", _ctx(space, options={"episodes": 3}))


# ----------------------------------------------------------------------------------------------
# criteria against independent computations on a two-conv network
# ----------------------------------------------------------------------------------------------
def _two_conv_net():
    """conv(3->6)-BN-ReLU-conv(6->5)-BN-ReLU-pool-linear(5->4) with non-trivial BN statistics.
    Channel 2 of the first conv has a zero filter and BN bias 0.5 (a constant map: rank 1),
    channel 4 a zero filter and BN bias -1 (zero after the ReLU: rank 0)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 5, 3, padding=1, bias=False), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) * 2 - 0.5)  # one may be < 0
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        net[0].weight[2].zero_()
        net[0].weight[4].zero_()
        net[1].weight[2] = net[1].weight[4] = 1.0
        net[1].running_mean[2] = net[1].running_mean[4] = 0.0
        net[1].bias[2], net[1].bias[4] = 0.5, -1.0
    return net.eval()


@pytest.fixture(scope="module")
def two_conv():
    net = _two_conv_net()
    sp = PruningSpace(net, torch.randn(2, 3, 8, 8))
    first = next(i for i, gr in enumerate(sp.groups) if gr.root == "0")
    second = next(i for i, gr in enumerate(sp.groups) if gr.root == "3")
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g))
               for _ in range(3)]
    return net, sp, first, second, batches


def _ctx_on(sp, batches, **options):
    return SearchContext(space=sp, budget=Budget.from_ratios(sp, 0.5), loader=batches,
                         device=torch.device("cpu"), options=options)


def test_l2_and_bn_scale_match_hand_computation(two_conv):
    net, sp, first, second, batches = two_conv
    l2 = CRITERIA["l2"](sp, None)
    bn = CRITERIA["bn-scale"](sp, None)
    for g, conv, norm in ((first, net[0], net[1]), (second, net[3], net[4])):
        w = conv.weight.detach().double()
        torch.testing.assert_close(l2[g], (w ** 2).sum(dim=(1, 2, 3)).sqrt())
        torch.testing.assert_close(bn[g], norm.weight.detach().double().abs())
    assert float(l2[first][2]) == 0.0 and float(l2[first][4]) == 0.0


def test_hrank_matches_feature_map_ranks(two_conv):
    net, sp, first, second, batches = two_conv
    scores = CRITERIA["hrank"](sp, _ctx_on(sp, batches, hrank_samples=10))
    x = torch.cat([b[0] for b in batches])[:10]  # the first 10 images, as the option says
    with torch.no_grad():
        a1 = net[:3](x)                           # [10, 6, 8, 8] after the ReLU
        pooled = net[:8](x)                       # [10, 5] what the classifier reads
    expected_first = torch.linalg.matrix_rank(a1).double().mean(0)
    torch.testing.assert_close(scores[first], expected_first)
    assert float(scores[first][2]) == 1.0 and float(scores[first][4]) == 0.0  # by construction
    assert all(float(scores[first][c]) > 1.0 for c in (0, 1, 3, 5))        # random maps
    # 1-D features (what a Linear reads) score by their mean absolute value
    torch.testing.assert_close(scores[second], pooled.abs().double().mean(0))


def test_taylor_matches_gate_gradients(two_conv):
    net, sp, first, second, batches = two_conv
    scores = CRITERIA["taylor"](sp, _ctx_on(sp, batches, taylor_batches=2))
    sums = [torch.zeros(6, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)]
    for x, y in batches[:2]:
        g1 = torch.ones(6, requires_grad=True)
        g2 = torch.ones(5, requires_grad=True)
        a1 = net[:3](x) * g1[None, :, None, None]   # gate at the input of the second conv
        a2 = net[3:8](a1) * g2[None, :]             # gate at the input of the classifier
        loss = torch.nn.functional.cross_entropy(net[8](a2), y)
        d1, d2 = torch.autograd.grad(loss, (g1, g2))
        sums[0] += d1.double() ** 2
        sums[1] += d2.double() ** 2
    torch.testing.assert_close(scores[first], sums[0] / 2)
    torch.testing.assert_close(scores[second], sums[1] / 2)
    assert float(scores[first][4]) == 0.0  # a channel that is always zero has no gradient
