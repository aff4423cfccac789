"""Model-zoo coverage: every torchvision classification model through the pruning space.

For each model (weights=None, 10 classes, small input): build the space, prune ~30% of every
group, run the pruned model (output shape), ``torch.jit.trace`` it, compare the analytic cost
model with torch-pruning's counter (original and pruned, within 1%) and compare masked evaluation
with the pruned model. Models the space cannot handle must fail with our clear error
(RuntimeError/ValueError naming the op or group), never with a broken model.

The full sweep is ``@pytest.mark.slow``: ``OMP_NUM_THREADS=1 python -m pytest tests/test_zoo.py
-m slow -s`` (prints a table). A 3-model subset runs by default.
"""
import contextlib
import gc
import os
import time

import pytest
import torch
import torchvision

from gcnprune_fast.space import PruningSpace

# Input sizes below 64 break these models (fixed position embeddings / minimum sizes).
_INPUT_SIZE = {"vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224,
               "vit_h_14": 224, "maxvit_t": 224, "inception_v3": 80}
# Over 500M parameters: several copies would not fit next to other jobs on a 23 GB machine.
_TOO_LARGE = {"vit_h_14", "regnet_y_128gf"}
FAST_SUBSET = ("resnet18", "mobilenet_v3_small", "squeezenet1_1")


def zoo_names():
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _keep_70_percent(space, gen):
    masks = []
    for g in space.groups:
        k = max(space.min_keep(g.index), int(round(0.7 * g.size)))
        while not space.valid_count(g.index, k):
            k += 1
        m = torch.zeros(g.size, dtype=torch.bool)
        m[torch.randperm(g.size, generator=gen)[:k]] = True
        masks.append(m)
    return masks


def run_zoo_model(name: str) -> dict:
    """Prune ``name`` by ~30% per group and check it. Returns a result row; raises on failure
    (our clear RuntimeError/ValueError for unsupported models)."""
    import torch_pruning as tp  # reference counter only

    t0 = time.time()
    torch.manual_seed(0)
    size = _INPUT_SIZE.get(name, 64)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = PruningSpace(model, x)
    masks = _keep_70_percent(space, torch.Generator().manual_seed(0))
    pruned = space.prune(masks).eval()
    with torch.no_grad():
        out = pruned(x)
        assert out.shape == (1, 10), f"{name}: output shape {tuple(out.shape)}"
        traced = torch.jit.trace(pruned, x)
        torch.testing.assert_close(traced(x), out, rtol=1e-4, atol=1e-4)
        with space.masked(masks):
            masked_out = model(x)
    masked_diff = (masked_out - out).abs().max().item() / (out.abs().max().item() + 1e-12)
    exact_claimed = all(g.mask_exact for g in space.groups)
    if exact_claimed:
        assert masked_diff < 1e-3, f"{name}: masked output differs from pruned by {masked_diff:.2e}"
    f0, p0 = tp.utils.count_ops_and_params(model, x)
    f1, p1 = tp.utils.count_ops_and_params(pruned, x)
    c0, c1 = (space.base_flops, space.base_params), space.cost(masks)
    errs = [abs(c0[0] / f0 - 1), abs(c0[1] / p0 - 1), abs(c1[0] / f1 - 1), abs(c1[1] / p1 - 1)]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name}: the original model changed ({k})"
    return {"model": name, "groups": space.num_groups, "flops_kept": f1 / f0,
            "params_kept": p1 / p0, "max_cost_err": max(errs), "masked_rel_diff": masked_diff,
            "exact_claimed": exact_claimed, "seconds": time.time() - t0}


def _check_row(row):
    assert row["max_cost_err"] < 0.01, f"{row['model']}: cost model off by {row['max_cost_err']:.2%}"
    assert row["flops_kept"] < 0.999, f"{row['model']}: nothing was pruned"


@pytest.mark.parametrize("name", FAST_SUBSET)
def test_zoo_subset(name):
    torch.set_num_threads(1)
    _check_row(run_zoo_model(name))


@contextlib.contextmanager
def _memory_cap(gigabytes: float):
    """Cap the process heap (RLIMIT_DATA, soft limit) so that a model whose tracing explodes fails
    with MemoryError (wrapped by the space into a RuntimeError) instead of starving the machine."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (int(gigabytes * 2**30), hard))
    except (ImportError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@pytest.mark.slow
def test_zoo_full_sweep():
    """Env: GCNPRUNE_ZOO_FROM=name (start there, alphabetical), GCNPRUNE_ZOO_MAX_GB (heap cap,
    default 5), GCNPRUNE_ZOO_ALL=1 (include the >500M-parameter models)."""
    torch.set_num_threads(1)
    rows, failures = [], []
    names = [n for n in zoo_names() if n not in _TOO_LARGE or os.environ.get("GCNPRUNE_ZOO_ALL")]
    names = [n for n in names if n >= os.environ.get("GCNPRUNE_ZOO_FROM", "")]
    cap = float(os.environ.get("GCNPRUNE_ZOO_MAX_GB", "5"))
    for name in names:
        try:
            with _memory_cap(cap):
                row = run_zoo_model(name)
            _check_row(row)
            row["status"] = "pass"
        except (RuntimeError, ValueError, AssertionError, MemoryError) as e:
            row = {"model": name, "status": f"FAIL {type(e).__name__}: {str(e)[:150]}"}
            failures.append(row)
        rows.append(row)
        print(f"{name:22s} {row['status'][:160]}  groups={row.get('groups', '-')} "
              f"flops_kept={row.get('flops_kept', float('nan')):.2f} "
              f"cost_err={row.get('max_cost_err', float('nan')):.2e} "
              f"masked_diff={row.get('masked_rel_diff', float('nan')):.1e} "
              f"t={row.get('seconds', 0):.1f}s", flush=True)
        gc.collect()
    passed = sum(r["status"] == "pass" for r in rows)
    print(f"\nzoo: {passed}/{len(rows)} passed; skipped (too large): "
          f"{sorted(_TOO_LARGE - set(names))}")
    for r in failures:
        print("  ", r["model"], r["status"])
    # Failures must be our clear errors: anything else (TypeError deep in torch) escapes above.
    assert passed >= 1


def test_unsupported_model_fails_clearly():
    # ShuffleNetV2's channel shuffle (view/transpose/view) cannot be mapped by the tracer.
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"ShuffleNetV2 .*unsupported op: a view/reshape"):
        PruningSpace(model, torch.randn(1, 3, 64, 64))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
