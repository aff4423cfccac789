"""Method B (graph-pruning) with amc and evolution: layer features, PruningNet, the ratio
environment, the methods through prune(), resume after a kill, option errors."""
import copy

import pytest
import torch

import gcnprune_fast
from gcnprune_fast.features import collect_features
from gcnprune_fast.methods import Budget, SearchContext, get_method, method_names, run_method
from gcnprune_fast.methods import graph_pruning
from gcnprune_fast.methods.search import pruningnet as pn
from gcnprune_fast.methods.search.layer_features import (EMBEDDING_COLUMNS, activation_summary,
                                                         decision_order, dynamic_features,
                                                         layer_embedding)
from gcnprune_fast.methods.search.ratio_search import RatioEnvironment
from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace
from helpers import random_batches, simple_cnn_space

NEW_METHODS = ("graph-pruning", "amc", "evolution")

# tiny settings: seconds per run on random data
TINY = {
    "graph-pruning": dict(pruningnet_steps=4, episodes=5, warmup=2, reward_samples=16,
                          feature_samples=16, ddpg_hidden=32, batch_size=8, hidden=8,
                          generator_hidden=8),
    "amc": dict(episodes=5, warmup=2, reward_samples=16, ddpg_hidden=32, batch_size=8),
    "evolution": dict(population=6, iterations=2, parents=3, mutations=3, crossovers=3,
                      reward_samples=16),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP contention (10-100x
    slower small convolutions when other jobs hold the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def space():
    return simple_cnn_space()


@pytest.fixture(scope="module")
def resnet_space():
    torch.manual_seed(0)
    model = get_model("resnet20").eval()
    return PruningSpace(model, torch.randn(2, 3, 16, 16))


def _static(space, n=16):
    feats = collect_features(space, random_batches(n=n), max_samples=n)
    return torch.cat([layer_embedding(space), activation_summary(feats)], dim=1)


def _pnet(space, seed=0, **kw):
    importance = pn.importance_scores(space, "filter_l1")
    return pn.PruningNet(space, _static(space), importance, hidden=8, generator_hidden=8,
                         seed=seed, **kw)


def _randomize_generators(pnet, seed=1):
    """Non-zero last generator layers, so generated weights differ from the base weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in pnet.gen_w2:
            w.copy_(torch.randn(w.shape, generator=g) * 0.3)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- registry / features
def test_methods_registered_with_resume():
    names = method_names()
    for name in NEW_METHODS:
        assert name in names
        assert get_method(name).supports_resume


def test_layer_embedding_and_order(resnet_space):
    space = resnet_space
    order = decision_order(space)
    assert sorted(order) == list(range(space.num_groups))
    # the stem conv's residual stream runs first; the last stage's stream is decided late
    assert "conv1" in space.groups[order[0]].producers
    emb = layer_embedding(space, order)
    assert emb.shape == (space.num_groups, len(EMBEDDING_COLUMNS))
    assert float(emb.min()) >= 0 and float(emb.max()) <= 1
    col = EMBEDDING_COLUMNS.index("index")
    assert torch.allclose(emb[order, col], torch.linspace(0, 1, space.num_groups))
    counts = [g.size for g in space.groups]
    dyn0 = dynamic_features(space, counts, [], order, 1.0)
    assert float(dyn0[0]) == 0.0 and float(dyn0[1]) > 0.9  # nothing removed, (almost) all left
    half = [max(c // 2, 1) for c in counts]
    dyn = dynamic_features(space, half, order, [], 0.5)
    assert float(dyn[0]) > 0.5 and float(dyn[1]) == 0.0 and float(dyn[2]) == 0.5


# ----------------------------------------------------------------------------- PruningNet
@pytest.mark.parametrize("which", ["simple_cnn", "resnet20"])
def test_pruningnet_subnet_equals_physically_pruned_model(which, space, resnet_space):
    sp = space if which == "simple_cnn" else resnet_space
    pnet = _pnet(sp, max_generated_weights=10_000)  # the widest layers share sliced weights
    assert 0 < pnet.num_generated < len(pnet.layers)
    _randomize_generators(pnet)
    before = _state(sp.model)
    gen = torch.Generator().manual_seed(3)
    grid = pn.ratio_grid()
    x = torch.randn(4, 3, 16, 16, generator=gen)
    from gcnprune_fast.methods.allocation import counts_from_ratios
    for trial in range(3 if which == "simple_cnn" else 1):
        counts = counts_from_ratios(sp, grid[torch.randint(0, grid.numel(), (sp.num_groups,),
                                                            generator=gen)])
        full = pnet.full_state_dict(counts)
        # generated weights: full-size, original layout, and they depend on the widths
        for name, p in sp.model.named_parameters():
            assert full[name].shape == p.shape
        gen_name = pnet.layers[pnet.generated[0]] + ".weight"
        assert not torch.equal(full[gen_name], sp.model.get_parameter(gen_name))
        model = copy.deepcopy(sp.model)
        model.load_state_dict(full)
        masks = pnet.masks(counts)
        compact = PruningSpace(model, sp.example_inputs).prune(masks).eval()
        # cropped shapes: every producer keeps counts[g] output channels
        for g, grp in enumerate(sp.groups):
            for prod in grp.producers:
                assert compact.get_submodule(prod).weight.shape[0] == counts[g]
        # single-input layers: the compact weight is the generated weight cropped to the kept
        # output and input channels
        for name in pnet.layers:
            reads = [g for g, grp in enumerate(sp.groups) if name in grp.consumers]
            writes = [g for g, grp in enumerate(sp.groups) if name in grp.producers]
            if len(reads) == 1 and len(writes) == 1 and full[name + ".weight"].dim() == 4:
                w = full[name + ".weight"][masks[writes[0]]][:, masks[reads[0]]]
                torch.testing.assert_close(compact.get_submodule(name).weight, w)
        with torch.no_grad():
            ref = compact(x)
            out = pnet.subnet_forward(x, counts, batch_stats=False)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
            compact.train()  # BN with batch statistics on both sides
            ref_bs = compact(x)
            out_bs = pnet.subnet_forward(x, counts, batch_stats=True)
            torch.testing.assert_close(out_bs, ref_bs, rtol=1e-4, atol=1e-4)
    after = _state(sp.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is untouched


def test_pruningnet_training_learns_and_leaves_model_untouched(space):
    pnet = _pnet(space)
    before = _state(space.model)
    base0 = [p.detach().clone() for p in pnet.base]
    facts = pn.train_pruningnet(pnet, random_batches(n=32, bs=8), steps=6, lr=1e-2, lr_base=1e-3,
                                seed=0)
    assert facts["steps"] == 6 and len(facts["loss_curve"]) == 6
    assert all(torch.isfinite(torch.tensor(facts["loss_curve"])))
    assert any(not torch.equal(a, b) for a, b in zip(base0, pnet.base))
    assert any(float(w.detach().abs().sum()) > 0 for w in pnet.gen_w2)  # generators moved off zero
    w_small = pnet.weights(pnet.ratios([max(g.size // 4, 1) for g in space.groups]))
    w_full = pnet.weights(pnet.ratios([g.size for g in space.groups]))
    name = pnet.layers[pnet.generated[0]] + ".weight"
    assert not torch.equal(w_small[name], w_full[name])  # weights depend on the widths
    after = _state(space.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("weights", ["supernet", "generated"])
def test_untrained_pruningnet_is_the_sliced_model(space, weights):
    pnet = _pnet(space, weights=weights)
    assert (pnet.num_generated == 0) == (weights == "supernet")
    counts = [g.size // 2 for g in space.groups]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = pnet.subnet_forward(x, counts, batch_stats=False)
        with space.masked(pnet.masks(counts)):
            ref = space.model(x)
    torch.testing.assert_close(out, ref)


def test_loader_cycle_resumes_at_the_same_batch():
    class Shuffled:  # draws its order from torch's global RNG, like the library's loaders
        def __init__(self):
            self.x = torch.arange(12.0)[:, None]

        def __iter__(self):
            perm = torch.randperm(12)
            for i in range(0, 12, 4):
                yield self.x[perm[i:i + 4]], perm[i:i + 4]

    a = pn.LoaderCycle(Shuffled(), seed=5)
    outer = torch.get_rng_state()
    seq = [a.next()[1] for _ in range(7)]
    assert torch.equal(outer, torch.get_rng_state())  # the caller's RNG is untouched
    assert not torch.equal(seq[0], seq[3])  # a new order every epoch
    b = pn.LoaderCycle(Shuffled(), seed=5)
    b.seek(1, 1)  # epoch 1, after its first batch: the 5th batch overall
    assert torch.equal(b.next()[1], seq[4]) and torch.equal(b.next()[1], seq[5])
    assert torch.equal(b.next()[1], seq[6])  # into epoch 2


# ----------------------------------------------------------------------------- environment
@pytest.mark.parametrize("flops,params,channel_round", [(0.5, None, 1), (0.3, 0.4, 8)])
def test_ratio_environment_wall_meets_budget(resnet_space, flops, params, channel_round):
    space = resnet_space
    budget = Budget.from_ratios(space, flops, params)
    order = decision_order(space)
    env = RatioEnvironment(space, budget, order, low=0.05, channel_round=channel_round)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        counts = [g.size for g in space.groups]
        for t in range(len(order)):
            c, executed = env.step(counts, t, float(torch.rand((), generator=gen)))
            assert executed == c / space.groups[order[t]].size
        f, p = space.cost_from_counts(torch.tensor(counts))
        assert bool(budget.feasible(f, p))
        for g, c in enumerate(counts):
            assert space.valid_count(g, c)
            if channel_round > 1 and space.groups[g].size >= 32 and c < space.groups[g].size:
                assert c % 8 == 0
    # greedy "keep everything" actions: the wall alone brings the network under the budget
    counts = [g.size for g in space.groups]
    for t in range(len(order)):
        env.step(counts, t, 1.0)
    f, p = space.cost_from_counts(torch.tensor(counts))
    assert bool(budget.feasible(f, p)) and float(f) > 0.8 * budget.max_flops


# ----------------------------------------------------------------------------- the methods
@pytest.mark.parametrize("name", NEW_METHODS)
@pytest.mark.parametrize("which", ["simple_cnn", "resnet20"])
def test_method_meets_budget_through_prune(name, which, space, resnet_space):
    sp = space if which == "simple_cnn" else resnet_space
    before = _state(sp.model)
    res = gcnprune_fast.prune(sp.model, random_batches(n=32), method=name, flops=0.5, params=0.6,
                              progress=False, bn_batches=1, **TINY[name])
    r = res.report
    assert r["flops_after"] <= 0.5 * r["flops_before"] * (1 + 1e-9)
    assert r["params_after"] <= 0.6 * r["params_before"] * (1 + 1e-9)
    assert r["flops_ratio"] > 0.2  # the search uses the budget, it does not collapse
    if name == "evolution":  # candidates are scaled onto the budget surface
        assert r["flops_ratio"] > 0.45 or r["params_ratio"] > 0.55
    assert r["episodes"] > 0 and len(r["reward_curve"]) >= 1
    assert set(r["ratios"]) == {g.name for g in sp.groups}
    assert r["search_time_s"] > 0
    if name == "graph-pruning":
        assert r["pruningnet_steps"] == TINY[name]["pruningnet_steps"]
        assert r["pruningnet_loss"] > 0 and r["pruningnet_train_time_s"] > 0
    out = res.model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    after = _state(sp.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_graph_pruning_ppo_and_sliced_reward(space):
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.4), loader=random_batches(),
                        device=torch.device("cpu"),
                        options=dict(TINY["graph-pruning"], agent="ppo", ppo_episodes_per_update=2,
                                     reward_weights="sliced", weights="supernet"))
    res = run_method("graph-pruning", ctx)
    f, p = space.cost(res.masks)
    assert f <= 0.4 * space.base_flops * (1 + 1e-9)
    assert res.info["agent"] == "ppo" and res.info["pruningnet_generated_layers"] == 0


def test_graph_pruning_pruningnet_weights(space, tmp_path):
    res = gcnprune_fast.prune(space.model, random_batches(n=32), method="graph-pruning",
                              flops=0.5, progress=False, checkpoint_dir=str(tmp_path),
                              final_weights="pruningnet", **TINY["graph-pruning"])
    compact = graph_pruning.load_pruningnet_weights(space.model, res)
    assert [p.shape for p in compact.parameters()] == [p.shape for p in res.model.parameters()]
    name = next(n for n, _ in compact.named_parameters() if n.endswith("weight"))
    assert not torch.equal(compact.get_parameter(name), res.model.get_parameter(name))


def test_graph_pruning_final_selection(space):
    """The search's best distinct configurations are grown to the budget and re-scored with the
    sliced weights on the selection data; the chosen one is what the masks keep."""
    budget = Budget.from_ratios(space, 0.5)
    opts = dict(TINY["graph-pruning"], episodes=8, final_candidates=4, selection_samples=16)
    ctx = SearchContext(space=space, budget=budget, loader=random_batches(n=32, seed=1),
                        val_loader=random_batches(n=16, seed=2), device=torch.device("cpu"),
                        options=opts)
    res = run_method("graph-pruning", ctx)
    rows = res.info["final_selection"]
    assert 1 <= len(rows) <= 4 and sum(r["chosen"] for r in rows) == 1
    # candidates are distinct, best search reward first
    assert len({tuple(r["counts"]) for r in rows}) == len(rows)
    assert [r["search_reward"] for r in rows] == sorted((r["search_reward"] for r in rows),
                                                        reverse=True)
    chosen = next(r for r in rows if r["chosen"])
    assert [int(m.sum()) for m in res.masks] == chosen["grown_counts"]
    assert chosen["selection_acc"] == max(r["selection_acc"] for r in rows)
    for r in rows:  # grown: never narrower, still within the budget
        assert all(g >= c for g, c in zip(r["grown_counts"], r["counts"]))
        f, p = space.cost_from_counts(torch.tensor(r["grown_counts"]))
        assert bool(budget.feasible(f, p))
        f0, _ = space.cost_from_counts(torch.tensor(r["counts"]))
        assert float(f) >= float(f0)
    # fill_budget=False scores the configurations as found
    plain = run_method("graph-pruning", SearchContext(
        space=space, budget=budget, loader=random_batches(n=32, seed=1),
        val_loader=random_batches(n=16, seed=2), device=torch.device("cpu"),
        options=dict(opts, fill_budget=False)))
    assert all(r["grown_counts"] == r["counts"] for r in plain.info["final_selection"])
    assert plain.info["reward_curve"] == res.info["reward_curve"]  # same search
    # final_candidates=0: the search's best, unchanged
    off = run_method("graph-pruning", SearchContext(
        space=space, budget=budget, loader=random_batches(n=32, seed=1),
        device=torch.device("cpu"), options=dict(opts, final_candidates=0)))
    assert off.info["final_selection"] is None
    assert off.info["best_reward"] == res.info["best_reward"]


def test_graph_pruning_rerank(space):
    """rerank_top > 0: the final candidates and the criteria's allocations are re-ranked by
    selection accuracy after a short fine-tune; the winner is the result."""
    opts = dict(TINY["graph-pruning"], episodes=6, final_candidates=3, selection_samples=16,
                rerank_top=2, rerank_steps=2)
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=32, seed=1), val_loader=random_batches(n=16, seed=2),
                        device=torch.device("cpu"), options=opts)
    res = run_method("graph-pruning", ctx)
    rows = res.info["rerank"]
    names = [r["name"] for r in rows]
    assert names[0] == "search-1" and any(n.startswith("l1-") for n in names)
    assert len([n for n in names if n.startswith("search-")]) <= 2
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["selection_acc"] == max(r["selection_acc"] for r in rows)
    assert res.info["rerank_choice"] == chosen["name"]
    f, _ = space.cost(res.masks)
    assert f <= 0.5 * space.base_flops * (1 + 1e-9)
    assert abs(float(f) / space.base_flops - chosen["kept_flops"]) < 1e-9


@pytest.mark.parametrize("name", ["amc", "evolution"])
def test_ancestor_rerank_and_its_checkpoint(space, tmp_path, name):
    """amc / evolution with rerank_top > 0 re-rank their best distinct configurations and the
    criteria's allocations (the winner is the result, its ratios reported); a finished search
    without re-ranking serves a re-ranked run (no new episode scored)."""
    plain = _run(space, name, tmp_path)
    assert "rerank" not in plain.info
    val = random_batches(n=16, seed=2)
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=24, bs=8), val_loader=val,
                        device=torch.device("cpu"), seed=3, checkpoint_dir=str(tmp_path),
                        resume=True, options=dict(TINY[name], rerank_top=3, rerank_steps=2))
    res = run_method(name, ctx)
    # the search was reused (amc: the final noise-free episode at most; evolution re-scores its
    # last generation, which its last checkpoint precedes)
    assert res.info["masked_evaluations"] <= TINY[name].get("population", 1)
    assert res.info["reward_curve"] == plain.info["reward_curve"]
    rows = res.info["rerank"]
    names = [r["name"] for r in rows]
    assert names[0] == "search-1" and any(n.startswith("l1-") for n in names)
    assert 1 <= len([n for n in names if n.startswith("search-")]) <= 3
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["selection_acc"] == max(r["selection_acc"] for r in rows)
    assert res.info["rerank_choice"] == chosen["name"]
    f, p = space.cost(res.masks)
    assert ctx.budget.feasible(f, p)
    assert abs(float(f) / space.base_flops - chosen["kept_flops"]) < 1e-9
    counts = [int(m.sum()) for m in res.masks]
    assert [round(res.info["ratios"][g.name] * g.size) for g in space.groups] == counts
    with pytest.raises(ValueError, match="rerank_screen_steps"):
        _run(space, name, None, rerank_top=2, rerank_steps=3, rerank_screen_steps=3)


def test_graph_pruning_checkpoint_serves_other_final_selections(space, tmp_path):
    """Options read only after the search are not in the search's fingerprint: a finished search
    is reused (no new episode scored) by a run that selects differently."""
    first = _run(space, "graph-pruning", tmp_path, final_candidates=3)
    again = _run(space, "graph-pruning", tmp_path, resume=True, final_candidates=0,
                 fill_budget=False)
    assert again.info["reward_curve"] == first.info["reward_curve"]
    assert again.info["masked_evaluations"] <= 1  # the final noise-free episode at most
    # a checkpoint written with fewer final candidates serves more, as an uninterrupted run would
    more = _run(space, "graph-pruning", tmp_path, resume=True, final_candidates=6)
    ref = _run(space, "graph-pruning", None, final_candidates=6)
    assert more.info["final_selection"] == ref.info["final_selection"]
    assert len(ref.info["final_selection"]) > 3
    with pytest.raises(ValueError, match="different work"):
        _run(space, "graph-pruning", tmp_path, resume=True, episodes=TINY["graph-pruning"]["episodes"],
             action_low=0.3)


# ----------------------------------------------------------------------------- resume
class _Killed(Exception):
    pass


def _kill_after(monkeypatch, owner, attr, calls):
    original = getattr(owner, attr)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise _Killed(attr)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapped)


def _run(space, name, tmp, resume=False, **extra):
    opts = dict(TINY[name], **extra)
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=24, bs=8), device=torch.device("cpu"), seed=3,
                        checkpoint_dir=None if tmp is None else str(tmp), resume=resume,
                        options=opts)
    return run_method(name, ctx)


def _same(a, b, keys):
    assert [m.tolist() for m in a.masks] == [m.tolist() for m in b.masks]
    for k in keys:
        assert a.info[k] == b.info[k], k


@pytest.mark.parametrize("phase", ["pruningnet", "search"])
def test_graph_pruning_resume_equals_uninterrupted(space, tmp_path, monkeypatch, phase):
    extra = dict(pruningnet_steps=5, pruningnet_checkpoint_every=2, checkpoint_every=2, episodes=6)
    ref = _run(space, "graph-pruning", None, **extra)
    with monkeypatch.context() as m:
        if phase == "pruningnet":
            _kill_after(m, pn.PruningNet, "subnet_forward", 3)
        else:
            _kill_after(m, pn.PruningNetScorer, "__call__", 3)
        with pytest.raises(_Killed):
            _run(space, "graph-pruning", tmp_path, **extra)
    res = _run(space, "graph-pruning", tmp_path, resume=True, **extra)
    assert res.info["pruningnet_resumed_from"] == (2 if phase == "pruningnet" else 5)
    _same(res, ref, ["reward_curve", "pruningnet_loss_curve", "ratios"])


def test_prune_resume_with_a_shuffling_augmenting_loader(space, tmp_path, monkeypatch):
    """Through prune(): the loader draws shuffling and augmentation from its own generator; a kill
    in the second epoch of PruningNet training, then resume=True, equals an uninterrupted run."""
    from gcnprune_fast.data import TensorBatchLoader, TensorImageDataset

    g = torch.Generator().manual_seed(0)
    ds = TensorImageDataset(torch.randn(24, 3, 16, 16, generator=g),
                            torch.randint(0, 10, (24,), generator=g), augment=True)
    loader = TensorBatchLoader(ds, batch_size=8, shuffle=True)
    opts = dict(TINY["graph-pruning"], pruningnet_steps=6, pruningnet_checkpoint_every=2)

    def run(**kw):
        return gcnprune_fast.prune(space.model, loader, method="graph-pruning", flops=0.5,
                                   progress=False, bn_batches=1, seed=1, **opts, **kw)

    ref = run()
    with monkeypatch.context() as m:
        _kill_after(m, pn.PruningNet, "subnet_forward", 5)  # killed in epoch 1 (3 batches/epoch)
        with pytest.raises(_Killed):
            run(checkpoint_dir=str(tmp_path))
    res = run(checkpoint_dir=str(tmp_path), resume=True)
    assert res.report["pruningnet_resumed_from"] == 4
    assert [m.tolist() for m in res.masks] == [m.tolist() for m in ref.masks]
    for k in ("pruningnet_loss_curve", "reward_curve", "ratios"):
        assert res.report[k] == ref.report[k], k


@pytest.mark.parametrize("name", ["amc", "evolution"])
def test_amc_and_evolution_resume_equal_uninterrupted(space, tmp_path, monkeypatch, name):
    from gcnprune_fast.methods.search import reward
    extra = dict(checkpoint_every=2) if name == "amc" else {}
    ref = _run(space, name, None, **extra)
    with monkeypatch.context() as m:
        _kill_after(m, reward.MaskScorer, "__call__", 8 if name == "evolution" else 3)
        with pytest.raises(_Killed):
            _run(space, name, tmp_path, **extra)
    res = _run(space, name, tmp_path, resume=True, **extra)
    _same(res, ref, ["reward_curve", "ratios"])


def test_resume_refuses_a_foreign_checkpoint(space, tmp_path):
    _run(space, "amc", tmp_path)
    with pytest.raises(ValueError, match="different work"):
        _run(space, "amc", tmp_path, resume=True, action_low=0.3)


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("name,options,error,match", [
    ("graph-pruning", {"episodes": 0}, ValueError, "episodes must be >= 1"),
    ("graph-pruning", {"agent": "sac"}, ValueError, "agent must be one of"),
    ("graph-pruning", {"weights": "big"}, ValueError, "weights must be one of"),
    ("graph-pruning", {"pruningnet_steps": -1}, ValueError, "pruningnet_steps must be >= 0"),
    ("graph-pruning", {"action_low": 1.0}, ValueError, "action_low must be < 1"),
    ("graph-pruning", {"final_weights": "pruningnet"}, ValueError, "checkpoint_dir"),
    ("graph-pruning", {"final_candidates": -1}, ValueError, "final_candidates must be >= 0"),
    ("graph-pruning", {"final_weights": "pruningnet", "rerank_top": 2, "checkpoint_dir": "x"},
     ValueError, "do not combine"),
    ("graph-pruning", {"epochs": 3}, TypeError, "unknown option"),
    ("amc", {"warmup": -1}, ValueError, "warmup must be >= 0"),
    ("amc", {"reward": "top5"}, ValueError, "reward must be one of"),
    ("evolution", {"parents": 60}, ValueError, "parents .* must be <= population"),
    ("evolution", {"mutation_prob": 2.0}, ValueError, "mutation_prob must be <= 1"),
])
def test_bad_options_give_clear_errors(space, name, options, error, match):
    with pytest.raises(error, match=match):
        gcnprune_fast.prune(space.model, random_batches(), method=name, flops=0.5,
                            progress=False, **options)
