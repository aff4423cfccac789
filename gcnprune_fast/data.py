"""Datasets by name, a learnable synthetic image dataset, and fast tensor-based loaders.

* ``synthetic_dataset(n)``: deterministic, needs no files and no downloads (the demo uses it).
* ``get_dataset(name, data_dir, train)``: cifar10, cifar100, mnist, fashion-mnist (torchvision
  layouts under ``data_dir``), or any ImageFolder (``"imagefolder:PATH"`` or a directory).
* ``load_shared_cifar10(root)``: the JPEG copy of CIFAR-10 in ``../shared/data/cifar10``
  (``train.npz`` / ``test.npz``), decoded once and cached as ``.npy``.
* ``make_loaders(train_ds, test_ds)``: loaders yielding ``(inputs [B, C, H, W] float32,
  targets [B] int64)``.

In-memory datasets are :class:`TensorImageDataset` (uint8 or float images); their loader
(:class:`TensorBatchLoader`) slices whole batches and applies random-crop + flip augmentation on
batch tensors, which is far faster on a CPU than per-image PIL transforms.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import io
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

def split_batch(batch, loader_name: str = "loader") -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, targets)`` from one loader item, or raise a TypeError that says what the
    loader yielded instead. Inputs must be a tensor [N, ...] and targets a tensor [N]."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        kind = type(batch).__name__
        extra = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise TypeError(f"{loader_name} must yield (inputs, targets) pairs; it yielded a {kind}{extra}")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise TypeError(f"{loader_name} yielded inputs of type {type(x).__name__}"
                        f"{'' if not isinstance(x, torch.Tensor) else ' with shape ' + str(tuple(x.shape))};"
                        f" expected a tensor [N, C, H, W]")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"{loader_name} yielded targets {shape}; expected a tensor [N] of class "
                        f"indices with N = {x.shape[0]}")
    return x, y


def check_reiterable(loader, loader_name: str = "loader") -> None:
    """Raise TypeError unless ``loader`` can be iterated more than once.

    A generator or any other object that is its own iterator (``iter(loader) is loader``) is
    exhausted after one pass, while features, the reward set, BN re-estimation, evaluation and
    every fine-tuning epoch each iterate the data again. Checked without starting an iteration
    (no DataLoader workers are spawned)."""
    if loader is None:
        return
    if isinstance(loader, (str, bytes)) or not hasattr(loader, "__iter__"):
        raise TypeError(f"{loader_name} must be an iterable of (inputs, targets) batches (a "
                        f"DataLoader, a TensorBatchLoader or a list), got {type(loader).__name__}")
    if hasattr(loader, "__next__"):
        raise TypeError(f"{loader_name} is a one-shot iterator ({type(loader).__name__}): it is "
                        f"consumed by its first pass, but pruning iterates the data several times; "
                        f"pass a re-iterable loader such as a torch DataLoader, a TensorBatchLoader "
                        f"or a list of (inputs, targets) batches")


def check_labels(targets: torch.Tensor, num_classes: int, loader_name: str = "loader") -> None:
    """Raise ValueError unless ``targets`` are integer class indices in ``[0, num_classes)``;
    the message names the valid range and the first offending value."""
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"{loader_name} yielded targets of dtype {str(targets.dtype).replace('torch.', '')}; "
                         f"expected integer class indices (int64) in [0, {num_classes - 1}]")
    if targets.numel() == 0 or not bool(((targets < 0) | (targets >= num_classes)).any()):
        return  # one device sync per batch
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{loader_name} yielded the label {bad}, outside the valid range "
                         f"[0, {num_classes - 1}] of a model with {num_classes} outputs; check the "
                         f"dataset's labels or the model's number of classes")


def iterate_inputs(loader, loader_name: str = "loader") -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield checked ``(inputs, targets)``; raise ValueError if the loader is empty."""
    empty = True
    for batch in loader:
        empty = False
        yield split_batch(batch, loader_name)
    if empty:
        raise ValueError(f"{loader_name} is empty: it yielded no batches")


# ----------------------------------------------------------------------------------------------
# Holding out part of the search data (prune() without a val_loader)
# ----------------------------------------------------------------------------------------------
HOLDOUT_FRACTION = 0.125
"""Share of the loader's batches (at least one) that ``prune`` holds out from the search when no
``val_loader`` is given, to measure accuracies on (:func:`split_holdout`)."""


