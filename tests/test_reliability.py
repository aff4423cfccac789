"""Reliability of prune(): checkpoints (fingerprinted, read only on resume), concurrent calls,
label / device / loader checks before heavy work, the cost-model check, malformed plans."""
import copy
import json
import logging
import threading

import pytest
import torch

import gcnprune_fast
from gcnprune_fast import training
from gcnprune_fast.api import FINETUNE_CHECKPOINT
from gcnprune_fast.data import TensorBatchLoader, synthetic_dataset
from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace
from gcnprune_fast.space.plans import MAX_INPUT_ELEMENTS, load_pruned, validate_plan
from helpers import random_batches

FAST = dict(progress=False, bn_batches=1)
GCN_TINY = dict(episodes=4, episodes_per_update=2, reward_samples=16, feature_samples=16)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return get_model("simple_cnn").eval()


def _loader(n=32, **kw):
    return random_batches(n=n, **kw)


def _forbid_search(monkeypatch, name):
    """Make method ``name`` fail the test if it runs (errors must come before the search)."""
    import dataclasses

    from gcnprune_fast.methods import get_method, registry

    def run(ctx):
        pytest.fail(f"the search of {name} ran")

    monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(get_method(name), run=run))


class _NoIteration:
    """A loader that fails the test when iterated (errors must come before any data is read)."""

    def __iter__(self):
        pytest.fail("the loader was iterated")


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------
# 1. checkpoints
# ----------------------------------------------------------------------------------------------
def test_finished_runs_checkpoint_is_not_reused_without_resume(model, tmp_path):
    """The reported bug: a second run in the same checkpoint_dir got the first run's weights."""
    d = str(tmp_path / "ckpt")
    gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, finetune_epochs=1,
                        checkpoint_dir=d, **FAST)
    assert (tmp_path / "ckpt" / FINETUNE_CHECKPOINT).is_file()
    second = gcnprune_fast.prune(model, _loader(), method="random", flops=0.5, finetune_epochs=1,
                                 checkpoint_dir=d, **FAST)
    plain = gcnprune_fast.prune(model, _loader(), method="random", flops=0.5, finetune_epochs=1,
                                **FAST)
    assert _same_model(second.model, plain.model)
    saved = torch.load(tmp_path / "ckpt" / FINETUNE_CHECKPOINT, weights_only=True)
    fp = saved["fingerprint"]
    assert fp["method"] == "random" and fp["flops_budget"] == 0.5 and fp["prune_seed"] == 0
    assert fp["finetune_epochs"] == 1 and len(fp["plan"]) == 16


def test_resume_refuses_another_runs_checkpoint_before_the_search(model, tmp_path, monkeypatch):
    d = str(tmp_path / "ckpt")
    gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, finetune_epochs=1,
                        checkpoint_dir=d, **FAST)
    _forbid_search(monkeypatch, "l1")
    for changes, key in (({"flops": 0.6}, "flops_budget"), ({"seed": 1}, "prune_seed"),
                         ({"finetune_lr": 0.1}, "finetune_lr"),
                         ({"allocation": "uniform"}, "options")):
        kw = dict(flops=0.5, finetune_epochs=1, **FAST)
        kw.update(changes)
        with pytest.raises(ValueError, match=key):
            gcnprune_fast.prune(model, _loader(), method="l1", checkpoint_dir=d, resume=True, **kw)


def test_resume_with_nothing_to_resume_says_so(model, tmp_path):
    empty = str(tmp_path / "empty")
    for method, kw in (("l1", {"finetune_epochs": 1}), ("l1", {}), ("channel-gcn", GCN_TINY)):
        with pytest.raises(ValueError, match="nothing to resume"):
            gcnprune_fast.prune(model, _loader(), method=method, flops=0.5, checkpoint_dir=empty,
                                resume=True, **kw, **FAST)


def test_criteria_resume_reruns_search_and_resumes_finetune(model, tmp_path, monkeypatch, caplog):
    """An interrupted fine-tune of a non-resumable method: resume reruns the (deterministic)
    search with one logged line, continues the fine-tune, and equals an uninterrupted run."""
    ref = gcnprune_fast.prune(model, _loader(), method="l2", flops=0.5, finetune_epochs=2, **FAST)
    d = str(tmp_path / "ckpt")
    real_epoch = training._train_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        gcnprune_fast.prune(model, _loader(), method="l2", flops=0.5, finetune_epochs=2,
                            checkpoint_dir=d, **FAST)
    monkeypatch.setattr(training, "_train_epoch", real_epoch)
    with caplog.at_level(logging.INFO, logger="gcnprune_fast"):
        res = gcnprune_fast.prune(model, _loader(), method="l2", flops=0.5, finetune_epochs=2,
                                  checkpoint_dir=d, resume=True, **FAST)
    lines = [r.getMessage() for r in caplog.records if "rerunning its search" in r.getMessage()]
    assert len(lines) == 1 and "'l2'" in lines[0]
    assert res.report["resumed"] and res.report["acc_finetuned"] == ref.report["acc_finetuned"]
    for a, b in zip(ref.model.state_dict().values(), res.model.state_dict().values()):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# 2. concurrent calls
