"""Latency budget: the latency table and model (additive, monotone, vectorized), its disk cache,
and the latency limit honoured by every method. Timings never reach an assertion: every test
injects a fake timer (a pure function of what is timed)."""
import json

import pytest
import torch
import torch.nn as nn

from gcnprune_fast.latency import build_latency_model, layer_specs
from gcnprune_fast.latency.measure import Timer
from gcnprune_fast.methods import Budget, SearchContext, method_names, run_method
from gcnprune_fast.methods.allocation import (LATENCY_FILL, action_wall, allocate,
                                              check_budget_reachable, fit_ratios_to_budget,
                                              project_to_budget)
from gcnprune_fast.space import PruningSpace
from helpers import random_batches, simple_cnn_space


def fake_timer(run, spec):
    """Seconds as a pure function of the work: 1 ns per MAC + 2 us per call, plus a step for
    widths that are not multiples of 8 (as vectorized kernels have)."""
    if spec["what"] == "model":
        return 1e-9 * spec["macs"] + 50e-6
    step = 0.0 if spec["cout"] % 8 == 0 else 3e-6
    return 1e-9 * spec["macs"] + 2e-6 + step


class CountingTimer:
    def __init__(self):
        self.calls = []

    def __call__(self, run, spec):
        self.calls.append(spec)
        return fake_timer(run, spec)


class TwoConv(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.b2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return PruningSpace(TwoConv().eval(), torch.randn(2, 3, 8, 8))


@pytest.fixture(scope="module")
def space():
    return simple_cnn_space()


@pytest.fixture(scope="module")
def lm(space):
    return build_latency_model(space, timer=fake_timer, cache_dir=None, progress=False,
                               threads=1)


def _full(space):
    return torch.tensor([g.size for g in space.groups])


def test_toy_table_entries_and_additivity(toy):
    lm = build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False, threads=1,
                             grid_points=16)
    names = sorted(l.name for l in lm.layers)
    assert names == ["c1", "c2", "fc"]
    c1, c2 = (next(l for l in lm.layers if l.name == n) for n in ("c1", "c2"))
    assert c1.xs == [3] and c1.ys == list(range(1, 9))  # input fixed, every legal width
    assert c2.xs == list(range(1, 9)) and c2.ys == list(range(1, 17))
    # a measured grid point is the timer's value (macs at batch 1, 8x8 output)
    g_in = next(g.index for g in toy.groups if g.root == "c1")
    g_out = next(g.index for g in toy.groups if g.root == "c2")
    counts = _full(toy)
    counts[g_in], counts[g_out] = 5, 7
    per = lm.layer_latencies(counts)
    i2 = [l.name for l in lm.layers].index("c2")
    assert float(per[i2]) == pytest.approx(1e-9 * 64 * 9 * 5 * 7 + 5e-6)
    # the table is monotone: width 8 (timed faster than 7: no remainder step) is lifted to 7's
    counts8 = counts.clone()
    counts8[g_out] = 8
    assert float(lm.layer_latencies(counts8)[i2]) == pytest.approx(float(per[i2]))
    # additive: remainder + the layers; the full model is predicted at its measured latency
    assert float(lm.latency_from_counts(counts)) == pytest.approx(
        lm.scale * float(per.sum()) + lm.remainder)
    assert float(lm.latency_from_counts(_full(toy))) == pytest.approx(lm.base_latency)
    assert lm.base_latency == pytest.approx(1e-9 * toy.base_flops + 50e-6)
    assert 0.5 <= lm.scale <= 2.0
    # one-point calibration: scale 1, the remainder is the unexplained rest
    lm1 = build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False, threads=1,
                              grid_points=16, calibration="remainder")
    assert lm1.scale == 1.0
    assert float(lm1.latency_from_counts(counts)) == pytest.approx(float(per.sum()) + lm1.remainder)
    assert float(lm1.latency_from_counts(_full(toy))) == pytest.approx(lm1.base_latency)


