"""Least-squares reconstruction of the layers that read pruned channels (space/reconstruct.py)."""
import pytest
import torch
import torch.nn as nn

from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace
from gcnprune_fast.space.reconstruct import reconstruct

from helpers import half_masks, simple_cnn_space

torch.set_num_threads(1)


def _batches(n=3, bs=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, size, size, generator=g) for _ in range(n)]


def _output_error(model, reference, batches):
    with torch.no_grad():
        return sum(float((model(x) - reference(x)).pow(2).mean()) for x in batches)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20"])
def test_reconstruction_brings_the_pruned_output_closer_to_the_original(name):
    torch.manual_seed(0)
    model = get_model(name).eval()
    space = PruningSpace(model, torch.randn(2, 3, 16, 16))
    masks, batches = half_masks(space), _batches(n=4, bs=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = space.prune(masks).eval()
    refit = reconstruct(space, masks, batches)
    # the same architecture: only weights differ
    assert [p.shape for p in plain.parameters()] == [p.shape for p in refit.parameters()]
    err_plain = _output_error(plain, model, batches)
    err_refit = _output_error(refit, model, batches)
    assert err_refit < 0.9 * err_plain, (err_refit, err_plain)
    # and on data the refit never saw
    held_out = _batches(n=4, bs=32, seed=1)
    assert _output_error(refit, model, held_out) < _output_error(plain, model, held_out)
    # the user's model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_nothing_pruned_refits_to_the_original_function():
    space = simple_cnn_space()
    full = space.full_masks()
    batches = _batches()
    refit = reconstruct(space, full, batches, ridge=0.0)
    assert _output_error(refit, space.model, batches) < 1e-8
    # layers="pruned" refits nothing when nothing is pruned: the weights are the original ones
    same = reconstruct(space, full, batches, layers="pruned")
    for (k, a), b in zip(space.model.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), k


def test_only_layers_that_lose_inputs_are_refit_with_layers_pruned():
    space = simple_cnn_space()
    masks = space.full_masks()
    g = [grp.name for grp in space.groups].index("features.4")
    masks[g] = half_masks(space)[g]  # the 2nd conv's outputs: only the 3rd conv loses inputs
    refit = reconstruct(space, masks, _batches(n=3, bs=64), layers="pruned")
    plain = space.prune(masks)
    changed = {n for (n, a), b in zip(plain.named_parameters(), refit.parameters())
               if not torch.equal(a, b)}
    assert changed == {"features.8.weight"}


def test_bad_arguments_are_refused_before_work():
    space = simple_cnn_space()
    masks = space.full_masks()
    with pytest.raises(ValueError, match="layers="):
        reconstruct(space, masks, _batches(), layers="some")
    with pytest.raises(ValueError, match="at least one batch"):
        reconstruct(space, masks, [])
    with pytest.raises(ValueError, match="ridge"):
        reconstruct(space, masks, _batches(), ridge=-1.0)
    bad = [m.clone() for m in masks]
    bad[0] = torch.zeros_like(bad[0])
    with pytest.raises(ValueError):
        reconstruct(space, bad, _batches())


def test_grouped_convs_are_left_as_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    space = PruningSpace(model, torch.randn(2, 3, 8, 8))
    masks = half_masks(space)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    refit, plain = reconstruct(space, masks, batches), space.prune(masks)
    assert torch.equal(dict(refit.named_parameters())["2.weight"],
                       dict(plain.named_parameters())["2.weight"])
    assert _output_error(refit, model, batches) < _output_error(plain, model, batches)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1),
                                    dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(3, 1), dilation=2, padding=(2, 0)),
                                    dict(kernel_size=1, stride=2)])
def test_gathered_patches_equal_unfold_columns(kwargs):
    from gcnprune_fast.space.reconstruct import _features
    conv = nn.Conv2d(4, 5, **kwargs)
    x = torch.randn(3, 4, 9, 7)
    cols = torch.nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation,
                                      padding=conv.padding, stride=conv.stride)
    every = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    pick = torch.randperm(every.shape[0])[:17]
    assert torch.equal(_features(conv, x, pick), every[pick])