# ----------------------------------------------------------------------------------------------
def test_concurrent_prunes_equal_sequential_ones(model):
    """Threads sharing one shuffled, augmented loader: each call draws from its own generators
    (the shared loader is never re-seeded), so the results equal sequential runs."""
    ds = synthetic_dataset(64, image_size=16, seed=0)
    ds.augment = True
    shared = TensorBatchLoader(ds, 16, shuffle=True)
    jobs = [("channel-gcn", 0, GCN_TINY), ("random", 1, {}), ("l1", 2, {}), ("random", 3, {})]

    def run(method, seed, opts):
        return gcnprune_fast.prune(model, shared, method=method, flops=0.5, seed=seed,
                                   finetune_epochs=1, eval_batches=2, **opts, **FAST)

    sequential = [run(*job) for job in jobs]
    results, errors = [None] * len(jobs), []

    def worker(i):
        try:
            results[i] = run(*jobs[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert shared.generator is None
    for seq, par in zip(sequential, results):
        assert all(torch.equal(a, b) for a, b in zip(seq.masks, par.masks))
        for key in ("acc_before", "acc_pruned", "acc_finetuned", "reward_curve"):
            assert seq.report[key] == par.report[key], key
        assert _same_model(seq.model, par.model)


def test_prune_leaves_global_rng_alone(model):
    torch.manual_seed(11)
    state = torch.get_rng_state()
    gcnprune_fast.prune(model, _loader(), method="random", flops=0.5, finetune_epochs=1, **FAST)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------------------------
# 3. labels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, shown", [(10, "10"), (-1, "-1")])
@pytest.mark.parametrize("where", ["loader", "val_loader", "train_loader"])
def test_out_of_range_labels_are_named_before_the_search(model, monkeypatch, bad, shown, where):
    batches = _loader()
    broken = [(x, y.clone()) for x, y in batches]
    broken[0][1][3] = bad
    _forbid_search(monkeypatch, "l1")
    kw = {where: broken} if where != "loader" else {}
    with pytest.raises(ValueError, match=rf"label {shown}, outside the valid range \[0, 9\]"):
        gcnprune_fast.prune(model, broken if where == "loader" else batches, method="l1",
                            flops=0.5, finetune_epochs=1, **kw, **FAST)


# ----------------------------------------------------------------------------------------------
# 4. the cost model is checked against the pruned model
# ----------------------------------------------------------------------------------------------
def test_report_counts_the_pruned_model(model):
    r = gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, **FAST).report
    assert r["flops_after_measured"] == r["flops_after"]
    assert r["params_after_measured"] == r["params_after"]
    assert r["cost_model_mismatch"] is False and r["cost_model_error"] == 0.0


def test_wrong_cost_model_is_flagged(model, monkeypatch):
    real_cost = PruningSpace.cost

    def optimistic(self, masks):  # predicts half the real FLOPs of a pruned network
        f, p = real_cost(self, masks)
        return (f // 2, p) if not all(bool(m.all()) for m in masks) else (f, p)

    monkeypatch.setattr(PruningSpace, "cost", optimistic)
    with pytest.warns(RuntimeWarning, match="cost model mismatch"):
        r = gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, **FAST).report
    assert r["cost_model_mismatch"] is True and r["cost_model_error"] > 0.4
    assert r["flops_after_measured"] > r["flops_after"]


# ----------------------------------------------------------------------------------------------
# 5. malformed plans
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan():
    torch.manual_seed(0)
    space = PruningSpace(get_model("simple_cnn").eval(), torch.randn(2, 3, 16, 16))
    masks = [torch.arange(g.size) % 2 == 0 for g in space.groups]
    return json.loads(json.dumps(space.plan(masks)))


def _broken(plan, edit):
    p = copy.deepcopy(plan)
    edit(p)
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.pop("groups"), "required key 'groups' is missing"),
    (lambda p: p.pop("input_dtypes"), "'input_dtypes' is missing"),
    (lambda p: p.update(input_dtypes=["float99"]), r"input_dtypes\[0\] must be a torch dtype"),
    (lambda p: p.update(input_dtypes=["Tensor"]), r"input_dtypes\[0\] must be a torch dtype"),
    (lambda p: p.update(input_shapes=[[1, 3, 4096, 4096]]), "more than the limit"),
    (lambda p: p.update(input_shapes=[[2, 3, 0, 16]]), r"input_shapes\[0\] must be"),
    (lambda p: p.update(input_shapes=[]), "'input_shapes' is empty"),
    (lambda p: p.update(round_to=0), "'round_to' must be >= 1"),
    (lambda p: p.update(round_to="8"), "'round_to' must be a positive int"),
    (lambda p: p["groups"][1].update(kept=[float(k) for k in p["groups"][1]["kept"]]),
     r"groups\[1\].*int channel indices, got 0.0"),
    (lambda p: p["groups"][0].update(kept=[2, 0, 4]), r"groups\[0\].*sorted with no repeats"),
    (lambda p: p["groups"][0].update(kept=[0, 0, 2]), r"groups\[0\].*sorted with no repeats"),
    (lambda p: p["groups"][0].update(kept=[0, 2, p["groups"][0]["size"]]),
     r"groups\[0\].*index (\d+), outside \[0, \d+\] \(size \1\)"),
    (lambda p: p["groups"][0].update(kept=[]), r"groups\[0\].*keeps no channel"),
    (lambda p: p["groups"][0].pop("root"), r"groups\[0\] lacks the key 'root'"),
    (lambda p: p["groups"].append(dict(p["groups"][0])), "repeats the name"),
    (lambda p: p.update(format="other"), "not a pruning plan"),
])
def test_malformed_plans_name_the_key(plan, edit, message):
    bad = _broken(plan, edit)
    with pytest.raises(ValueError, match=message):
        validate_plan(bad)
    with pytest.raises(ValueError, match=message):  # before any tracing
        load_pruned(get_model("simple_cnn"), bad)