def test_interpolation_between_measured_widths(toy):
    lm = build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False, threads=1,
                             grid_points=3)
    c2 = next(l for l in lm.layers if l.name == "c2")
    assert c2.xs == [1, 4, 8] or len(c2.xs) == 3
    i2 = [l.name for l in lm.layers].index("c2")
    g_in = next(g.index for g in toy.groups if g.root == "c1")
    lo, hi = _full(toy), _full(toy)
    lo[g_in], hi[g_in] = c2.xs[0], c2.xs[1]
    mid = lo.clone().double()
    mid[g_in] = (c2.xs[0] + c2.xs[1]) / 2
    t = lm.layer_latencies(torch.stack([lo.double(), mid, hi.double()]))[:, i2]
    assert float(t[1]) == pytest.approx(0.5 * float(t[0] + t[2]))


def test_monotone_and_vectorized(space, lm):
    gen = torch.Generator().manual_seed(0)
    sizes = _full(space)
    counts = torch.stack([torch.randint(1, int(s) + 1, (64,), generator=gen) for s in sizes], 1)
    batch = lm.latency_from_counts(counts)
    assert batch.shape == (64,) and batch.dtype == torch.float64
    one = torch.stack([lm.latency_from_counts(c) for c in counts])
    assert torch.allclose(batch, one, rtol=0, atol=1e-15)
    assert lm.latency_from_counts(counts.view(8, 8, -1)).shape == (8, 8)
    for g in range(space.num_groups):
        wider = counts.clone()
        wider[:, g] = torch.minimum(wider[:, g] + 3, sizes[g])
        assert bool((lm.latency_from_counts(wider) >= batch - 1e-15).all())


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    torch.manual_seed(0)
    space = PruningSpace(TwoConv().eval(), torch.randn(2, 3, 8, 8))
    t1 = CountingTimer()
    a = build_latency_model(space, timer=t1, cache_dir=tmp_path, progress=False, threads=1)
    layer_calls = [c for c in t1.calls if c["what"] == "layer"]
    model_macs = [c["macs"] for c in t1.calls if c["what"] == "model"]
    # the unpruned and the half-width network timed in alternation, 5 rounds (best of each)
    assert len(layer_calls) + 2 == a.measured_points and len(layer_calls) > 0
    assert len(model_macs) == 10 and model_macs[0::2] == [model_macs[0]] * 5
    assert model_macs[1::2] == [model_macs[1]] * 5 and model_macs[1] < model_macs[0]
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["meta"]["torch"] == torch.__version__
    t2 = CountingTimer()
    b = build_latency_model(space, timer=t2, cache_dir=tmp_path, progress=False, threads=1)
    assert t2.calls == [] and b.measured_points == 0
    counts = _full(space) // 2 + 1
    assert float(a.latency_from_counts(counts)) == float(b.latency_from_counts(counts))
    # other layer shapes (input 10x10): every layer measured again, the model too
    space10 = PruningSpace(space.model, torch.randn(2, 3, 10, 10))
    t3 = CountingTimer()
    build_latency_model(space10, timer=t3, cache_dir=tmp_path, progress=False, threads=1)
    # other layer shapes (input 10x10): the convs are measured again, not fc (after the pooling its
    # input is the same), and the model
    assert {c["name"] for c in t3.calls if c["what"] == "layer"} == {"c1", "c2"}
    assert any(c["what"] == "model" for c in t3.calls)
    # wider layers: only the widths not measured before (the narrow ones are cached points)
    torch.manual_seed(0)
    t4 = CountingTimer()
    build_latency_model(PruningSpace(TwoConv(width=16).eval(), torch.randn(2, 3, 8, 8)), timer=t4,
                        cache_dir=tmp_path, progress=False, threads=1, grid_points=32)
    layer_calls = [c for c in t4.calls if c["what"] == "layer"]
    assert layer_calls and all(c["cout"] > 8 or c["cin"] > 8 for c in layer_calls
                               if c["name"] == "c1")
    # another torch version: another cache file, everything measured again
    monkeypatch.setattr(torch, "__version__", "0.0.0+test")
    t5 = CountingTimer()
    build_latency_model(space, timer=t5, cache_dir=tmp_path, progress=False, threads=1)
    assert len(t5.calls) == len(t1.calls)
    assert len(list(tmp_path.glob("latency-*.json"))) == 2


