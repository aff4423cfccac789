"""Datasets: synthetic determinism and learnability, JPEG-npz reader, batch augmentation, errors."""
import io
import os

import numpy as np
import pytest
import torch

from gcnprune_fast import data
from gcnprune_fast.data import (TensorBatchLoader, TensorImageDataset, get_dataset, load_shared_cifar10,
                                make_loaders, random_crop_flip, read_jpeg_npz, synthetic_dataset)

SHARED_CIFAR10 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                              "shared", "data", "cifar10")


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = synthetic_dataset(64, seed=3), synthetic_dataset(64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = synthetic_dataset(64, seed=4)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.labels.dtype == torch.int64 and a.num_classes == 10
    assert torch.bincount(a.labels, minlength=10).tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]
    assert abs(float(a.images.mean())) < 0.1 and 0.8 < float(a.images.std()) < 1.2


def test_synthetic_shapes_and_bad_arguments():
    ds = synthetic_dataset(10, num_classes=3, image_size=12, channels=1, seed=0)
    assert ds.images.shape == (10, 1, 12, 12) and int(ds.labels.max()) <= 2
    x, y = ds[0]
    assert x.shape == (1, 12, 12) and y.dim() == 0
    for kwargs in ({"num_samples": 0}, {"num_samples": 4, "num_classes": 1},
                   {"num_samples": 4, "image_size": 4}, {"num_samples": 4, "channels": 0}):
        with pytest.raises(ValueError):
            synthetic_dataset(**kwargs)


def test_synthetic_is_learnable():
    """A few SGD steps of a tiny CNN reduce the loss clearly (the classes carry signal)."""
    torch.manual_seed(0)
    ds = synthetic_dataset(192, image_size=16, seed=0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = TensorBatchLoader(ds, 64, shuffle=True)
    losses = []
    for _ in range(5):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])  # chance level is ln(10) = 2.30


def test_random_crop_flip_matches_reference_crops():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    torch.manual_seed(1)
    out = random_crop_flip(x, pad=2, flip=False)
    assert out.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):  # every output is one of the 25 crops of its padded input
        crops = [xp[b, :, i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], c) for c in crops)
    flipped = random_crop_flip(x, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    for b in range(2):
        assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1))
    assert torch.equal(x, torch.arange(150, dtype=torch.float32).view(2, 3, 5, 5))  # input untouched


