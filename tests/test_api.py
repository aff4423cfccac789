"""gcnprune_fast.prune / PruneResult: report, saving, reproducibility, bad input, user model untouched."""
import json
import os

import pytest
import torch

import gcnprune_fast
from gcnprune_fast.models import get_model
from helpers import random_batches


def _loader(n=32, **kw):
    return random_batches(n=n, **kw)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return get_model("simple_cnn").train()  # train mode on purpose: must stay that way


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}, m.training


def _unchanged(m, snap):
    sd, training = snap
    assert m.training == training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items())


def test_prune_l1_report_and_save(model, tmp_path):
    snap = _snapshot(model)
    res = gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, progress=False,
                              bn_batches=2)
    _unchanged(model, snap)
    r = res.report
    for key in ("flops_before", "flops_after", "params_before", "params_after", "flops_ratio",
                "params_ratio", "acc_before", "acc_pruned", "acc_finetuned", "widths", "method",
                "allocation", "search_time_s", "episodes", "reward_curve", "seed"):
        assert key in r
    assert r["flops_ratio"] <= 0.5 and r["acc_finetuned"] is None
    assert r["flops_after"] < r["flops_before"]
    out = res.model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    assert sum(w["after"] for w in r["widths"]) < sum(w["before"] for w in r["widths"])
    paths = res.save(str(tmp_path), export_formats=("torchscript",))
    for name in ("plan.json", "weights.pt", "report.json", "report.md"):
        assert os.path.exists(tmp_path / name)
    assert os.path.exists(paths["torchscript"])
    sd = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(sd) == set(res.model.state_dict())
    assert json.load(open(paths["report"]))["method"] == "l1"
    rebuilt = gcnprune_fast.load_pruned(get_model("simple_cnn"), json.load(open(paths["plan"])), sd)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt.eval()(x), res.model.eval()(x))


def test_prune_channel_gcn_with_params_budget_and_finetune(model):
    snap = _snapshot(model)
    res = gcnprune_fast.prune(model, _loader(), flops=0.7, params=0.5, progress=False,
                              finetune_epochs=1, bn_batches=2, distill=True, episodes=4,
                              episodes_per_update=2, reward_samples=16, feature_samples=16)
    _unchanged(model, snap)
    r = res.report
    assert r["method"] == "channel-gcn" and r["episodes"] == 4 and len(r["reward_curve"]) == 4
    assert r["flops_ratio"] <= 0.7 and r["params_ratio"] <= 0.5
    assert r["acc_finetuned"] is not None


def test_prune_reproducible(model):
    a = gcnprune_fast.prune(model, _loader(), method="random", flops=0.5, progress=False, seed=5,
                            bn_batches=1)
    b = gcnprune_fast.prune(model, _loader(), method="random", flops=0.5, progress=False, seed=5,
                            bn_batches=1)
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))


def test_no_budget_means_the_documented_default(model):
    r = gcnprune_fast.prune(model, _loader(), method="l1", progress=False).report
    assert r["budget_defaulted"] and r["flops_budget"] == gcnprune_fast.api.DEFAULT_FLOPS
    assert r["round_to"] == 1  # channel multiples of 8 are the default for latency budgets only
    assert r["flops_ratio"] <= gcnprune_fast.api.DEFAULT_FLOPS + 1e-9
    explicit = gcnprune_fast.prune(model, _loader(), method="l1", flops=0.7, progress=False).report
    assert not explicit["budget_defaulted"] and explicit["flops_ratio"] > r["flops_ratio"]


def test_bad_budgets(model):
    for bad in (0, 1.2, -0.5):
        with pytest.raises(ValueError, match="outside"):
            gcnprune_fast.prune(model, _loader(), method="l1", flops=bad, progress=False)
    with pytest.raises(ValueError, match="minimum|below what"):
        gcnprune_fast.prune(model, _loader(), method="l1", flops=0.01, min_channels=32,
                            progress=False)


def test_bad_loaders_and_method(model):
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="empty"):
        gcnprune_fast.prune(model, [], method="l1", flops=0.5, progress=False)
    with pytest.raises(TypeError, match="inputs, targets"):
        gcnprune_fast.prune(model, [torch.randn(4, 3, 16, 16)], method="l1", flops=0.5,
                            progress=False)
    with pytest.raises(ValueError, match="valid methods.*channel-gcn"):
        gcnprune_fast.prune(model, _loader(), method="l3", flops=0.5, progress=False)
    with pytest.raises(ValueError, match="allocation"):
        gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, allocation="x",
                            progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        gcnprune_fast.prune(model, _loader(), flops=0.5, resume=True, progress=False)
    _unchanged(model, snap)


def test_nan_activations_name_the_group(model):
    with torch.no_grad():
        model.features[4].weight[0].fill_(float("nan"))
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="non-finite.*features"):
        gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, progress=False)
    sd, training = snap
    assert model.training == training
    assert torch.isnan(model.features[4].weight[0]).all()