def test_calibration_best_of_alternating_rounds(toy):
    """A slow spell while the calibration networks are timed (here the first three end-to-end
    timings run 3x slower) changes neither the base latency nor the fitted scale."""
    calls = []

    def spell_timer(run, spec):
        t = fake_timer(run, spec)
        if spec["what"] == "model":
            calls.append(spec["macs"])
            return 3 * t if len(calls) <= 3 else t
        return t

    steady = build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False, threads=1)
    spell = build_latency_model(toy, timer=spell_timer, cache_dir=None, progress=False, threads=1)
    assert spell.base_latency == steady.base_latency and spell.scale == steady.scale
    calls.clear()  # the same spell, one round only
    one_round = build_latency_model(toy, timer=spell_timer, cache_dir=None, progress=False,
                                    threads=1, calibration_rounds=1)
    assert one_round.base_latency == 3 * steady.base_latency  # what the alternation protects from
    with pytest.raises(ValueError, match="calibration_rounds"):
        build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False,
                            calibration_rounds=0)


def test_cache_keyed_by_threads_and_batch(tmp_path, toy):
    build_latency_model(toy, timer=fake_timer, cache_dir=tmp_path, progress=False, threads=1)
    t = CountingTimer()
    build_latency_model(toy, timer=t, cache_dir=tmp_path, progress=False, threads=2)
    assert t.calls
    t = CountingTimer()
    lm8 = build_latency_model(toy, timer=t, cache_dir=tmp_path, progress=False, threads=1, batch=8)
    assert t.calls and all(c["macs"] % 8 == 0 for c in t.calls if c["what"] == "layer")
    assert lm8.meta["batch"] == 8


def test_state_round_trip(space, lm):
    import pickle

    from gcnprune_fast.latency import LatencyModel

    state = pickle.loads(pickle.dumps(lm.state()))
    lm2 = LatencyModel.from_state(state, timer=fake_timer)
    gen = torch.Generator().manual_seed(1)
    counts = torch.stack([torch.randint(1, g.size + 1, (16,), generator=gen) for g in space.groups], 1)
    assert torch.equal(lm.latency_from_counts(counts), lm2.latency_from_counts(counts))
    assert lm2.base_latency == lm.base_latency and lm2.meta == lm.meta