@dataclass
class HoldoutSplit:
    """The two parts of a loader split by :func:`split_holdout`.

    search: the loader for everything but the accuracies (re-iterable, same kind of loader as
        the input where possible). held_out: the held-out loader, or None when the loader has
        fewer than 2 batches (then ``search`` is the loader itself). held_out_images: images in
        ``held_out`` (0 when None). held_out_batch_sizes: size of each held-out batch in order,
        when known (``images_in``). by: ``"samples"`` (a random set of samples: TensorBatchLoader,
        DataLoader over a map-style dataset with the default samplers), ``"batches"`` (whole
        batch positions: lists, other loaders) or None (nothing held out).
    """

    search: Any = field(repr=False)
    held_out: Any = field(default=None, repr=False)
    held_out_images: int = 0
    held_out_batch_sizes: Optional[List[int]] = None
    by: Optional[str] = None

    def images_in(self, max_batches: Optional[int] = None) -> int:
        """Held-out images in the first ``max_batches`` held-out batches (None: all)."""
        if max_batches is None or self.held_out_batch_sizes is None:
            return int(self.held_out_images)
        return int(sum(self.held_out_batch_sizes[:max_batches]))


class BatchSubset:
    """Re-iterable view of ``loader`` yielding only the batches at ``positions`` (or, with
    ``keep=False``, all the others). Each pass iterates ``loader`` in full. Used by
    :func:`split_holdout` for loaders it cannot split by samples; a view of an already sharded
    loader (``distributed.is_sharded``) counts as sharded too."""

    def __init__(self, loader, positions: Sequence[int], num_batches: int, keep: bool = True):
        self.loader, self.num_batches, self.keep = loader, int(num_batches), bool(keep)
        self.positions = frozenset(int(p) for p in positions)
        from gcnprune_fast.distributed import is_sharded

        self._gcnprune_sharded = bool(is_sharded(loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if (i in self.positions) == self.keep:
                yield batch

    def __len__(self) -> int:
        inside = sum(1 for p in self.positions if p < self.num_batches)
        return inside if self.keep else self.num_batches - inside

    def map_loader(self, fn) -> "BatchSubset":
        """The same view of ``fn(loader)`` (e.g. the loader with a seeded generator)."""
        out = copy.copy(self)
        out.loader = fn(self.loader)
        return out


def count_batches(loader) -> int:
    """``len(loader)``, or the batches of one pass for a loader without a length."""
    try:
        return int(len(loader))
    except TypeError:
        return sum(1 for _ in loader)


def _dataloader_kwargs(dl) -> dict:
    kw = dict(num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
              timeout=dl.timeout, worker_init_fn=dl.worker_init_fn,
              multiprocessing_context=dl.multiprocessing_context, generator=dl.generator,
              prefetch_factor=dl.prefetch_factor, persistent_workers=dl.persistent_workers,
              pin_memory_device=dl.pin_memory_device)
    if hasattr(dl, "in_order"):
        kw["in_order"] = dl.in_order
    return kw


def _splittable_dataloader(loader) -> bool:
    """A plain DataLoader over a map-style dataset, batched by a BatchSampler over the default
    sequential or random (without replacement, all samples) sampler."""
    from torch.utils.data import BatchSampler, IterableDataset, RandomSampler, SequentialSampler

    if type(loader) is not DataLoader or isinstance(loader.dataset, IterableDataset):
        return False
    batches = loader.batch_sampler
    if type(batches) is not BatchSampler or batches.sampler is not loader.sampler:
        return False
    sampler = loader.sampler
    if type(sampler) is SequentialSampler:
        return True
    return (type(sampler) is RandomSampler and not sampler.replacement
            and sampler._num_samples is None)


def _full_batch_sizes(n: int, batch_size: int) -> List[int]:
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


def split_holdout(loader, seed: int = 0, fraction: float = HOLDOUT_FRACTION,
                  loader_name: str = "loader") -> HoldoutSplit:
    """Split ``loader`` deterministically (for ``seed``) into a search part and a held-out part
    of ``max(1, round(fraction * batches))`` batches' worth of data; nothing is held out
    (``held_out`` None) when the loader has fewer than 2 batches.

    - :class:`TensorBatchLoader`: a random set of that many *samples* (``batch_size`` per held-out
      batch) is held out. The search part is a copy of the loader over the other samples (its
      shuffling, augmentation and ``drop_last`` kept); the held-out part iterates its samples in
      order, without augmentation and without dropping a last incomplete batch.
    - ``torch.utils.data.DataLoader`` over a map-style dataset with the default samplers: the
      same, with ``torch.utils.data.Subset`` s of the dataset (other settings copied).
    - lists / tuples of batches: that many randomly chosen batches (lists again).
    - any other loader (custom classes, DataLoaders with their own samplers or iterable datasets):
      randomly chosen batch *positions* (:class:`BatchSubset` views), never the last batch (which
      may be incomplete). This holds images out only if the loader yields the same batches on
      every pass; a loader that shuffles by itself mixes the parts.

    Splitting by samples keeps a shuffling loader's parts apart on every pass. The split is made
    on the whole loader and draws from its own ``torch.Generator(seed)``, so under
    torch.distributed every rank gets the same split (each part is then sharded like any loader).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    num_batches = count_batches(loader)
    if num_batches < 2:
        return HoldoutSplit(search=loader)
    hold_batches = min(max(1, int(round(fraction * num_batches))), num_batches - 1)
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(loader, TensorBatchLoader) or _splittable_dataloader(loader):
        tensor = isinstance(loader, TensorBatchLoader)
        base = (loader.indices if tensor and loader.indices is not None
                else torch.arange(len(loader.dataset) if not tensor else loader._num_samples()))
        n, bs = int(base.numel()), int(loader.batch_size)
        # the search part keeps at least one (full, under drop_last) batch
        n_hold = min(hold_batches * bs, n - (bs if loader.drop_last else 1))
        perm = base[torch.randperm(n, generator=gen)]
        held, rest = perm[:n_hold].sort().values, perm[n_hold:].sort().values
        sizes = _full_batch_sizes(n_hold, bs)
        if tensor:
            search = copy.copy(loader)
            search.indices = rest
            held_loader = TensorBatchLoader(loader.dataset, bs, shuffle=False, drop_last=False,
                                            augment=False, generator=loader.generator,
                                            indices=held)
            return HoldoutSplit(search, held_loader, n_hold, sizes, "samples")
        from torch.utils.data import RandomSampler, Subset

        kw = _dataloader_kwargs(loader)
        search_ds = Subset(loader.dataset, rest.tolist())
        sampler = loader.sampler
        if isinstance(sampler, RandomSampler):
            sampler = RandomSampler(search_ds, generator=sampler.generator)
        else:
            sampler = None
        search = DataLoader(search_ds, batch_size=bs, drop_last=loader.drop_last, sampler=sampler,
                            **kw)
        held_loader = DataLoader(Subset(loader.dataset, held.tolist()), batch_size=bs,
                                 shuffle=False, drop_last=False, **kw)
        return HoldoutSplit(search, held_loader, n_hold, sizes, "samples")
    positions = sorted(int(p) for p in
                       torch.randperm(num_batches - 1, generator=gen)[:hold_batches])
    if isinstance(loader, (list, tuple)):
        chosen = set(positions)
        held = [b for i, b in enumerate(loader) if i in chosen]
        search = [b for i, b in enumerate(loader) if i not in chosen]
        sizes = [int(split_batch(b, loader_name)[1].shape[0]) for b in held]
        return HoldoutSplit(search, held, sum(sizes), sizes, "batches")
    held = BatchSubset(loader, positions, num_batches, keep=True)
    search = BatchSubset(loader, positions, num_batches, keep=False)
    bs = getattr(loader, "batch_size", None)
    if isinstance(bs, int) and bs > 0:  # held-out batches are never the last one: all full
        sizes = [bs] * len(positions)
    else:  # unknown: count them (one pass)
        sizes = [int(split_batch(b, loader_name)[1].shape[0]) for b in held]
    return HoldoutSplit(search, held, sum(sizes), sizes, "batches")


DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashion-mnist", "synthetic")
"""Names accepted by :func:`get_dataset` (plus ``"imagefolder:PATH"`` and plain directories)."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SHARED_CIFAR10_HINT = (
    "the shared CIFAR-10 copy lives in ../shared/data/cifar10 (train.npz, test.npz); to get the "
    "torchvision layout instead run `python ../shared/data/make_cifar10.py ROOT` and pass "
    "--data-dir ROOT")


# ----------------------------------------------------------------------------------------------
# In-memory datasets and their batch loader
# ----------------------------------------------------------------------------------------------
class TensorImageDataset(Dataset):
    """Images held in memory as one tensor, normalized (and optionally augmented) on access.

    Args:
        images: ``[N, C, H, W]`` uint8 (0..255, scaled to [0, 1] then normalized with
            ``mean``/``std``) or float32 (used as given, ``mean``/``std`` still applied if set).
        labels: ``[N]`` int64 class indices.
        mean, std: per-channel normalization (length C) or None for none.
        augment: random crop (zero padding ``pad``) + horizontal flip on access.
        pad: padding of the random crop in pixels.
        num_classes: number of classes (default ``labels.max() + 1``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, augment: bool = False, pad: int = 4,
                 num_classes: Optional[int] = None):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a [N, C, H, W] tensor, got "
                             f"{getattr(images, 'shape', type(images))}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"images must be uint8 or float32, got {images.dtype}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        c = images.shape[1]
        for arg, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != c:
                raise ValueError(f"{arg} must have {c} entries (one per channel), got {len(v)}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.images = images.contiguous()
        self.labels = labels
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.num_classes = int(num_classes if num_classes is not None
                               else (int(labels.max()) + 1 if len(labels) else 0))

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor, augment: Optional[bool] = None,
              generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(inputs [B, C, H, W] float32, targets [B] int64)`` for the int64 ``index``."""
        x = self.images[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.clone()
        if self.mean is not None:
            x.sub_(self.mean)
        if self.std is not None:
            x.div_(self.std)
        if self.augment if augment is None else augment:
            # Pad after normalization: padded pixels are 0 = the mean colour (torchvision pads the
            # raw image with black; the difference does not matter for accuracy).
            x = random_crop_flip(x, self.pad, generator=generator)
        return x, self.labels[index]

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], y[0]


def random_crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random ``H x W`` crop of the zero-padded batch and random horizontal flip, per sample.

    Args:
        x: ``[B, C, H, W]`` float tensor.
        pad: zero padding on each side in pixels (crop offsets are uniform in ``[0, 2 * pad]``).
        flip: flip each sample horizontally with probability 1/2.
        generator: torch RNG (default: the global one).

    Returns:
        ``[B, C, H, W]`` tensor (new memory).
    """
    b, c, h, w = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]       # [B, 1, H, 1]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]       # [B, 1, 1, W]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        do_flip = torch.rand(b, generator=generator) < 0.5
        if bool(do_flip.any()):
            x = x.clone() if pad == 0 else x
            x[do_flip] = x[do_flip].flip(-1)
    return x


class TensorBatchLoader:
    """Iterates over a :class:`TensorImageDataset` in batches of ``(inputs, targets)``.

    Shuffling and augmentation draw from ``generator`` (default: torch's global RNG, so that
    ``torch.manual_seed`` and saving/restoring the global RNG state make epochs reproducible).

    Args:
        dataset: the dataset.
        batch_size: samples per batch (>= 1).
        shuffle: new random order every epoch.
        drop_last: skip the final incomplete batch.
        augment: override the dataset's ``augment`` flag (None keeps it).
        generator: optional ``torch.Generator``.
        indices: iterate only these samples of the dataset (int64 [M]; None: all of them), e.g.
            one part of a :func:`split_holdout`.
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int = 128, shuffle: bool = False,
                 drop_last: bool = False, augment: Optional[bool] = None,
                 generator: Optional[torch.Generator] = None,
                 indices: Optional[torch.Tensor] = None):
        if not isinstance(dataset, TensorImageDataset):
            raise TypeError(f"dataset must be a TensorImageDataset, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if indices is not None:
            indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(dataset)):
                raise ValueError(f"indices must lie in [0, {len(dataset) - 1}]")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.generator = generator
        self.indices = indices

    def _num_samples(self) -> int:
        return len(self.dataset) if self.indices is None else int(self.indices.numel())

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = self._num_samples()
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.indices is not None:
            order = self.indices[order]
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.dataset.batch(idx, augment=self.augment, generator=self.generator)