def test_valid_plan_passes_and_loads(plan):
    validate_plan(plan)
    assert load_pruned(get_model("simple_cnn"), plan)(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    big = _broken(plan, lambda p: p.update(input_shapes=[[1, 3, 2048, 2048]]))
    validate_plan(big, max_input_elements=2 * 3 * 2048 * 2048)
    assert MAX_INPUT_ELEMENTS < 3 * 2048 * 2048
    with pytest.raises(ValueError, match="not a pruning plan"):
        validate_plan([plan])


# ----------------------------------------------------------------------------------------------
# 6. bad input, before heavy work
# ----------------------------------------------------------------------------------------------
def test_meta_device_model(model):
    with torch.device("meta"):
        meta = get_model("simple_cnn")
    with pytest.raises(ValueError, match="meta device"):
        gcnprune_fast.prune(meta, _loader(), method="l1", flops=0.5, **FAST)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(model):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, device="cuda", **FAST)


def test_bad_device_string(model):
    with pytest.raises(ValueError, match="not a torch device"):
        gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, device="gpu0", **FAST)


@pytest.mark.parametrize("where", ["loader", "val_loader", "train_loader"])
def test_one_shot_loader_must_be_reiterable(model, where):
    gen = (b for b in _loader())
    args = (gen,) if where == "loader" else (_loader(),)
    kw = {} if where == "loader" else {where: gen}
    with pytest.raises(TypeError, match=rf"{where} is a one-shot iterator.*re-iterable"):
        gcnprune_fast.prune(model, *args, method="l1", flops=0.5, **kw, **FAST)


@pytest.mark.parametrize("method, options, error, message", [
    ("hrank", {"hrank_samples": 0}, ValueError, "hrank_samples must be >= 1"),
    ("hrank", {"hrank_samples": "many"}, ValueError, "expects an integer"),
    ("channel-gcn", {"episodes": 2.5}, TypeError, "episodes must be int"),
])
def test_bad_option_values_rejected_up_front(model, method, options, error, message):
    with pytest.raises(error, match=message):
        gcnprune_fast.prune(model, _NoIteration(), method=method, flops=0.5, **options, **FAST)


def test_bad_channels_last_rejected_up_front(model):
    with pytest.raises(ValueError, match="channels_last must be None"):
        gcnprune_fast.prune(model, _NoIteration(), method="l1", flops=0.5, channels_last="yes",
                            **FAST)


def test_fine_tune_in_channels_last_returns_default_format(model, monkeypatch):
    from gcnprune_fast import training

    switched = []
    to_channels_last = training._to_channels_last
    monkeypatch.setattr(training, "_to_channels_last",
                        lambda m: switched.append(m) or to_channels_last(m))
    res = gcnprune_fast.prune(model, _loader(), method="l1", flops=0.5, finetune_epochs=1,
                              channels_last=True, **FAST)
    assert res.report["acc_finetuned"] is not None
    assert switched == [res.model]  # the fine-tune ran in channels_last ...
    assert all(p.is_contiguous() for p in res.model.parameters())  # ... and switched back
