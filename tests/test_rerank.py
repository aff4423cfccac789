"""Re-ranking candidates by selection accuracy after a short fine-tune (methods/search/rerank.py)."""
import pytest
import torch

from gcnprune_fast import training
from gcnprune_fast.methods import Budget, SearchContext, allocate, channel_gcn, graph_pruning
from gcnprune_fast.methods.registry import get_method
from gcnprune_fast.methods.criteria import l1_scores
from gcnprune_fast.methods.search.rerank import CRITERION_CANDIDATES, criterion_candidates, rerank
from helpers import random_batches, simple_cnn_space


@pytest.fixture(scope="module")
def space():
    return simple_cnn_space()


def test_criterion_candidates_meet_the_budget_and_include_l1(space):
    budget = Budget.from_ratios(space, 0.5)
    cands = criterion_candidates(space, budget)
    assert [name for name, _ in cands] == list(CRITERION_CANDIDATES)
    for name, masks in cands:
        f, p = space.cost(masks)
        assert budget.feasible(f, p), name
        space.validate_masks(masks)
    # the first is exactly the library's global-L1 allocation (channel-gcn's warm start)
    l1 = allocate(space, l1_scores(space), budget, allocation="global")
    assert all(torch.equal(a, b) for a, b in zip(cands[0][1], l1))
    # mean-normalized ranking differs from the z-scored one on this net (a real alternative)
    assert any(not torch.equal(a, b) for a, b in zip(cands[0][1], cands[1][1]))


def test_rerank_scores_each_distinct_candidate_once_and_picks_the_best(space):
    loader, val = random_batches(n=32, seed=1), random_batches(n=32, seed=2)
    budget = Budget.from_ratios(space, 0.5)
    cands = criterion_candidates(space, budget)
    dup = [("copy-of-first", cands[0][1])]
    masks, rows = rerank(space, cands + dup, loader=loader, val_loader=val, device="cpu",
                         steps=2, seed=0)
    names = [r["name"] for r in rows]
    assert "copy-of-first" not in names and len(rows) == len({n for n in names})
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["selection_acc"] == max(r["selection_acc"] for r in rows)
    by_name = dict(cands)
    assert all(torch.equal(a, b) for a, b in zip(masks, by_name[chosen[0]["name"]]))
    # the winner's row is reproducible: the same short fine-tune from the same seed
    compact = space.prune(masks)
    training.recalibrate_bn(compact, loader, num_batches=10)
    training.train(compact, loader, 1, lr=0.01, progress=False, seed=0, max_steps_per_epoch=2)
    assert training.evaluate(compact, val) == pytest.approx(chosen[0]["selection_acc"])


def test_rerank_logs_an_estimate_after_its_first_candidate(space, caplog):
    loader, val = random_batches(n=32, seed=1), random_batches(n=32, seed=2)
    cands = criterion_candidates(space, Budget.from_ratios(space, 0.5))
    with caplog.at_level("INFO", logger="gcnprune_fast"):
        _, rows = rerank(space, cands, loader=loader, val_loader=val, device="cpu", steps=2,
                         seed=0)
    left = (len(rows) - 1) * 2
    estimates = [m for m in caplog.messages if m.startswith("re-rank: about")]
    assert len(estimates) == 1 and estimates[0].endswith(f"for the {left} fine-tune steps left")


