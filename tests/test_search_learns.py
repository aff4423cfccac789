"""The channel-gcn search learns on a small real task (issue 9, "what a user sees").

A simple_cnn trained for a few seconds on the synthetic dataset (learnable, generated, no files)
is pruned to 40% of its FLOPs with ``prune(..., method="channel-gcn", val_loader=held_out)``. The
policy's greedy mask at the warm start and after the last update are captured from the search
and scored on *held-out* images (masked evaluation with BN statistics of the scored set, the
search's own reward kind): the search must improve on its warm start on data it never saw, not
just on its reward set. With ``lr=0`` the policy cannot move, and the greedy mask stays the warm
start's -- so the improvement is the policy gradient's doing.

The warm start is the global-L1 mask (compared as masks, not by reward): exactly so for the
channels with pi > 0.5; the greedy mask, which then fills the budget in the order of the logits,
may keep a few more (at 40%: see test_warm_start_greedy_mask_is_the_global_l1_mask).

Measured (this setting, search seeds 0-3, one thread): held-out greedy-mask accuracy 0.767 at the
warm start -> 0.80-0.84 after 60 episodes; at the default ``lr=0.005`` 60 episodes are too few
to move it (-1 to +1 points), hence ``lr=0.02`` here.
"""
import pytest
import torch

import gcnprune_fast
from gcnprune_fast.data import TensorBatchLoader, synthetic_dataset
from gcnprune_fast.methods import channel_gcn
from gcnprune_fast.methods.search import MaskScorer, RewardSet
from gcnprune_fast.models import get_model
from gcnprune_fast.training import train

IMAGE_SIZE = 16
FLOPS = 0.4
SEARCH = dict(episodes=60, episodes_per_update=10, lr=0.02, reward_samples=256)


@pytest.fixture(scope="module")
def task():
    """(trained model, search loader, held-out loader): 2,000 training / 1,000 held-out images of
    the synthetic dataset; simple_cnn trained 2 epochs (about 3 s on one core, ~92% held-out)."""
    train_ds = synthetic_dataset(2000, image_size=IMAGE_SIZE, seed=0)
    held_ds = synthetic_dataset(1000, image_size=IMAGE_SIZE, seed=1)
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    model = get_model("simple_cnn")
    torch.set_rng_state(rng)
    train(model, TensorBatchLoader(train_ds, 64, shuffle=True, drop_last=True), 2, lr=0.05,
          seed=0, progress=False)
    model.eval()
    return model, TensorBatchLoader(train_ds, 64), TensorBatchLoader(held_ds, 500)


@pytest.fixture()
def greedy_masks(monkeypatch):
    """Captures the policy's greedy mask before the first and after the last update of every
    channel-gcn search run while the fixture is active: a list of {"start", "end", "space",
    "pi_start"} (``pi_start``: the channels with pi > 0.5 before the first update)."""
    runs = []
    real_loop = channel_gcn._ChannelSearch.loop

    def loop(self):
        with torch.no_grad():
            logits = self.logits()
            start = [m.clone() for m in self.greedy(logits)]
            pi_start = [m.clone() for m in channel_gcn._split(logits > 0, self.offsets)]
        info = real_loop(self)
        with torch.no_grad():
            end = [m.clone() for m in self.greedy(self.logits())]
        runs.append({"start": start, "pi_start": pi_start, "end": end, "space": self.space})
        return info

    monkeypatch.setattr(channel_gcn._ChannelSearch, "loop", loop)
    return runs


def _held_out_reward(space, held, masks):
    """The search's reward (accuracy with BN statistics of the scored set) on held-out images."""
    rewards = RewardSet.from_loader(held, 1000, "cpu", batch_size=1000)
    return MaskScorer(space, rewards, "accuracy_bn", "cpu")(masks)[0]


def _prune(model, loader, held, flops=FLOPS, **options):
    return gcnprune_fast.prune(model, loader, method="channel-gcn", flops=flops, seed=0,
                               val_loader=held, progress=False, bn_batches=4,
                               **{**SEARCH, **options})


@pytest.mark.parametrize("baseline", ["moving", "leave_one_out"])
def test_search_beats_its_warm_start_on_held_out_data(task, greedy_masks, baseline):
    model, loader, held = task
    res = _prune(model, loader, held, baseline=baseline)
    (run,) = greedy_masks
    start = _held_out_reward(run["space"], held, run["start"])
    end = _held_out_reward(run["space"], held, run["end"])
    assert end >= start + 0.02, (start, end)  # measured: +3 to +7 points over seeds 0-3
    # on the reward set too: greedy_curve[0] is the warm start's reward, final_greedy_reward
    # the last policy's
    r = res.report
    assert r["final_greedy_reward"] > r["greedy_curve"][0]
    assert r["accuracy_set"] == "val_loader" and r["episodes"] == SEARCH["episodes"]


def test_without_learning_rate_the_greedy_mask_stays(task, greedy_masks):
    model, loader, held = task
    res = _prune(model, loader, held, lr=0.0)
    (run,) = greedy_masks
    assert all(torch.equal(a, b) for a, b in zip(run["start"], run["end"]))
    assert set(res.report["greedy_curve"]) == {res.report["greedy_curve"][0]}


