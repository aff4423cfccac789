"""train / evaluate / recalibrate_bn on tiny data: modes, BN statistics, resume, distillation, errors."""
import math

import pytest
import torch
import torch.nn as nn

from gcnprune_fast.data import TensorBatchLoader, synthetic_dataset
from gcnprune_fast.training import (channels_last_pays, distillation_loss, evaluate,
                                    recalibrate_bn, train)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def loaders():
    train_ds = synthetic_dataset(96, image_size=12, seed=0)
    test_ds = synthetic_dataset(64, image_size=12, seed=1)
    return TensorBatchLoader(train_ds, 32, shuffle=True), TensorBatchLoader(test_ds, 32)


class FixedLogits(nn.Module):
    """Predicts class 0 for every input (plus one dummy parameter for the device)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 10)
        out[:, 0] = 1
        return out


def test_evaluate_counts_and_restores_mode(loaders):
    _, test = loaders
    labels = test.dataset.labels
    model = FixedLogits().train()
    acc = evaluate(model, test)
    assert acc == pytest.approx(float((labels == 0).float().mean()))
    assert model.training
    assert evaluate(model, test, max_batches=1) == pytest.approx(float((labels[:32] == 0).float().mean()))
    assert evaluate(model, [(torch.zeros(2, 3, 4, 4), torch.tensor([0, 0]))]) == 1.0
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, [])
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        evaluate(model, [torch.zeros(2, 3, 4, 4)])
    with pytest.raises(ValueError, match="max_batches"):
        evaluate(model, test, max_batches=0)


def test_recalibrate_bn_is_cumulative_average_and_restores_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model.eval()
    model[1].momentum = 0.3
    model[1].running_mean.fill_(100.0)
    batches = [(torch.randn(8, 3, 5, 5) + i, torch.zeros(8, dtype=torch.long)) for i in range(3)]
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    recalibrate_bn(model, batches, num_batches=2)
    with torch.no_grad():
        acts = [model[0](x) for x, _ in batches[:2]]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    assert model[1].num_batches_tracked.item() == 2
    assert model[1].momentum == 0.3 and not model.training and not model[1].training
    assert seen == [False, False]  # dropout stayed in eval mode
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(model, [])


def test_train_learns_and_returns_history(loaders):
    train_loader, test = loaders
    model = tiny_model()
    h = train(model, train_loader, 3, lr=0.05, val_loader=test, progress=False, seed=0)
    assert h["epochs"] == 3 and len(h["loss"]) == len(h["acc"]) == len(h["val_acc"]) == 3
    assert h["loss"][-1] < h["loss"][0]
    assert h["lr"][-1] < 0.05 * 0.1  # cosine decays towards 0
    assert not model.training
    assert train(tiny_model(), train_loader, 0, progress=False)["epochs"] == 0


def test_train_is_seeded(loaders):
    train_loader, _ = loaders
    a, b = tiny_model(), tiny_model()
    train(a, train_loader, 1, progress=False, seed=3)
    train(b, train_loader, 1, progress=False, seed=3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_checkpoint_resume_matches_uninterrupted_run(loaders, tmp_path):
    train_loader, _ = loaders
    ref = tiny_model()
    h_ref = train(ref, train_loader, 3, progress=False, seed=1)

    ckpt = tmp_path / "run.ckpt"
    first = tiny_model()

    class Interrupt(Exception):
        pass

    calls = {"n": 0}
    original_iter = TensorBatchLoader.__iter__

    def interrupted_iter(self):  # fail in the third epoch, after two checkpoints
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt
        return original_iter(self)

    TensorBatchLoader.__iter__ = interrupted_iter
    try:
        with pytest.raises(Interrupt):
            train(first, train_loader, 3, progress=False, seed=1, checkpoint_path=str(ckpt))
    finally:
        TensorBatchLoader.__iter__ = original_iter
    assert ckpt.is_file()
    resumed = tiny_model(seed=5)  # different init: everything must come from the checkpoint
    h = train(resumed, train_loader, 3, progress=False, seed=1, checkpoint_path=str(ckpt),
              resume=True)
    assert h["resumed_from"] == 2 and h["epochs"] == 3
    assert h["loss"] == pytest.approx(h_ref["loss"])
    for pa, pb in zip(ref.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    # the checkpoint is plain data: tensors and numbers only
    saved = torch.load(ckpt, weights_only=True)
    assert saved["fingerprint"]["epochs"] == 3 and saved["fingerprint"]["seed"] == 1
    # another run's settings: refused, naming what differs
    for kwargs, key in (({"epochs": 5}, "epochs"), ({"lr": 0.5}, "lr"), ({"seed": 2}, "seed")):
        args = {"epochs": 3, "seed": 1, **kwargs}
        with pytest.raises(ValueError, match=key):
            train(tiny_model(), train_loader, args.pop("epochs"), progress=False,
                  checkpoint_path=str(ckpt), resume=True, **args)
    with pytest.raises(ValueError, match="plan"):
        train(tiny_model(), train_loader, 3, progress=False, seed=1, checkpoint_path=str(ckpt),
              resume=True, fingerprint={"plan": "abc"})


def test_checkpoint_used_only_on_resume(loaders, tmp_path):
    """A finished run's checkpoint is never picked up by a run without resume; resume without a
    checkpoint is an error; a truncated checkpoint is reported as such."""
    train_loader, _ = loaders
    ckpt = tmp_path / "run.ckpt"
    train(tiny_model(), train_loader, 1, progress=False, seed=1, checkpoint_path=str(ckpt))
    fresh, plain = tiny_model(seed=4), tiny_model(seed=4)
    h = train(fresh, train_loader, 1, progress=False, seed=2, checkpoint_path=str(ckpt))
    train(plain, train_loader, 1, progress=False, seed=2)
    assert h["resumed_from"] is None
    for a, b in zip(fresh.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_model(), train_loader, 1, progress=False, resume=True,
              checkpoint_path=str(tmp_path / "missing.ckpt"))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        train(tiny_model(), train_loader, 1, progress=False, seed=2, resume=True,
              checkpoint_path=str(ckpt))


def test_train_leaves_global_rng_and_loader_alone(loaders):
    train_loader, _ = loaders
    model = tiny_model()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train(model, train_loader, 1, progress=False, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert train_loader.generator is None  # a copy got the per-call generator


def test_with_generator_makes_dataloader_order_reproducible():
    from torch.utils.data import DataLoader, TensorDataset

    from gcnprune_fast.training import with_generator

    ds = TensorDataset(torch.arange(20).float().view(20, 1), torch.arange(20))
    dl = DataLoader(ds, batch_size=4, shuffle=True)
    orders = []
    for _ in range(2):
        torch.manual_seed(len(orders))  # the global RNG must not matter
        bound = with_generator(dl, torch.Generator().manual_seed(3))
        orders.append(torch.cat([y for _, y in bound]))
    assert torch.equal(orders[0], orders[1]) and sorted(orders[0].tolist()) == list(range(20))
    assert dl.generator is None and dl.sampler.generator is None
    assert with_generator([1, 2], torch.Generator()) == [1, 2]


def test_distillation(loaders):
    s = torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(distillation_loss(s, s, y, alpha=1.0), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(distillation_loss(s, s * 3, y, alpha=0.0),
                               nn.functional.cross_entropy(s, y))
    assert float(distillation_loss(s, -s, y, alpha=1.0)) > 0
    train_loader, test = loaders
    teacher = tiny_model(seed=1)
    train(teacher, train_loader, 2, lr=0.05, progress=False)
    before = [p.clone() for p in teacher.parameters()]
    student = tiny_model(seed=2)
    teacher.train()
    h = train(student, train_loader, 2, lr=0.05, teacher=teacher, kd_alpha=0.7, progress=False)
    assert all(math.isfinite(v) for v in h["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # teacher frozen
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # untouched
    assert h["loss"][-1] < h["loss"][0]


def conv_model(width, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, 10))


@pytest.mark.parametrize("width, channels_last, expected", [
    (16, None, True), (8, None, False), (8, True, True), (16, False, False)])
def test_channels_last_training(loaders, width, channels_last, expected):
    """The switch reaches the convolutions (weights and batches; by default only where every
    width is a multiple of 16), the model comes back in the default format, and training gives
    the same weights up to float rounding."""
    train_loader, _ = loaders
    ref, model = conv_model(width), conv_model(width)
    train(ref, train_loader, 2, progress=False, seed=4, channels_last=False)
    seen = []
    model[0].register_forward_pre_hook(lambda m, args: seen.append(
        (args[0].is_contiguous(memory_format=torch.channels_last) and args[0].stride(1) == 1,
         m.weight.is_contiguous(memory_format=torch.channels_last) and m.weight.stride(1) == 1)))
    train(model, train_loader, 2, progress=False, seed=4, channels_last=channels_last)
    assert seen and all(s == (expected, expected) for s in seen)
    assert all(p.is_contiguous() for p in model.parameters())
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, ref.state_dict()[name], atol=1e-5, rtol=1e-4, msg=name)


def test_channels_last_pays():
    assert channels_last_pays(conv_model(32)) and not channels_last_pays(conv_model(24))
    assert not channels_last_pays(nn.Sequential(nn.Linear(4, 4)))  # nothing to switch


def test_channels_last_without_convolutions_and_bad_value(loaders):
    train_loader, _ = loaders
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10))
    h = train(mlp, train_loader, 1, progress=False, channels_last=True)  # nothing to switch
    assert h["epochs"] == 1 and all(p.is_contiguous() for p in mlp.parameters())
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="channels_last"):
        train(model, train_loader, 1, progress=False, channels_last="yes")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_train_errors(loaders):
    train_loader, _ = loaders
    bad = [(torch.full((4, 3, 12, 12), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="NaN|nan"):
        train(tiny_model(), bad, 1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        train(tiny_model(), [], 1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(tiny_model(), train_loader, -1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_model(), train_loader, 1, lr=float("nan"), progress=False)
    with pytest.raises(ValueError, match="kd_alpha"):
        train(tiny_model(), train_loader, 1, kd_alpha=2.0, progress=False)
    with pytest.raises(TypeError, match="targets"):
        train(tiny_model(), [[torch.zeros(4, 3, 12, 12)]], 1, progress=False)
    with pytest.raises(TypeError, match="re-iterable"):
        train(tiny_model(), (b for b in train_loader), 1, progress=False)


@pytest.mark.parametrize("labels, value", [([0, 1, 10, 2], "10"), ([0, -1, 2, 3], "-1")])
def test_labels_out_of_range_are_named(labels, value):
    batch = [(torch.zeros(4, 3, 12, 12), torch.tensor(labels))]
    for call in (lambda: train(tiny_model(), batch, 1, progress=False),
                 lambda: evaluate(tiny_model(), batch)):
        with pytest.raises(ValueError, match=rf"label {value}, outside the valid range \[0, 9\]"):
            call()
    with pytest.raises(ValueError, match="integer class indices"):
        evaluate(tiny_model(), [(torch.zeros(4, 3, 12, 12), torch.zeros(4))])