def test_prune_reconstructs_the_result_and_reports_it(monkeypatch):
    from gcnprune_fast import prune, training
    from helpers import random_batches

    recalibrated = []
    real = training.recalibrate_bn
    monkeypatch.setattr(training, "recalibrate_bn",
                        lambda *a, **k: recalibrated.append(1) or real(*a, **k))

    torch.manual_seed(0)
    model = get_model("simple_cnn").eval()
    loader, val = random_batches(n=64, bs=32), random_batches(n=32, seed=3)
    plain = prune(model, loader, method="l1", flops=0.5, val_loader=val, progress=False)
    assert recalibrated and plain.report["bn_reestimated"]
    recalibrated.clear()
    refit = prune(model, loader, method="l1", flops=0.5, val_loader=val, progress=False,
                  reconstruct="all", reconstruct_images=64)
    assert plain.report["reconstruct"] is None and plain.report["reconstruct_time_s"] is None
    assert refit.report["reconstruct"] == "all" and refit.report["reconstruct_time_s"] >= 0
    # re-estimated statistics are tried on a copy and kept only if they score better
    assert recalibrated and isinstance(refit.report["bn_reestimated"], bool)
    assert [w["after"] for w in refit.report["widths"]] == \
        [w["after"] for w in plain.report["widths"]]
    shapes = [p.shape for p in plain.model.parameters()]
    assert shapes == [p.shape for p in refit.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in
               zip(plain.model.parameters(), refit.model.parameters()))


@pytest.mark.parametrize("kwargs, match", [({"reconstruct": "yes"}, "reconstruct="),
                                           ({"reconstruct": "all", "reconstruct_images": 0},
                                            "reconstruct_images")])
def test_prune_refuses_bad_reconstruct_arguments_before_work(kwargs, match, monkeypatch):
    from gcnprune_fast import prune
    from gcnprune_fast.space import pruning_space
    from helpers import random_batches

    def no_work(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(pruning_space.PruningSpace, "__init__", no_work)
    with pytest.raises(ValueError, match=match):
        prune(get_model("simple_cnn"), random_batches(), method="l1", flops=0.5, **kwargs)


def test_rerank_candidates_are_reconstructed_like_the_result(monkeypatch):
    from gcnprune_fast.methods import Budget
    from gcnprune_fast.methods.search import rerank as rerank_module
    from helpers import random_batches

    space = simple_cnn_space()
    calls = []
    real = rerank_module.space_reconstruct

    def spy(space_, masks, batches, **kw):
        calls.append((sum(b.shape[0] for b in batches), kw.get("layers")))
        return real(space_, masks, batches, **kw)

    monkeypatch.setattr(rerank_module, "space_reconstruct", spy)
    cands = rerank_module.criterion_candidates(space, Budget.from_ratios(space, 0.5))
    _, rows = rerank_module.rerank(space, cands, loader=random_batches(n=64, bs=16),
                                   val_loader=random_batches(n=16, seed=4), device="cpu",
                                   steps=1, reconstruct="pruned", reconstruct_images=40)
    assert calls == [(40, "pruned")] * len(rows)


@pytest.mark.parametrize("reestimated_better", [True, False])
def test_refit_keeps_the_bn_statistics_that_score_better(reestimated_better, monkeypatch):
    from gcnprune_fast import api, training

    def fake_recalibrate(model, *a, **k):
        model.marker = True
        return model

    def fake_evaluate(model, *a, **k):
        return 0.9 if getattr(model, "marker", False) == reestimated_better else 0.5

    monkeypatch.setattr(training, "recalibrate_bn", fake_recalibrate)
    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    model = get_model("simple_cnn").eval()
    chosen, acc, reestimated = api._refit_statistics(model, [], [], 5, None, "cpu")
    assert acc == 0.9 and reestimated == reestimated_better
    assert (chosen is model) != reestimated_better
    assert not hasattr(model, "marker")  # the re-estimation ran on a copy
