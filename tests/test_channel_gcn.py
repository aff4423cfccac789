"""Method A (channel-gcn): graph, node features, GCN agents, search, checkpoint and resume."""
import pytest
import torch

from gcnprune_fast.features import collect_features
from gcnprune_fast.methods import Budget, SearchContext, allocate
from gcnprune_fast.methods import channel_gcn
from gcnprune_fast.methods.agents import ChannelGCNPolicy
from gcnprune_fast.methods.criteria import l1_scores
from gcnprune_fast.methods.search import MaskScorer, RewardSet, leave_one_out_advantages
from helpers import random_batches, simple_cnn_space


def _loader(n=48, **kw):
    return random_batches(n=n, **kw)


@pytest.fixture(scope="module")
def space():
    return simple_cnn_space()


@pytest.fixture(scope="module")
def features(space):
    return collect_features(space, _loader(), max_samples=40)


def _ctx(space, **kw):
    opts = {"episodes": 6, "episodes_per_update": 3, "reward_samples": 16, "feature_samples": 16}
    opts.update(kw.pop("options", {}))
    return SearchContext(space=space, budget=Budget.from_ratios(space, 0.5), loader=_loader(),
                         device=torch.device("cpu"), options=opts, **kw)


def test_features_shapes(space, features):
    assert features.num_samples == 40
    for g, grp in enumerate(space.groups):
        assert features.gap[g].shape == (grp.size, 40)
        assert features.stats(g).shape == (grp.size, 5)
        assert (features.zero_frac[g] >= 0).all() and (features.zero_frac[g] <= 1).all()


def test_graph_is_block_diagonal_and_node_features_standardized(space, features):
    offsets = space.group_offsets()
    raw, norm = channel_gcn.build_channel_graph(features, offsets, k=4)
    n = int(offsets[-1])
    assert raw.num_rows == n and norm.num_rows == n
    rows = torch.repeat_interleave(torch.arange(n), raw.indptr.diff())
    gid = torch.bucketize(torch.arange(n), offsets[1:], right=True)
    assert torch.equal(gid[rows], gid[raw.indices])  # no edge crosses groups
    x = channel_gcn.node_features(space, features, raw, offsets, Budget.from_ratios(space, 0.5))
    assert x.shape == (n, len(channel_gcn.NODE_FEATURES))
    col = channel_gcn.NODE_FEATURES.index("l1")
    for g in range(space.num_groups):
        z = x[offsets[g]:offsets[g + 1], col]
        assert abs(float(z.mean())) < 1e-4 and abs(float(z.std(unbiased=False)) - 1) < 1e-3