def test_tensor_dataset_normalizes_uint8_and_loader_batches():
    imgs = torch.full((10, 3, 4, 4), 255, dtype=torch.uint8)
    ds = TensorImageDataset(imgs, torch.arange(10) % 2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x, y = ds.batch(torch.tensor([0, 1]))
    assert torch.allclose(x, torch.full_like(x, 2.0)) and y.tolist() == [0, 1]
    loader = TensorBatchLoader(ds, 4)
    sizes = [len(y) for _, y in loader]
    assert sizes == [4, 4, 2] and len(loader) == 3
    assert len(TensorBatchLoader(ds, 4, drop_last=True)) == 2
    train, test = make_loaders(ds, ds, batch_size=4)
    assert train.shuffle and not test.shuffle and test.augment is False
    with pytest.raises(ValueError, match="mean"):
        TensorImageDataset(imgs, torch.zeros(10), mean=(0.5,))
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(imgs, torch.zeros(3))
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatchLoader(ds, 0)


def _write_fake_npz(path, n=6, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Smooth images (JPEG keeps them within a few grey levels) with a black top half.
    ramp = np.linspace(0, 200, 32)[None, None, :, None] + rng.integers(0, 50, size=(n, 1, 1, 3))
    imgs = np.broadcast_to(ramp, (n, 32, 32, 3)).astype(np.uint8).copy()
    imgs[:, :16] = 0
    blobs, offsets = [], [0]
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets.append(offsets[-1] + len(blobs[-1]))
    labels = np.arange(n) % 10
    np.savez(path, jpeg=np.concatenate(blobs), offsets=np.array(offsets, dtype=np.int64), labels=labels)
    return imgs, labels


def test_jpeg_npz_reader_and_cache(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    imgs, labels = _write_fake_npz(root / "train.npz", 6, seed=0)
    _write_fake_npz(root / "test.npz", 4, seed=1)
    dec, lab = read_jpeg_npz(str(root / "train.npz"))
    assert dec.shape == (6, 32, 32, 3) and dec.dtype == np.uint8 and lab.tolist() == labels.tolist()
    assert np.abs(dec.astype(int) - imgs.astype(int)).mean() < 6  # lossy but close
    assert (dec[:, :12] < 20).all()

    cache = tmp_path / "cache"
    train, test = load_shared_cifar10(str(root), cache_dir=str(cache))
    assert len(train) == 6 and len(test) == 4 and train.augment and not test.augment
    assert torch.equal(train.images, torch.from_numpy(dec).permute(0, 3, 1, 2))
    assert len(list(cache.glob("*-images.npy"))) == 2
    # A second load (new process simulated by clearing the memory cache) reads the .npy cache.
    data._MEMORY_CACHE.clear()
    train2, _ = load_shared_cifar10(str(root), cache_dir=str(cache))
    assert torch.equal(train2.images, train.images)
    assert get_dataset("cifar10", str(root), train=False).images.shape == (4, 3, 32, 32)


def test_missing_and_unknown_datasets_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.npz.*make_cifar10"):
        load_shared_cifar10(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*make_cifar10"):
        get_dataset("cifar10", str(tmp_path), train=True)
    with pytest.raises(FileNotFoundError, match="idx3"):
        get_dataset("mnist", str(tmp_path), train=True)
    with pytest.raises(ValueError, match="cifar100"):
        get_dataset("imagenet-22k", str(tmp_path), train=True)
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        get_dataset(f"imagefolder:{tmp_path / 'nope'}", None, train=True)


def test_mnist_idx_files(tmp_path):
    import gzip
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBIII", 0, 8, 3, 5, 28, 28) + imgs.tobytes())
    with open(raw / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, 5) + bytes([1, 2, 3, 4, 5]))
    ds = get_dataset("mnist", str(tmp_path), train=False)
    assert ds.images.shape == (5, 1, 28, 28) and ds.labels.tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = get_dataset(str(tmp_path), None, train=False, image_size=16)
    x, y = ds[3]
    assert len(ds) == 4 and x.shape == (3, 16, 16) and y == 1
    assert len(get_dataset(f"imagefolder:{tmp_path}", None, train=True, image_size=8)) == 4


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_CIFAR10, "test.npz")),
                    reason="shared CIFAR-10 data (../shared/data/cifar10) is absent")