def _l1_masks(model, loader, held, flops):
    return gcnprune_fast.prune(model, loader, method="l1", allocation="global", flops=flops,
                               val_loader=held, progress=False, bn_batches=1).masks


@pytest.mark.parametrize("flops", [FLOPS, 0.5, 0.7])
def test_warm_start_policy_is_the_global_l1_mask(task, greedy_masks, flops):
    """The warm-start policy keeps (pi > 0.5) exactly the channels of the global-L1 mask; its
    greedy mask (after the action wall's budget fill, ranked by the policy's logits) keeps them
    all and may add channels that still fit the budget."""
    model, loader, held = task
    _prune(model, loader, held, flops=flops, episodes=1, episodes_per_update=1)
    (run,) = greedy_masks
    l1 = _l1_masks(model, loader, held, flops)
    assert len(l1) == len(run["start"])
    assert all(torch.equal(a, b) for a, b in zip(run["pi_start"], l1))
    assert all(bool((b & ~a).sum() == 0) for a, b in zip(run["start"], l1))  # greedy >= L1


# Not at FLOPS (0.4): there the greedy mask, which fills the budget in the order of the policy's
# logits (L1 z-score minus a per-group threshold) where the L1 allocation follows the z-scores, can
# keep a few more channels of one layer than global L1 (83 vs 81 of 128 in features.0 on the
# machines of sessions 1-13, the same mask on another CPU: it hangs on the trained model's last
# bits). test_warm_start_policy_is_the_global_l1_mask checks greedy >= L1 there.
@pytest.mark.parametrize("flops", [0.5, 0.7])
def test_warm_start_greedy_mask_is_the_global_l1_mask(task, greedy_masks, flops):
    model, loader, held = task
    _prune(model, loader, held, flops=flops, episodes=1, episodes_per_update=1)
    (run,) = greedy_masks
    l1 = _l1_masks(model, loader, held, flops)
    assert [int(m.sum()) for m in run["start"]] == [int(m.sum()) for m in l1]
    assert all(torch.equal(a, b) for a, b in zip(run["start"], l1))


def _heldout_scorer(space, held, samples=1000):
    """The held-out curve's scorer as the search builds it: the first ``samples`` images of
    ``val_loader``, the reward kind, chunks of ``reward_batch_size`` (256)."""
    return MaskScorer(space, RewardSet.from_loader(held, samples, "cpu", batch_size=256),
                      "accuracy_bn", "cpu")


def test_report_keeps_the_greedy_masks_held_out_curve(task, greedy_masks):
    """greedy_heldout_curve[u] is the greedy mask before update u scored on val_loader's
    images; final_greedy_heldout_reward the last policy's; and it rises here, as measured
    independently in test_search_beats_its_warm_start_on_held_out_data."""
    model, loader, held = task
    r = _prune(model, loader, held, heldout_samples=1000).report
    (run,) = greedy_masks
    score = _heldout_scorer(run["space"], held)
    curve = r["greedy_heldout_curve"]
    assert len(curve) == len(r["greedy_curve"]) == r["updates"] == 6
    assert r["heldout_samples"] == 1000
    assert curve[0] == pytest.approx(score(run["start"])[0])
    assert r["final_greedy_heldout_reward"] == pytest.approx(score(run["end"])[0])
    assert r["final_greedy_heldout_reward"] >= curve[0] + 0.02
    assert all(0.0 <= v <= 1.0 for v in curve)


def test_held_out_curve_chooses_nothing(task):
    """The held-out scoring is a diagnostic: the same masks with it off, and no curve when it is
    off or when the reward set itself comes from val_loader."""
    model, loader, held = task
    on = _prune(model, loader, held, episodes=20)
    off = _prune(model, loader, held, episodes=20, heldout_samples=0)
    assert all(torch.equal(a, b) for a, b in zip(on.masks, off.masks))
    assert on.report["greedy_curve"] == off.report["greedy_curve"]
    assert len(on.report["greedy_heldout_curve"]) == 2
    assert "greedy_heldout_curve" not in off.report
    val = _prune(model, loader, held, episodes=20, reward_source="val")
    assert "greedy_heldout_curve" not in val.report


def test_held_out_curve_after_resuming_a_search_without_it(task, tmp_path):
    """A checkpoint written with the curve off resumes with it on (the option is not in the
    fingerprint): the updates run before are None, the later ones scored."""
    model, loader, held = task
    ckpt = str(tmp_path / "ckpt")
    _prune(model, loader, held, episodes=20, heldout_samples=0, checkpoint_dir=ckpt)
    r = _prune(model, loader, held, episodes=40, checkpoint_dir=ckpt, resume=True).report
    curve = r["greedy_heldout_curve"]
    assert curve[:2] == [None, None] and all(isinstance(v, float) for v in curve[2:])
    assert len(curve) == len(r["greedy_curve"]) == 4