def test_rerank_screening_gives_survivors_their_full_scores(space):
    loader, val = random_batches(n=32, seed=1), random_batches(n=32, seed=2)
    cands = criterion_candidates(space, Budget.from_ratios(space, 0.4))
    _, full = rerank(space, cands, loader=loader, val_loader=val, device="cpu", steps=3, seed=0)
    masks, rows = rerank(space, cands, loader=loader, val_loader=val, device="cpu", steps=3,
                         seed=0, screen_steps=1, screen_keep=2)
    assert len(rows) == len(full) > 2 and all(r["screen_acc"] is not None for r in rows)
    finalists = [r for r in rows if r["selection_acc"] is not None]
    assert len(finalists) == 2
    # the finalists are the screen's best two (ties to the earlier candidate) ...
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["screen_acc"], i))
    assert {rows[i]["name"] for i in order[:2]} == {r["name"] for r in finalists}
    # ... and their full fine-tune starts again from the pruned weights: the same score as
    # without screening, so the winner is the full re-ranking's among them
    by_name = {r["name"]: r for r in full}
    for r in finalists:
        assert r["selection_acc"] == pytest.approx(by_name[r["name"]]["selection_acc"])
    chosen = [r for r in rows if r["chosen"]]
    assert chosen == [max(finalists, key=lambda r: r["selection_acc"])]
    assert all(torch.equal(a, b) for a, b in zip(masks, dict(cands)[chosen[0]["name"]]))
    # no more candidates than survivors: nothing to screen
    _, few = rerank(space, cands[:2], loader=loader, val_loader=val, device="cpu", steps=3,
                    seed=0, screen_steps=1, screen_keep=2)
    assert all(r["screen_acc"] is None and r["selection_acc"] is not None for r in few)
    with pytest.raises(ValueError, match="screen_steps"):
        rerank(space, cands, loader=loader, val_loader=val, device="cpu", steps=3, screen_steps=3)


def test_rerank_screen_options_are_checked_before_the_search(space, monkeypatch):
    def no_features(*args, **kwargs):
        raise AssertionError("the search started")

    monkeypatch.setattr(channel_gcn, "collect_features", no_features)
    opts = {"rerank_top": 2, "rerank_steps": 10, "rerank_screen_steps": 10}
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=16), val_loader=random_batches(n=16, seed=5),
                        device=torch.device("cpu"), options=opts)
    with pytest.raises(ValueError, match="rerank_screen_steps"):
        channel_gcn.search(space, ctx)


def test_rerank_refuses_without_selection_data(space):
    loader = random_batches(n=16)
    cands = criterion_candidates(space, Budget.from_ratios(space, 0.5))
    with pytest.raises(ValueError, match="selection data"):
        rerank(space, cands, loader=loader, val_loader=None, device="cpu", steps=1)
    with pytest.raises(ValueError, match="selection data"):
        rerank(space, cands, loader=loader, val_loader=loader, device="cpu", steps=1)


def test_channel_gcn_rerank_returns_a_scored_candidate(space):
    opts = {"episodes": 6, "episodes_per_update": 3, "reward_samples": 16, "feature_samples": 16,
            "rerank_top": 2, "rerank_steps": 2}
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=48), val_loader=random_batches(n=32, seed=5),
                        device=torch.device("cpu"), options=opts)
    result = channel_gcn.search(space, ctx)
    rows = result.info["rerank"]
    assert rows and sum(r["chosen"] for r in rows) == 1
    assert result.info["rerank_choice"] in [r["name"] for r in rows]
    assert {r["name"] for r in rows} >= {"search-1"}
    f, p = space.cost(result.masks)
    assert ctx.budget.feasible(f, p)
    # without selection data re-ranking is skipped, the search's best mask kept
    ctx_no_val = SearchContext(space=space, budget=ctx.budget, loader=ctx.loader,
                               device=ctx.device, options=opts)
    plain = channel_gcn.search(space, ctx_no_val)
    assert plain.info["rerank"] is None


