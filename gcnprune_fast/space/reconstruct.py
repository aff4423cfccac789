"""Least-squares reconstruction: refit the layers that read pruned channels before surgery.

Removing a channel removes its contribution to every layer that reads it; the channels that stay
are usually correlated with it, so the reading layer's weights on them can be refit to make up for
part of the loss (He et al. 2017, "Channel pruning for accelerating very deep neural networks";
ThiNet). Here every channel-mixing consumer (conv with ``groups=1``, linear) is refit in forward
order, by ridge regression from its input *in the masked network* (earlier refits included, so
drift accumulated upstream is corrected too) to its output *in the original network*, on a few
batches of the search data. The result is the physically pruned model with the refit weights; its
BatchNorm layers keep the original statistics (``prune()`` keeps them or re-estimated ones,
whichever scores better on its ``val_loader``).

Layers that are skipped: grouped / depthwise convs (each output reads one input group: nothing to
mix), convs with padding modes other than zeros, and consumers whose inputs are all kept when
``layers="pruned"``.
"""
from __future__ import annotations

import copy
import logging
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcnprune_fast.space import masked_eval
from gcnprune_fast.space.surgery import prune_model

__all__ = ["reconstruct", "reconstruction_batches", "check_reconstruct", "RECONSTRUCT_LAYERS",
           "RECONSTRUCT_IMAGES"]

RECONSTRUCT_LAYERS = ("all", "pruned")

RECONSTRUCT_IMAGES = 512  # default calibration images: R20 at 50% refits in seconds on 2 cores

logger = logging.getLogger("gcnprune_fast")


def check_reconstruct(reconstruct, images) -> None:
    """Refuse a bad ``reconstruct`` / ``reconstruct_images`` argument of ``prune()`` early."""
    if reconstruct is not None and reconstruct not in RECONSTRUCT_LAYERS:
        raise ValueError(f"reconstruct={reconstruct!r}; expected None (off) or one of "
                         f"{list(RECONSTRUCT_LAYERS)}")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"reconstruct_images must be a positive int, got {images!r}")


def reconstruction_batches(loader, images: int, device=None) -> List[torch.Tensor]:
    """The inputs of the first batches of ``loader`` (``(x, y)`` batches) up to ``images``
    images (the last batch cut), on ``device``."""
    from gcnprune_fast.data import split_batch

    out, have = [], 0
    for batch in loader:
        x, _ = split_batch(batch, "loader")
        x = x[:images - have]
        out.append(x if device is None else x.to(device))
        have += x.shape[0]
        if have >= images:
            break
    if not out:
        raise ValueError("reconstruction needs data: the loader yielded no batches")
    return out