def make_loaders(train_ds: Optional[Dataset], test_ds: Optional[Dataset], batch_size: int = 128,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0,
                 drop_last: bool = True):
    """Build ``(train_loader, test_loader)``; either dataset may be None (its loader is None).

    :class:`TensorImageDataset` gets a :class:`TensorBatchLoader` (batch augmentation, no
    workers); any other dataset a ``torch.utils.data.DataLoader`` with ``num_workers``. The train
    loader shuffles (and drops the last incomplete batch when ``drop_last``); the test loader
    does not shuffle and never augments.
    """
    eval_batch_size = eval_batch_size or max(batch_size, 256)

    def build(ds, train):
        if ds is None:
            return None
        bs = batch_size if train else eval_batch_size
        if isinstance(ds, TensorImageDataset):
            return TensorBatchLoader(ds, bs, shuffle=train, drop_last=train and drop_last
                                     and len(ds) > bs, augment=None if train else False)
        return DataLoader(ds, batch_size=bs, shuffle=train, drop_last=train and drop_last
                          and len(ds) > bs, num_workers=num_workers)

    return build(train_ds, True), build(test_ds, False)


# ----------------------------------------------------------------------------------------------
# Synthetic dataset
# ----------------------------------------------------------------------------------------------
_SYNTHETIC_CLASS_SEED = 1234  # class definitions do not depend on the sample seed