def test_rerank_greedy_adds_the_best_held_out_greedy_mask(space, monkeypatch):
    from gcnprune_fast.methods.search import rerank as rerank_module
    scored, offered = [], []
    real_note, real_rerank = channel_gcn._ChannelSearch.note_heldout, rerank_module.rerank

    def note(self, masks):
        reward = real_note(self, masks)
        scored.append((reward, [m.clone() for m in masks]))
        return reward

    def spy(space_, candidates, **kwargs):
        offered.append(list(candidates))
        return real_rerank(space_, candidates, **kwargs)

    monkeypatch.setattr(channel_gcn._ChannelSearch, "note_heldout", note)
    monkeypatch.setattr(rerank_module, "rerank", spy)
    opts = {"episodes": 9, "episodes_per_update": 3, "reward_samples": 16, "feature_samples": 16,
            "heldout_samples": 16, "rerank_top": 2, "rerank_steps": 1, "rerank_criteria": False,
            "lr": 0.05}
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.4),
                        loader=random_batches(n=48), val_loader=random_batches(n=32, seed=5),
                        device=torch.device("cpu"), options={**opts, "rerank_greedy": True})
    result = channel_gcn.search(space, ctx)
    # the greedy masks of the 3 updates and the final one were scored on held-out images
    assert len(scored) == 4
    best = max(scored, key=lambda t: t[0])[1]  # the first of equal scores, as the search keeps

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    (candidates,) = offered
    names = [n for n, _ in candidates]
    assert names == ["search-1", "search-2", "greedy-heldout"]
    assert same(candidates[2][1], best)
    # scored once: under the search's name when it is one of the search's best masks already
    rows = [r["name"] for r in result.info["rerank"]]
    duplicate = any(same(m, best) for _, m in candidates[:2])
    assert ("greedy-heldout" in rows) != duplicate
    assert result.info["rerank_choice"] in names
    # off (the default): the same search offers its best masks only
    offered.clear()
    channel_gcn.search(space, SearchContext(space=space, budget=ctx.budget, loader=ctx.loader,
                                            val_loader=ctx.val_loader, device=ctx.device,
                                            options=opts))
    assert [n for n, _ in offered[0]] == ["search-1", "search-2"]


@pytest.mark.parametrize("bad", [{"heldout_samples": 0}, {"rerank_top": 0},
                                 {"search": "random"}])
def test_rerank_greedy_needs_a_held_out_curve_and_a_re_ranking(space, bad):
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=16), val_loader=random_batches(n=16, seed=5),
                        device=torch.device("cpu"),
                        options={"rerank_greedy": True, "rerank_top": 2, **bad})
    with pytest.raises(ValueError, match="rerank_greedy"):
        channel_gcn.search(space, ctx)


def test_rerank_amp_reaches_the_short_fine_tunes(space, monkeypatch):
    seen = []
    real_train = training.train

    def spy(*args, **kwargs):
        seen.append(kwargs.get("amp"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", spy)
    opts = {"episodes": 4, "episodes_per_update": 2, "reward_samples": 16, "feature_samples": 16,
            "rerank_top": 1, "rerank_steps": 2, "rerank_amp": "bf16"}
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=48), val_loader=random_batches(n=32, seed=5),
                        device=torch.device("cpu"), options=opts)
    result = channel_gcn.search(space, ctx)
    assert seen and set(seen) == {"bf16"} and len(seen) == len(result.info["rerank"])
    bad = SearchContext(space=space, budget=ctx.budget, loader=ctx.loader, val_loader=ctx.val_loader,
                        device=ctx.device, options={**opts, "rerank_amp": "fp8"})
    with pytest.raises(ValueError, match="rerank_amp"):
        channel_gcn.search(space, bad)


def test_channel_gcn_checkpoint_serves_other_rerank_settings(space):
    budget = Budget.from_ratios(space, 0.5)
    resolve = get_method("channel-gcn").resolve_options
    base = channel_gcn._fingerprint(space, budget, 0, resolve({"rerank_top": 4}))
    after = {"rerank_steps": 50, "rerank_amp": "bf16", "rerank_screen_steps": 10,
             "rerank_screen_keep": 3, "rerank_lr": 0.02, "rerank_criteria": False,
             "rerank_greedy": True}
    assert channel_gcn._fingerprint(space, budget, 0, resolve({"rerank_top": 4, **after})) == base
    # rerank_top is not: the search keeps that many best masks in its state
    assert channel_gcn._fingerprint(space, budget, 0, resolve({"rerank_top": 2})) != base


def test_graph_pruning_checks_the_screen_options_too(space):
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, 0.5),
                        loader=random_batches(n=16), val_loader=random_batches(n=16, seed=5),
                        device=torch.device("cpu"),
                        options={"rerank_top": 2, "rerank_steps": 5, "rerank_screen_steps": 8})
    with pytest.raises(ValueError, match="rerank_screen_steps"):
        graph_pruning.search(space, ctx)