def test_grouped_gcn_equals_per_group_loop(space, features):
    offsets = space.group_offsets()
    _, graph = channel_gcn.build_channel_graph(features, offsets, k=4)
    sizes = [g.size for g in space.groups]
    x = torch.randn(int(offsets[-1]), 6)
    policy = ChannelGCNPolicy(sizes, 6, hidden=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy.w_head.normal_()
        policy.w_skip.normal_()
    out = policy(graph, x)
    dense = graph.to_dense()
    h1 = torch.relu(torch.cat([dense[offsets[g]:offsets[g + 1]] @ x @ policy.gcn1.linear.weight[g] + policy.gcn1.linear.bias[g]
                               for g in range(len(sizes))]))
    h2 = torch.cat([torch.relu(dense[offsets[g]:offsets[g + 1]] @ h1 @ policy.gcn2.linear.weight[g] + policy.gcn2.linear.bias[g])
                    for g in range(len(sizes))])
    gid = policy.group_id
    ref = (h2 * policy.w_head[gid]).sum(1) + (x * policy.w_skip[gid]).sum(1) + policy.bias[gid]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.sum().backward()  # differentiable through spmm
    w1 = policy.gcn1.linear.weight
    assert w1.grad is not None and w1.grad.abs().sum() > 0


def test_shared_policy_runs(space, features):
    offsets = space.group_offsets()
    _, graph = channel_gcn.build_channel_graph(features, offsets, k=4)
    policy = ChannelGCNPolicy([g.size for g in space.groups], 5, shared=True)
    assert policy(graph, torch.randn(int(offsets[-1]), 5)).shape == (int(offsets[-1]),)


def test_warm_start_greedy_is_global_l1(space):
    ctx = _ctx(space, options={"episodes": 1, "episodes_per_update": 1, "lr": 0.0,
                               "entropy_coef": 0.0})
    result = channel_gcn.search(space, ctx)
    l1_masks = allocate(space, l1_scores(space), ctx.budget, allocation="global")
    # with lr=0 the policy stays at its warm start; the first greedy mask is the L1 mask
    assert result.info["greedy_curve"][0] == pytest.approx(
        MaskScorer(space, RewardSet.from_loader(_loader(), 16, "cpu"), "accuracy_bn", "cpu")(
            l1_masks)[0])
    assert result.info["best_reward"] >= result.info["greedy_curve"][0]


def test_ppo_option_runs(space):
    r = channel_gcn.search(space, _ctx(space, options={"ppo": True, "ppo_epochs": 2,
                                                       "episodes": 4, "episodes_per_update": 2}))
    assert r.info["episodes"] == 4 and r.info["updates"] == 2


def test_search_feasible_and_reproducible(space):
    a = channel_gcn.search(space, _ctx(space, seed=1))
    b = channel_gcn.search(space, _ctx(space, seed=1))
    f, p = space.cost(a.masks)
    assert Budget.from_ratios(space, 0.5).feasible(f, p)
    assert a.info["episodes"] == 6 and len(a.info["reward_curve"]) == 6
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    assert a.info["reward_curve"] == b.info["reward_curve"]


def test_resume_matches_uninterrupted(space, tmp_path):
    opts = {"episodes": 8, "episodes_per_update": 2}
    full = channel_gcn.search(space, _ctx(space, seed=2, checkpoint_dir=str(tmp_path / "a"),
                                          options=opts))
    half_dir = str(tmp_path / "b")
    channel_gcn.search(space, _ctx(space, seed=2, checkpoint_dir=half_dir,
                                   options={**opts, "episodes": 4}))
    saved = torch.load(f"{half_dir}/{channel_gcn.CHECKPOINT_NAME}", weights_only=True)
    assert saved["state"]["episodes"] == 4
    resumed = channel_gcn.search(space, _ctx(space, seed=2, checkpoint_dir=half_dir, resume=True,
                                             options=opts))
    assert resumed.info["episodes"] == 8
    assert resumed.info["reward_curve"] == full.info["reward_curve"]
    assert resumed.info["best_reward"] == full.info["best_reward"]
    assert all(torch.equal(x, y) for x, y in zip(resumed.masks, full.masks))
    with pytest.raises(ValueError, match="different work"):
        channel_gcn.search(space, _ctx(space, seed=3, checkpoint_dir=half_dir, resume=True,
                                       options=opts))


def test_bad_options(space):
    with pytest.raises(TypeError, match="unknown option.*channel-gcn"):
        channel_gcn.search(space, _ctx(space, options={"epsiodes": 3}))
    with pytest.raises(ValueError, match="reward"):
        channel_gcn.search(space, _ctx(space, options={"reward": "top5"}))


def test_bn_reward_restores_buffers(space):
    rewards = RewardSet.from_loader(_loader(), 16, "cpu")
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    rewards.evaluate_with_bn(space.model)
    assert not space.model.training
    assert all(torch.equal(v, space.model.state_dict()[k]) for k, v in before.items())


def test_no_gcn_policy_ignores_the_graph(space, features):
    offsets = space.group_offsets()
    _, graph = channel_gcn.build_channel_graph(features, offsets, k=4)
    n = int(offsets[-1])
    x = torch.randn(n, 6)
    policy = ChannelGCNPolicy([g.size for g in space.groups], 6, hidden=8, use_gcn=False,
                              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy.w_head.normal_()
        policy.w_skip.normal_()
    out = policy(graph, x)
    torch.testing.assert_close(out, policy(channel_gcn.identity_graph(n), x))
    gid = policy.group_id
    torch.testing.assert_close(out, (x * policy.w_skip[gid]).sum(1) + policy.bias[gid])


@pytest.mark.parametrize("options", [{"gcn": False}, {"graph": "identity"},
                                     {"search": "random"}, {"warm_start": "none"},
                                     {"baseline": "leave_one_out"}])
def test_ablations_run_and_meet_the_budget(space, options):
    r = channel_gcn.search(space, _ctx(space, seed=4, options=options))
    f, p = space.cost(r.masks)
    assert Budget.from_ratios(space, 0.5).feasible(f, p)
    assert r.info["episodes"] == 6 and len(r.info["reward_curve"]) == 6
    if options.get("search") == "random":
        assert r.info["updates"] == 0
        # the start is the warm start's greedy mask (global L1); the best can only be better
        assert r.info["best_reward"] >= r.info["greedy_curve"][0]


@pytest.mark.parametrize("flops,per_update,expected", [
    (0.5e6, 10, 600),    # a small net: the ceiling
    (41e6, 10, 600),     # ResNet-20 on CIFAR-10: 300 * 130 / 41 = 951 -> the ceiling
    (70e6, 10, 560),     # ResNet-32 on CIFAR-10 (70M MACs): 557 -> whole updates
    (127e6, 10, 310),    # ResNet-56 on CIFAR-10: 307 -> whole updates
    (130e6, 10, 300),    # the reference cost
    (314e6, 10, 120),    # VGG-16-BN on CIFAR-10: 300 * 130 / 314 = 124 -> whole updates
    (149e6, 7, 259),     # torchvision ResNet-18 at 64 px, updates of 7 episodes
    (4.12e9, 10, 50),    # ResNet-50 at 224 px: the floor
])
def test_default_episodes_follow_the_cost_per_image(flops, per_update, expected):
    assert channel_gcn.default_episodes(flops, per_update) == expected
    # on an accelerator a forward is cheap: the ceiling
    assert channel_gcn.default_episodes(flops, per_update, "cuda") == 600


def test_search_without_episodes_uses_the_default_and_says_so(space, monkeypatch, caplog):
    # make this small net count as a costly one, so the default is the floor (50 episodes)
    monkeypatch.setattr(channel_gcn, "AUTO_EPISODES_REFERENCE_FLOPS", space.base_flops / 100)
    with caplog.at_level("INFO", logger="gcnprune_fast"):
        r = channel_gcn.search(space, _ctx(space, options={"episodes": None,
                                                           "episodes_per_update": 10}))
    assert r.info["episodes"] == channel_gcn.AUTO_EPISODES_MIN == 50 and r.info["updates"] == 5
    text = caplog.text
    assert "50 episodes (the default for" in text
    # after the first update: an estimate for the rest, once
    assert text.count("about") == 1 and "for the 4 updates left" in text


def test_leave_one_out_baseline_centres_each_episode_on_the_others():
    r = torch.tensor([0.30, 0.40, 0.20, 0.50])
    adv = leave_one_out_advantages(r)
    torch.testing.assert_close(adv, torch.tensor([0.30 - 1.1 / 3, 0.40 - 1.0 / 3,
                                                  0.20 - 1.2 / 3, 0.50 - 0.9 / 3]))
    # unlike a moving average it has no memory: shifting every reward changes nothing
    torch.testing.assert_close(leave_one_out_advantages(r + 0.25), adv)
    assert leave_one_out_advantages(torch.tensor([0.7])).tolist() == [0.0]