def test_device_string_and_copy(model):
    snap = _snapshot(model)
    res = gcnprune_fast.prune(model, _loader(), method="l2", flops=0.6, device="cpu",
                              progress=False, bn_batches=1)
    assert res.model is not model
    _unchanged(model, snap)


# ----------------------------------------------------------------------------------------------
# what the accuracies are measured on (issue 9)
# ----------------------------------------------------------------------------------------------
@pytest.fixture()
def seen_context(monkeypatch):
    """The keyword arguments of the SearchContext that prune() builds (filled when it runs)."""
    from gcnprune_fast import api

    seen = {}
    real_ctx = api.SearchContext

    def spy(**kw):
        seen.update(kw)
        return real_ctx(**kw)

    monkeypatch.setattr(api, "SearchContext", spy)
    return seen


def test_accuracies_on_a_held_out_part_without_val_loader(model, seen_context):
    from gcnprune_fast.data import split_holdout
    from gcnprune_fast.training import evaluate

    seen = seen_context
    loader = _loader(n=128)  # 8 batches of 16: one is held out
    r = gcnprune_fast.prune(model, loader, method="l1", flops=0.5, progress=False,
                            bn_batches=2, finetune_epochs=1).report
    assert r["accuracy_set"] == "held-out" and r["held_out_images"] == 16
    split = split_holdout(loader, seed=0)
    assert r["acc_before"] == evaluate(model, split.held_out)
    # the search saw the other 7 batches only; methods select on the held-out one
    assert seen["loader"] == split.search and len(seen["loader"]) == 7
    assert seen["val_loader"] == split.held_out
    held = {id(x) for x, _ in split.held_out}
    assert not held & {id(x) for x, _ in seen["loader"]}
    md = gcnprune_fast.api.prune_report_markdown(r)
    assert "held-out: 16 images" in md and "accuracy before (held-out, 16 images)" in md


def test_accuracy_set_val_loader_and_too_small_loader(model):
    val = _loader(n=32)
    r = gcnprune_fast.prune(model, _loader(n=64), method="l1", flops=0.5, val_loader=val,
                            progress=False, bn_batches=1).report
    assert r["accuracy_set"] == "val_loader" and r["held_out_images"] is None
    one = _loader(n=16)  # one batch: nothing to hold out, the old behaviour, labelled
    r = gcnprune_fast.prune(model, one, method="l1", flops=0.5, progress=False,
                            bn_batches=1).report
    assert r["accuracy_set"] == gcnprune_fast.api.SEARCH_SET
    assert r["accuracy_set"] == "search-set (loader too small to hold out)"
    assert r["held_out_images"] is None
    assert "loader too small to hold out" in gcnprune_fast.api.prune_report_markdown(r)


@pytest.mark.parametrize("pass_loader_as_val", [False, True])
def test_methods_get_no_selection_data_when_it_is_the_search_data(model, seen_context,
                                                                   pass_loader_as_val):
    """A one-batch loader (nothing held out), or val_loader=loader: the method's val_loader is
    None, so nothing downstream mistakes the search data for held-out data (channel-gcn's
    re-ranking keeps the search's best mask, and it keeps no held-out curve)."""
    seen = seen_context
    one = _loader(n=16)
    extra = {"val_loader": one} if pass_loader_as_val else {}
    r = gcnprune_fast.prune(model, one, method="channel-gcn", flops=0.5, progress=False,
                            bn_batches=1, episodes=4, episodes_per_update=2, reward_samples=16,
                            feature_samples=16, rerank_top=2, **extra).report
    assert seen["val_loader"] is None
    assert r["rerank"] is None and "greedy_heldout_curve" not in r


def test_held_out_images_count_what_eval_batches_evaluates(model):
    from gcnprune_fast.data import TensorBatchLoader, synthetic_dataset

    loader = TensorBatchLoader(synthetic_dataset(400, image_size=16), 16, shuffle=True)
    r = gcnprune_fast.prune(model, loader, method="l1", flops=0.5, progress=False, bn_batches=1,
                            eval_batches=2).report
    assert r["accuracy_set"] == "held-out" and r["held_out_images"] == 32  # 2 of 3 batches
    assert loader.indices is None and loader.generator is None  # the user's loader untouched


def test_greedy_curve_in_the_report(model):
    r = gcnprune_fast.prune(model, _loader(n=64), flops=0.6, progress=False, bn_batches=1,
                            episodes=4, episodes_per_update=2, reward_samples=16,
                            feature_samples=16).report
    assert len(r["greedy_curve"]) == 2 and len(r["reward_curve"]) == 4
    assert "greedy-mask reward" in gcnprune_fast.api.prune_report_markdown(r)
    l1 = gcnprune_fast.prune(model, _loader(), method="l1", flops=0.6, progress=False).report
    assert l1["greedy_curve"] == [] and "greedy-mask" not in gcnprune_fast.api.prune_report_markdown(l1)
