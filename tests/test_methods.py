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
    assert set(method_names()) == {"channel-gcn", "l1", "l2", "fpgm", "hrank", "taylor", "bn-scale",
                                 "random"}


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
            # within a group the channels removed by the wall score below the kept ones
            # (up to the round_to chunking)
            assert dropped_now.min() <= kept.max()


def test_fill_uses_budget(space):
    budget = Budget.from_ratios(space, 0.5)
    scores = standardize(CRITERIA["l1"](space, None))
    few = [torch.zeros(g.size, dtype=torch.bool) for g in space.groups]
    plain = project_to_budget(space, few, scores, budget)
    filled = project_to_budget(space, few, scores, budget, fill=True)
    _ok(space, filled, budget)
    assert space.cost(filled)[0] > space.cost(plain)[0]
    # nothing more fits: adding the best dropped channel of any group breaks the budget or
    # the group is full
    assert space.cost(filled)[0] > 0.45 * space.base_flops


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