def test_budget_feasible_counts(space, lm):
    flops_only = Budget.from_ratios(space, 0.5)
    counts = torch.stack([_full(space), _full(space) // 2 + 1])
    f, p = space.cost_from_counts(counts)
    assert torch.equal(flops_only.feasible_counts(space, counts), flops_only.feasible(f, p))
    b = Budget.from_ratios(space, latency=0.5, latency_model=lm)
    assert b.max_latency == pytest.approx(0.5 * lm.base_latency)
    with pytest.raises(ValueError, match="latency"):
        b.feasible(f, p)
    ok = b.feasible_counts(space, counts)
    assert ok.tolist() == (lm.latency_from_counts(counts) <= b.max_latency).tolist()
    assert b.keep_ratio == 0.5
    # checkpoints of latency searches name the table and the fill rule; FLOPs ones add nothing
    assert flops_only.fingerprint_extra() == {}
    assert b.fingerprint_extra()["latency_fill"] == LATENCY_FILL
    assert b.fingerprint_extra()["latency_table"] == dict(lm.meta)
    with pytest.raises(ValueError, match="latency model"):
        Budget.from_ratios(space, latency=0.5)
    with pytest.raises(ValueError):
        Budget.from_ratios(space, latency=1.5, latency_model=lm)
    with pytest.raises(ValueError, match="below"):
        check_budget_reachable(space, Budget.from_ratios(space, latency=1e-6, latency_model=lm))


def _lat_ok(space, lm, budget, masks):
    counts = torch.tensor([int(m.sum()) for m in masks])
    assert float(lm.latency_from_counts(counts)) <= budget.max_latency * (1 + 1e-9)
    f, p = space.cost(masks)
    assert f <= budget.max_flops * (1 + 1e-9) and p <= budget.max_params * (1 + 1e-9)
    for g, m in enumerate(masks):
        assert int(m.sum()) >= space.min_keep(g)


@pytest.mark.parametrize("flops", [None, 0.6])
def test_allocation_honours_latency(space, lm, flops):
    b = Budget.from_ratios(space, flops=flops, latency=0.5, latency_model=lm)
    scores = [torch.rand(g.size, generator=torch.Generator().manual_seed(g.index))
              for g in space.groups]
    for alloc in ("global", "uniform"):
        _lat_ok(space, lm, b, allocate(space, scores, b, allocation=alloc))
    _lat_ok(space, lm, b, project_to_budget(space, space.full_masks(), scores, b, fill=True))
    counts = fit_ratios_to_budget(space, torch.ones(space.num_groups), b)
    assert float(lm.latency_from_counts(torch.tensor(counts))) <= b.max_latency * (1 + 1e-9)
    w = action_wall(space, counts, 0, b)
    assert w >= counts[0]


class PlateauLatency:
    """A stand-in latency model with plateaus: each group costs ``weight_g * ceil(count / 4)``
    seconds, so channels 5-8 of a group cost as much as channel 5 alone."""

    def __init__(self, sizes):
        self.weights = torch.linspace(1.0, 2.0, len(sizes), dtype=torch.float64)
        self.base_latency = float(self.latency_from_counts(torch.tensor(sizes)))
        self.meta = {"stub": "plateaus"}

    def latency_from_counts(self, counts):
        steps = torch.ceil(torch.as_tensor(counts, dtype=torch.float64) / 4)
        return (steps * self.weights).sum(-1)


def test_fill_goes_past_misfits_under_a_latency_limit(space):
    """Under a latency limit the fill skips a chunk that does not fit and goes on with the other
    groups: it keeps a superset of the stopping fill's channels, stays within the budget, and
    ends maximal (no group's next chunk fits). FLOPs fills keep stopping at the first misfit."""
    stub = PlateauLatency([g.size for g in space.groups])
    b = Budget.from_ratios(space, latency=0.5, latency_model=stub)
    scores = [torch.rand(g.size, generator=torch.Generator().manual_seed(g.index))
              for g in space.groups]
    full = space.full_masks()
    stop = project_to_budget(space, full, scores, b, round_to=1, fill=True, fill_past_misfits=False)
    past = project_to_budget(space, full, scores, b, round_to=1, fill=True)  # default: on
    for m_stop, m_past in zip(stop, past):
        assert bool((m_past | m_stop).eq(m_past).all())  # superset
    counts = torch.tensor([int(m.sum()) for m in past])
    assert int(counts.sum()) > sum(int(m.sum()) for m in stop)
    assert float(stub.latency_from_counts(counts)) <= b.max_latency * (1 + 1e-9)
    for g, grp in enumerate(space.groups):
        if int(counts[g]) < grp.size:
            more = counts.clone()
            more[g] += 1
            assert float(stub.latency_from_counts(more)) > b.max_latency, grp.name
    fb = Budget.from_ratios(space, flops=0.5)
    assert all(torch.equal(a, c) for a, c in zip(
        project_to_budget(space, full, scores, fb, round_to=1, fill=True),
        project_to_budget(space, full, scores, fb, round_to=1, fill=True, fill_past_misfits=False)))


TINY = {
    "channel-gcn": dict(episodes=2, episodes_per_update=1, reward_samples=16, feature_samples=16),
    "graph-pruning": dict(pruningnet_steps=2, episodes=2, warmup=1, reward_samples=16,
                          feature_samples=16, ddpg_hidden=16, batch_size=4, hidden=8,
                          generator_hidden=8),
    "amc": dict(episodes=2, warmup=1, reward_samples=16, ddpg_hidden=16, batch_size=4),
    "evolution": dict(population=4, iterations=1, parents=2, mutations=2, crossovers=2,
                      reward_samples=16),
}


@pytest.mark.parametrize("name", method_names())
def test_every_method_honours_latency_budget(space, lm, name):
    b = Budget.from_ratios(space, latency=0.5, latency_model=lm)
    ctx = SearchContext(space=space, budget=b, loader=random_batches(n=32), device=torch.device("cpu"),
                        options=dict(TINY.get(name, {})))
    _lat_ok(space, lm, b, run_method(name, ctx).masks)


def test_default_timer_clocks():
    assert Timer("cpu", threads=1).clock == "cpu"
    assert Timer("cpu", threads=2).clock == "wall"
    with pytest.raises(ValueError):
        Timer("cpu", clock="cuda")
    t = Timer("cpu", threads=1, warmup=0, repeats=1, min_round_s=0.0)
    assert t(lambda: None, {"what": "layer"}) >= 0.0  # runs; the value is not checked


def test_layer_specs_mobilenet_depthwise():
    from gcnprune_fast.models import get_model
    sp = PruningSpace(get_model("mobilenet_v2").eval(), torch.randn(1, 3, 32, 32), round_to=8)
    specs = layer_specs(sp, grid_points=4)
    kinds = {s.kind for s in specs}
    assert kinds == {"conv", "depthwise", "linear"}
    for s in specs:
        assert 1 <= len(s.ys) <= 4 and 1 <= len(s.xs) <= 4
        assert all(w % 8 == 0 or w == max(s.ys) for w in s.ys)


# ---------------------------------------------------------------------------------------------
# prune() and the command line


def test_prune_with_latency_budget(tmp_path):
    import gcnprune_fast
    from gcnprune_fast.models import get_model
    from gcnprune_fast.report import prune_report_markdown

    torch.manual_seed(0)
    model = get_model("simple_cnn").eval()
    loader = random_batches(n=32, size=16)
    timer = CountingTimer()
    res = gcnprune_fast.prune(model, loader, method="l1", latency=0.5, flops=0.8,
                              latency_timer=timer, latency_cache_dir=str(tmp_path),
                              latency_threads=1, progress=False, bn_batches=1)
    r = res.report
    assert r["latency_budget"] == 0.5 and r["flops_ratio"] <= 0.8 + 1e-9
    # with a latency budget widths default to multiples of 8: the table measures every one
    assert r["round_to"] == gcnprune_fast.api.LATENCY_ROUND_TO == 8
    assert all(w["after"] % 8 == 0 or w["after"] == w["before"] for w in r["widths"])
    assert any(w["after"] < w["before"] for w in r["widths"])
    assert r["latency_predicted_ms"] <= 0.5 * r["latency_before_ms"] * (1 + 1e-9)
    assert r["latency_timed_by"] == "torch"  # an injected timer never runs the C++ runner
    assert {"latency_after_ms", "latency_speedup_measured", "latency_prediction_error",
            "latency_speedup_predicted", "latency_table"} <= set(r)
    assert "latency measured (torch)" in prune_report_markdown(r)
    # the second run reads the table from the cache: only the pruned model is timed
    timer2 = CountingTimer()
    gcnprune_fast.prune(model, loader, method="l1", latency=0.5, latency_timer=timer2,
                        latency_cache_dir=str(tmp_path), latency_threads=1, progress=False,
                        bn_batches=1)
    assert [c["what"] for c in timer2.calls] == ["model"]
    with pytest.raises(ValueError, match="latency"):
        gcnprune_fast.prune(model, loader, method="l1", latency=1.5, progress=False)
    with pytest.raises(ValueError, match="latency_batch"):
        gcnprune_fast.prune(model, loader, method="l1", latency=0.5, latency_batch=0,
                            progress=False)


def test_cli_latency_flags(tmp_path, monkeypatch, capsys):
    import gcnprune_fast.latency.table as table
    from gcnprune_fast.cli import main
    from gcnprune_fast.models import get_model

    monkeypatch.setenv("GCNPRUNE_LATENCY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(table, "Timer", lambda *a, **k: fake_timer)  # no real timing in tests
    torch.manual_seed(0)
    ckpt = tmp_path / "w.pt"
    torch.save(get_model("simple_cnn").state_dict(), ckpt)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "simple_cnn", "--checkpoint", str(ckpt), "--dataset",
                 "synthetic", "--image-size", "8", "--batch-size", "256", "--method", "l1",
                 "--latency", "0.6", "--latency-batch", "2", "--latency-threads", "1",
                 "--round-to", "4", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["latency_budget"] == 0.6 and report["latency_table"]["batch"] == 2
    assert report["round_to"] == 4
    assert "latency" in capsys.readouterr().out


def test_noisy_calibration_is_warned_reported_and_cached(toy, tmp_path, caplog):
    """Calibration timings that disagree (three of four rounds 40% slower, as on a host with
    noisy neighbours) give a warning naming the spread; it is reported in the summary, kept
    in the cache (a cached build warns again) and survives state(); a steady timer stays quiet."""
    import logging

    from gcnprune_fast.latency.measure import timing_spread

    assert timing_spread([1.0]) == 0.0 and timing_spread([1.0, 1.4, 1.4]) == pytest.approx(0.4)
    calls = []

    def noisy_timer(run, spec):
        t = fake_timer(run, spec)
        if spec["what"] == "model":
            calls.append(1)
            return t * (1.4 if len(calls) <= 6 else 1.0)  # 2 networks per round
        return t

    with caplog.at_level(logging.WARNING, logger="gcnprune_fast"):
        steady = build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False, threads=1)
    assert steady.summary()["calibration_spread"] == 0.0
    assert "calibration timings varied" not in caplog.text
    for _ in range(2):  # measured, then read from the cache
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gcnprune_fast"):
            lm = build_latency_model(toy, timer=noisy_timer, cache_dir=tmp_path, progress=False,
                                     threads=1, calibration_rounds=4)
        assert "calibration timings varied by 40%" in caplog.text and str(tmp_path) in caplog.text
        assert lm.summary()["calibration_spread"] == pytest.approx(0.4)
    assert type(lm).from_state(lm.state(), timer=fake_timer).calibration_spread == pytest.approx(0.4)


def test_calibration_that_misses_its_half_point_is_warned(toy, caplog):
    """When the end-to-end timings disagree with the isolated layers by more than the scale's
    clamp allows (here every half-width network times 5x what the layers predict), the fitted
    model misses its own half-width point: a warning gives the miss, the summary and state()
    carry ``calibration_error``; a consistent timer gives an error of 0 and no warning."""
    import logging

    def slow_half(run, spec):
        t = fake_timer(run, spec)
        if spec["what"] == "model" and spec["macs"] < 0.9 * toy.base_flops:  # the half network
            return 5 * t
        return t

    with caplog.at_level(logging.WARNING, logger="gcnprune_fast"):
        good = build_latency_model(toy, timer=fake_timer, cache_dir=None, progress=False, threads=1)
    assert abs(good.calibration_error) < 0.10 and "half-width one" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gcnprune_fast"):
        bad = build_latency_model(toy, timer=slow_half, cache_dir=None, progress=False, threads=1)
    assert bad.scale == 0.5  # clamped: the fit cannot reach the half point
    assert bad.calibration_error < -0.10 and "half-width one" in caplog.text
    assert bad.summary()["calibration_error"] == pytest.approx(bad.calibration_error)
    assert type(bad).from_state(bad.state(), timer=fake_timer).calibration_error == \
        pytest.approx(bad.calibration_error)