def test_shared_cifar10():
    train, test = load_shared_cifar10(SHARED_CIFAR10)
    assert len(train) == 50000 and len(test) == 10000
    assert test.images.shape == (10000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    x, y = next(iter(make_loaders(None, test, eval_batch_size=512)[1]))
    assert x.shape == (512, 3, 32, 32) and abs(float(x.mean())) < 0.3


def test_cifar_pickle_layouts(tmp_path):
    import pickle

    for name, folder, files, key in (("cifar10", "cifar-10-batches-py", ["test_batch"], "labels"),
                                     ("cifar100", "cifar-100-python", ["test"], "fine_labels")):
        (tmp_path / folder).mkdir()
        data = np.arange(3 * 3072, dtype=np.int64).astype(np.uint8).reshape(3, 3072)
        for f in files:
            with open(tmp_path / folder / f, "wb") as fh:
                pickle.dump({"data": data, key: [2, 0, 1]}, fh)
        ds = get_dataset(name, str(tmp_path), train=False)
        assert ds.images.shape == (3, 3, 32, 32) and ds.labels.tolist() == [2, 0, 1]
        assert torch.equal(ds.images[1, 0].flatten(), torch.from_numpy(data[1, :1024]))  # R plane first
        assert not ds.augment and ds.num_classes == (10 if name == "cifar10" else 100)


# ----------------------------------------------------------------------------------------------
# split_holdout: the held-out part of prune()'s loader
# ----------------------------------------------------------------------------------------------
def _ids_dataset(n=100):
    """Images whose first pixel is the sample's index: a batch tells which samples it holds."""
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return TensorImageDataset(x, torch.arange(n) % 10, num_classes=10)


def _ids(loader):
    return [int(v) for x, _ in loader for v in x[:, 0, 0, 0]]


def test_split_holdout_tensor_loader_holds_out_samples_on_every_pass():
    ds = _ids_dataset(100)
    ds.augment = True  # the held-out part is evaluated without augmentation
    loader = TensorBatchLoader(ds, 16, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(1))
    s = data.split_holdout(loader, seed=0)
    assert s.by == "samples" and s.held_out_images == 16 and s.held_out_batch_sizes == [16]
    assert isinstance(s.search, TensorBatchLoader) and s.search.shuffle and s.search.drop_last
    assert loader.indices is None  # the user's loader is not modified
    held = _ids(s.held_out)
    assert held == sorted(held) and len(set(held)) == 16 and _ids(s.held_out) == held
    ds.augment = False
    for _ in range(3):  # a shuffling loader: disjoint on every pass, not just the first
        search = _ids(s.search)
        assert len(search) == 80 and not set(search) & set(held)
    assert set(_ids(TensorBatchLoader(ds, 16, indices=s.search.indices))) | set(held) == set(range(100))
    again = data.split_holdout(loader, seed=0)
    assert torch.equal(again.held_out.indices, s.held_out.indices)
    assert not torch.equal(data.split_holdout(loader, seed=1).held_out.indices, s.held_out.indices)
    # a split of a split stays inside it
    inner = data.split_holdout(s.search, seed=0)
    assert set(inner.held_out.indices.tolist()) <= set(s.search.indices.tolist())
    assert s.images_in(None) == 16 and s.images_in(1) == 16


def test_split_holdout_dataloader_by_subsets():
    from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

    x = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1).expand(50, 1, 2, 2).contiguous()
    dl = DataLoader(TensorDataset(x, torch.arange(50) % 10), batch_size=8, shuffle=True,
                    generator=torch.Generator().manual_seed(0))
    s = data.split_holdout(dl, seed=0)
    assert s.by == "samples" and s.held_out_images == 8 and s.held_out_batch_sizes == [8]
    assert isinstance(s.held_out.sampler, SequentialSampler)
    held = _ids(s.held_out)
    for _ in range(2):
        search = _ids(s.search)
        assert len(search) == 42 and not set(search) & set(held)
        assert set(search) | set(held) == set(range(50))


def test_split_holdout_lists_other_loaders_and_small_ones():
    batches = [(torch.full((4, 1, 2, 2), float(i)), torch.zeros(4, dtype=torch.long))
               for i in range(16)]
    s = data.split_holdout(batches, seed=0)
    assert s.by == "batches" and isinstance(s.search, list) and len(s.held_out) == 2
    assert len(s.search) == 14 and s.held_out_images == 8
    assert sorted(_ids(s.search) + _ids(s.held_out)) == sorted(_ids(batches))

    class Custom:  # no len(), no batch_size: counted
        def __iter__(self):
            return iter(batches)

    c = data.split_holdout(Custom(), seed=0)
    assert isinstance(c.held_out, data.BatchSubset) and len(c.held_out) == 2
    assert _ids(c.held_out) == _ids(s.held_out) and _ids(c.search) == _ids(s.search)
    assert 15 not in c.held_out.positions  # never the last (possibly incomplete) batch
    assert _ids(c.search) == _ids(c.search)  # re-iterable
    one = data.split_holdout(batches[:1], seed=0)
    assert one.held_out is None and one.search is not None and one.held_out_images == 0
    two = data.split_holdout(batches[:2], seed=0)
    assert len(two.held_out) == 1 and len(two.search) == 1 and two.held_out == [batches[0]]
    with pytest.raises(ValueError, match="fraction"):
        data.split_holdout(batches, fraction=1.0)


def test_split_holdout_parts_shard_like_any_loader():
    """Under torch.distributed the split is made before sharding: each rank gets the same split
    (deterministic for the seed), then its strided share of each part."""
    from gcnprune_fast import distributed
    from gcnprune_fast.training import with_generator

    loader = TensorBatchLoader(_ids_dataset(96), 8, shuffle=True)
    a, b = data.split_holdout(loader, seed=3), data.split_holdout(loader, seed=3)
    assert torch.equal(a.search.indices, b.search.indices)
    shares = [_ids(distributed._StridedIterable(with_generator(a.search, torch.Generator().manual_seed(0)),
                                                rank, 2, False)) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(a.search.indices.tolist())