def synthetic_dataset(num_samples: int, num_classes: int = 10, image_size: int = 32,
                      channels: int = 3, seed: int = 0) -> TensorImageDataset:
    """A small, learnable, deterministic image-classification dataset (no files, no downloads).

    Every class is an oriented sine grating (class-specific orientation and spatial frequency)
    tinted with a class-specific colour, plus a class-specific second "blob" motif; each sample
    draws a random phase, shift, contrast, brightness and Gaussian pixel noise, and a random
    other class's colour leaks in, so that colour alone is not enough and a CNN has to look at
    texture. Class definitions depend only on ``num_classes`` and ``channels``: datasets drawn with
    different ``seed`` values share their classes (use different seeds for train and test).

    Args:
        num_samples: number of images (>= 1); labels are balanced (``i % num_classes``, shuffled).
        num_classes: number of classes (>= 2).
        image_size: height = width in pixels (>= 8).
        channels: image channels (>= 1).
        seed: sample seed.

    Returns:
        :class:`TensorImageDataset` with float32 images ``[num_samples, channels, S, S]`` of about
        zero mean and unit variance, and int64 labels ``[num_samples]``.
    """
    for arg, value, low in (("num_samples", num_samples, 1), ("num_classes", num_classes, 2),
                            ("image_size", image_size, 8), ("channels", channels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    cg = torch.Generator().manual_seed(_SYNTHETIC_CLASS_SEED + 7919 * num_classes + channels)
    # Orientations spread over [0, pi) in a scrambled order, so that neighbouring labels differ.
    theta = (torch.randperm(num_classes, generator=cg).double() + 0.5) * math.pi / num_classes
    freq = 2.0 + 3.0 * torch.rand(num_classes, generator=cg, dtype=torch.float64)   # cycles/image
    colour = torch.randn(num_classes, channels, generator=cg, dtype=torch.float64)
    colour = colour / colour.norm(dim=1, keepdim=True).clamp_min(1e-6)
    blob_sigma = 0.08 + 0.12 * torch.rand(num_classes, generator=cg, dtype=torch.float64)
    blob_sign = torch.where(torch.rand(num_classes, generator=cg) < 0.5, -1.0, 1.0).double()

    g = torch.Generator().manual_seed(int(seed))
    n, s = num_samples, image_size
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    coords = (torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5        # [S] in (-0.5, 0.5)
    yy, xx = coords.view(1, s, 1), coords.view(1, 1, s)
    shift = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 0.5     # +-1/4 image
    th = theta[labels] + 0.15 * torch.randn(n, generator=g, dtype=torch.float64)  # jitter
    fr = freq[labels] * (1 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64))
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    u = ((xx - shift[:, 0, None, None]) * torch.cos(th)[:, None, None]
         + (yy - shift[:, 1, None, None]) * torch.sin(th)[:, None, None])
    grating = torch.sin(2 * math.pi * fr[:, None, None] * u + phase[:, None, None])   # [N, S, S]
    bx, by = shift[:, 0, None, None] * -1.2, shift[:, 1, None, None] * -1.2
    r2 = (xx - bx) ** 2 + (yy - by) ** 2
    blob = blob_sign[labels, None, None] * torch.exp(-r2 / (2 * blob_sigma[labels, None, None] ** 2))
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g, dtype=torch.float64)
    other = colour[torch.randint(0, num_classes, (n,), generator=g)]           # distractor colour
    mix = 0.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    tint = ((1 - mix) * colour[labels] + mix * other)[:, :, None, None]       # [N, C, 1, 1]
    img = contrast * (grating[:, None] * (0.6 + 0.4 * tint) + 1.5 * blob[:, None] * tint)
    img = img + 0.3 * torch.randn(n, channels, 1, 1, generator=g, dtype=torch.float64)  # brightness
    img = img + 0.8 * torch.randn(n, channels, s, s, generator=g, dtype=torch.float64)  # noise
    img = (img - img.mean()) / img.std().clamp_min(1e-6)
    return TensorImageDataset(img.float(), labels, num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# Shared CIFAR-10 (JPEG npz)
# ----------------------------------------------------------------------------------------------
def default_cache_dir() -> str:
    """``$GCNPRUNE_CACHE_DIR``, else ``~/.cache/gcnprune_fast``."""
    return os.environ.get("GCNPRUNE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "gcnprune_fast")


def read_jpeg_npz(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Decode an npz of concatenated JPEGs (arrays ``jpeg``, ``offsets``, ``labels``).

    Returns:
        ``(images [N, H, W, 3] uint8, labels [N] int64)``.
    """
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected the JPEG npz file {path}; {SHARED_CIFAR10_HINT}")
    with np.load(path) as d:
        missing = {"jpeg", "offsets", "labels"} - set(d.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)} (has {d.files})")
        jpeg, off, labels = d["jpeg"], d["offsets"].astype(np.int64), d["labels"].astype(np.int64)
    if off.ndim != 1 or len(off) != len(labels) + 1:
        raise ValueError(f"{path}: offsets must have len(labels) + 1 = {len(labels) + 1} entries, "
                         f"got shape {off.shape}")
    if len(labels) == 0:
        raise ValueError(f"{path} holds no images")
    images = [np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes())).convert("RGB"))
              for i in range(len(labels))]
    return np.stack(images), labels


def _cached_decode(path: str, cache_dir: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`read_jpeg_npz` with a ``.npy`` cache keyed on the file's path, size and mtime."""
    if cache_dir is None:
        return read_jpeg_npz(path)
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = os.path.join(cache_dir, f"{os.path.splitext(os.path.basename(path))[0]}-{key}")
    img_file, lab_file = stem + "-images.npy", stem + "-labels.npy"
    if os.path.isfile(img_file) and os.path.isfile(lab_file):
        try:
            return np.load(img_file), np.load(lab_file)
        except (OSError, ValueError):
            pass  # corrupt cache: decode again
    images, labels = read_jpeg_npz(path)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for file, arr in ((img_file, images), (lab_file, labels)):
            tmp = f"{file}.{os.getpid()}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, file)  # atomic: concurrent readers never see half a file
    except OSError:
        pass  # read-only cache location: still return the decoded arrays
    return images, labels


_MEMORY_CACHE: dict = {}


def load_shared_cifar10(root: str, cache_dir: Optional[str] = "default", augment_train: bool = True
                        ) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """Load CIFAR-10 from ``root/train.npz`` and ``root/test.npz`` (JPEG bytes + offsets + labels).

    Images are decoded once with PIL; the decoded uint8 arrays are kept in memory for the process
    and saved as ``.npy`` under ``cache_dir`` (``"default"``: :func:`default_cache_dir`; None: no
    disk cache), so later runs load in well under a second.

    Args:
        root: folder holding ``train.npz`` and ``test.npz`` (e.g. ``../shared/data/cifar10``).
        cache_dir: see above.
        augment_train: random crop (padding 4) + flip on the training set's batches.

    Returns:
        ``(train_ds, test_ds)`` :class:`TensorImageDataset` s (50,000 / 10,000 images ``[3, 32, 32]``
        uint8, normalized with the CIFAR-10 mean/std on access).
    """
    root = os.fspath(root)
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    out = []
    for split in ("train", "test"):
        path = os.path.join(root, f"{split}.npz")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"expected {path} (CIFAR-10 {split} split as JPEG npz); "
                                    f"{SHARED_CIFAR10_HINT}")
        mkey = (os.path.abspath(path), os.stat(path).st_mtime_ns)
        if mkey not in _MEMORY_CACHE:
            images, labels = _cached_decode(path, cache_dir)
            _MEMORY_CACHE[mkey] = (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                                   torch.from_numpy(labels.astype(np.int64)))
        x, y = _MEMORY_CACHE[mkey]
        out.append(TensorImageDataset(x, y, CIFAR10_MEAN, CIFAR10_STD,
                                      augment=augment_train and split == "train", num_classes=10))
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------
# Datasets by name
# ----------------------------------------------------------------------------------------------
def _read_idx(path: str) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(data_dir: str, subfolders: Sequence[str], stem: str) -> Optional[str]:
    for sub in subfolders:
        for suffix in ("", ".gz"):
            p = os.path.join(data_dir, sub, stem + suffix)
            if os.path.isfile(p):
                return p
    return None


def _mnist_like(name: str, data_dir: str, train: bool, download: bool) -> TensorImageDataset:
    folder = "MNIST" if name == "mnist" else "FashionMNIST"
    prefix = "train" if train else "t10k"
    subs = ["", os.path.join(folder, "raw"), folder]
    img = _find_idx(data_dir, subs, f"{prefix}-images-idx3-ubyte")
    lab = _find_idx(data_dir, subs, f"{prefix}-labels-idx1-ubyte")
    if (img is None or lab is None) and download:
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        cls(data_dir, train=train, download=True)
        img = _find_idx(data_dir, subs, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(data_dir, subs, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        hint = ("copy the files from ../shared/data/mnist" if name == "mnist" else
                "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist")
        raise FileNotFoundError(
            f"{name}: expected {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] in "
            f"{data_dir} or {os.path.join(data_dir, folder, 'raw')}; {hint}, or pass download=True "
            f"(--download)")
    x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)   # [N, 1, 28, 28] uint8
    y = torch.from_numpy(_read_idx(lab).astype(np.int64))
    mean, std = (MNIST_MEAN, MNIST_STD) if name == "mnist" else (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    # No augmentation: flips would change digits' meaning.
    return TensorImageDataset(x, y, mean, std, augment=False, num_classes=10)


def _read_cifar_pickles(folder: str, files: Sequence[str], label_key: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read python-pickle CIFAR batches -> ``(images [N, 3, 32, 32] uint8, labels [N] int64)``."""
    import pickle

    xs, ys = [], []
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"expected the CIFAR batch file {path}")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar(name: str, data_dir: str, train: bool, download: bool) -> TensorImageDataset:
    if name == "cifar10" and all(os.path.isfile(os.path.join(data_dir, f"{s}.npz"))
                                 for s in ("train", "test")):
        train_ds, test_ds = load_shared_cifar10(data_dir)
        return train_ds if train else test_ds
    folder = os.path.join(data_dir, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if not os.path.isdir(folder):
        if download:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            cls(data_dir, train=train, download=True)
        else:
            hint = (f"run `python ../shared/data/make_cifar10.py {data_dir}` to create it from the "
                    f"shared copy, pass the folder holding train.npz/test.npz, or pass download=True "
                    f"(--download)" if name == "cifar10" else "pass download=True (--download)")
            raise FileNotFoundError(f"{name}: expected the torchvision folder {folder}; {hint}")
    # Read the pickles directly (torchvision would also verify md5 sums, which copies re-encoded
    # by make_cifar10.py do not match).
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        x, y = _read_cifar_pickles(folder, files, "labels")
        mean, std, k = CIFAR10_MEAN, CIFAR10_STD, 10
    else:
        x, y = _read_cifar_pickles(folder, ["train" if train else "test"], "fine_labels")
        mean, std, k = CIFAR100_MEAN, CIFAR100_STD, 100
    return TensorImageDataset(x, y, mean, std, augment=train, num_classes=k)


def _image_folder(path: str, train: bool, image_size: int) -> Dataset:
    import torchvision
    from torchvision import transforms as T

    if not os.path.isdir(path):
        raise FileNotFoundError(f"ImageFolder: expected a directory with one subfolder per class "
                                f"at {path}")
    split = os.path.join(path, "train" if train else "val")
    if os.path.isdir(split):
        path = split
    elif not train and os.path.isdir(os.path.join(path, "test")):
        path = os.path.join(path, "test")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size),
                        T.ToTensor(), norm])
    return torchvision.datasets.ImageFolder(path, transform=tf)


def get_dataset(name: str, data_dir: Optional[str], train: bool, download: bool = False,
                image_size: Optional[int] = None) -> Dataset:
    """Load a dataset by name.

    Args:
        name: ``cifar10`` / ``cifar100`` (torchvision folders under ``data_dir``; for cifar10 a
            folder with ``train.npz``/``test.npz`` also works), ``mnist`` / ``fashion-mnist``
            (IDX files in ``data_dir`` or ``data_dir/<MNIST|FashionMNIST>/raw``), ``synthetic``
            (no files: 5,000 train / 1,000 test images), ``imagefolder:PATH`` or a directory
            (one subfolder per class; ``PATH/train`` and ``PATH/val`` are used when present).
        data_dir: root folder (ignored for ``synthetic`` and ImageFolder paths).
        train: training split (with augmentation: random crop + flip for CIFAR) or test split.
        download: let torchvision download missing files.
        image_size: ImageFolder crop size (default 224) / synthetic image size (default 32).

    Returns:
        a ``Dataset`` of ``(image [C, H, W] float32, label int)``; in-memory ones are
        :class:`TensorImageDataset` (use :func:`make_loaders` for fast batch loading).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    key = name.lower().replace("_", "-")
    if key.startswith("imagefolder:"):
        return _image_folder(os.path.expanduser(name.split(":", 1)[1]), train, image_size or 224)
    if key == "synthetic":
        return synthetic_dataset(5000 if train else 1000, image_size=image_size or 32,
                                 seed=0 if train else 1)
    if key in ("cifar10", "cifar100", "mnist", "fashion-mnist", "fashionmnist"):
        if data_dir is None:
            raise ValueError(f"dataset {name!r} needs data_dir (the folder holding its files)")
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if key in ("cifar10", "cifar100"):
            return _cifar(key, data_dir, train, download)
        return _mnist_like("mnist" if key == "mnist" else "fashion-mnist", data_dir, train, download)
    if os.path.isdir(os.path.expanduser(name)):
        return _image_folder(os.path.expanduser(name), train, image_size or 224)
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASET_NAMES)}, "
                     f"'imagefolder:PATH' or an existing directory")


def dataset_num_classes(ds: Dataset) -> int:
    """Number of classes of a dataset from this module (or any with ``classes``/``num_classes``)."""
    if hasattr(ds, "num_classes"):
        return int(ds.num_classes)
    if hasattr(ds, "classes"):
        return len(ds.classes)
    raise ValueError(f"cannot tell the number of classes of {type(ds).__name__}")


def dataset_channels(ds: Dataset) -> int:
    """Image channels of a dataset (from its first sample if needed)."""
    if isinstance(ds, TensorImageDataset):
        return int(ds.images.shape[1])
    return int(ds[0][0].shape[0])


__all__ = [
    "DATASET_NAMES", "TensorImageDataset", "TensorBatchLoader", "random_crop_flip", "make_loaders",
    "synthetic_dataset", "load_shared_cifar10", "read_jpeg_npz", "get_dataset", "default_cache_dir",
    "dataset_num_classes", "dataset_channels", "check_reiterable", "check_labels",
    "HOLDOUT_FRACTION", "HoldoutSplit", "BatchSubset", "count_batches", "split_holdout",
]