def _flat_rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A layer's output as regression targets, one row per output position: [N * L, out]."""
    if isinstance(module, nn.Conv2d):
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def _features(module: nn.Module, x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """The regression features at output positions ``pick`` (indices into the ``N * L``
    positions): conv patches in ``F.unfold``'s column order (input channel major, then kernel
    position), gathered at those positions only, or linear inputs."""
    if not isinstance(module, nn.Conv2d):
        return x.reshape(-1, x.shape[-1])[pick]
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (module.kernel_size, module.stride,
                                              module.dilation, module.padding)
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    padded = F.pad(x, (pw, pw, ph, ph))
    image, pos = pick // (out_h * out_w), pick % (out_h * out_w)
    top, left = (pos // out_w) * sh, (pos % out_w) * sw
    taps = [padded[image, :, top + i * dh, left + j * dw] for i in range(kh) for j in range(kw)]
    return torch.stack(taps, dim=2).reshape(pick.numel(), -1)  # [R, in * kh * kw]


def _refittable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and \
            not isinstance(module.padding, str)
    return isinstance(module, nn.Linear)


def reconstruct(space, masks, batches: List, *, layers: str = "all", ridge: float = 1e-3,
                rows_per_batch: int = 8192, min_rows_per_feature: float = 4.0,
                seed: int = 0) -> nn.Module:
    """The model pruned by ``masks`` with its consumer layers refit by least squares.

    Args:
        space: the PruningSpace (``space.model`` is not modified).
        masks: keep-masks, one per group (validated here).
        batches: input batches (tensors, or tuples of the model's inputs) of search data; not
            the data the result is judged on.
        layers: ``"all"`` refits every consumer (corrects upstream drift too), ``"pruned"``
            only those that lose input channels.
        ridge: Tikhonov term, relative to the mean diagonal of each layer's Gram matrix.
        rows_per_batch: at most this many regression rows (output positions) per layer and batch
            are drawn at random (all batches run as one forward pass).
        min_rows_per_feature: a layer with fewer regression rows than this many per weight
            of an output channel is left as sliced (an under-determined fit would memorize the
            batches, e.g. a classifier sees one row per image).
        seed: seeds the row sampling.

    Returns:
        the compact model (eval mode), BN statistics as in the original.
    """
    if layers not in RECONSTRUCT_LAYERS:
        raise ValueError(f"reconstruct: layers={layers!r}; expected one of "
                         f"{list(RECONSTRUCT_LAYERS)}")
    if not batches:
        raise ValueError("reconstruct needs at least one batch of data")
    if ridge < 0 or rows_per_batch < 1:
        raise ValueError(f"reconstruct: need ridge >= 0 and rows_per_batch >= 1, got "
                         f"ridge={ridge}, rows_per_batch={rows_per_batch}")
    masks = space.validate_masks(masks)
    if isinstance(batches[0], (tuple, list)):
        inputs = tuple(torch.cat([b[i] for b in batches]) for i in range(len(batches[0])))
    else:
        inputs = (torch.cat(list(batches)),)
    original = copy.deepcopy(space.model).eval()
    work = copy.deepcopy(space.model).eval()
    consumers = space._consumers
    gen = torch.Generator().manual_seed(seed)
    max_rows = rows_per_batch * len(batches)
    picks: Dict[str, torch.Tensor] = {}
    targets: Dict[str, torch.Tensor] = {}

    def target_hook(name):  # on the original: sampled output rows of each consumer
        def hook(module, args, out):
            if name in targets:  # a module called twice is fit on its first call
                return
            rows = _flat_rows(module, out.detach())
            pick = torch.randperm(rows.shape[0], generator=gen)[:max_rows].sort().values
            picks[name], targets[name] = pick, rows[pick.to(rows.device)]
        return hook

    refit: List[str] = []

    def refit_hook(name, keep):  # on the masked copy, before the layer runs: refit it
        def hook(module, args):
            if name in refit or name not in targets:
                return
            refit.append(name)
            if not _refittable(module) or (layers == "pruned" and bool(keep.all())):
                return
            x = args[0].detach()  # pruned inputs are zero here, and their columns unused
            per_in = module.weight[0].numel() // module.weight.shape[1]
            cols = keep.repeat_interleave(per_in).to(x.device)  # columns of the kept inputs
            feats = _features(module, x, picks[name].to(x.device))[:, cols]
            if module.bias is not None:
                feats = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1)
            n = feats.shape[1]
            if feats.shape[0] < min_rows_per_feature * n:
                logger.info("reconstruct: %s left as sliced: %d rows for %d weights per output "
                            "(give more batches)", name, feats.shape[0], n)
                return
            # products in the layer's precision, the solve in float64
            gram = (feats.T @ feats).double()
            reg = ridge * float(gram.diagonal().mean()) + 1e-12
            eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
            solution = torch.linalg.solve(gram + reg * eye,
                                          (feats.T @ targets[name]).double())  # [features, out]
            w = module.weight.view(module.weight.shape[0], -1)
            new = torch.zeros_like(w)
            new[:, cols] = solution[:int(cols.sum())].T.to(w.dtype)
            w.copy_(new)
            if module.bias is not None:
                module.bias.copy_(solution[-1].to(module.bias.dtype))
        return hook

    originals, works = dict(original.named_modules()), dict(work.named_modules())
    handles = [originals[n].register_forward_hook(target_hook(n)) for n in consumers]
    try:
        with torch.no_grad():
            original(*inputs)
            # the masking pre-hooks first, then the refits (they see the masked inputs)
            with masked_eval.masked(work, consumers, masks):
                handles += [works[n].register_forward_pre_hook(refit_hook(
                    n, masked_eval.consumer_input_mask(consumers[n], masks).bool()))
                    for n in consumers]
                work(*inputs)
    finally:
        for h in handles:
            h.remove()
    return prune_model(work, space.example_inputs, {g.root: m for g, m in zip(space.groups, masks)},
                       output_shape=space.output_shape, unknown_ops=space.unknown_ops).eval()
