"""Re-ranking: choose among candidate masks by what a user keeps, accuracy after fine-tuning.

A search's reward (accuracy of the masked network on a few hundred images, right after BN
re-estimation) ranks masks by how well they work *before* fine-tuning; on a trained ResNet-20 the
method's +17-point lead there vanished after one epoch of fine-tuning (issue 9). Re-ranking is
the multi-fidelity step: each candidate (the search's best distinct masks plus the allocations of
the plain criteria, so the result never starts below a criterion the user could have run) is
pruned physically, its BN statistics re-estimated, fine-tuned for a few SGD steps on the search
data, and scored on the selection data (``val_loader``; never the search data). The best one
wins; the table of every candidate goes into the report.

Screening (``screen_steps`` > 0) is successive halving with one cut: every candidate first gets a
``screen_steps`` fine-tune; only the ``screen_keep`` best by that score get the full ``steps``
fine-tune, again from their pruned weights, so a survivor's score equals what a full re-ranking
gives it and the choice equals the full re-ranking's whenever its winner survives the screen.
Why: the short fine-tunes are the bulk of a re-ranking's time (899 of 1139 s on ResNet-56). Off
by default: on ResNet-20 a 25-of-100-step screen kept the full re-ranking's winner in 3 of 5 seeds
(docs/QUALITY.md).

Under torch.distributed every rank processes every candidate in the same order: fine-tuning is
data-parallel (DDP), evaluation sharded, so all ranks pick the same winner.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from gcnprune_fast.methods.allocation import Budget, allocate, project_to_budget
from gcnprune_fast.methods.criteria import l1_scores, l2_scores
from gcnprune_fast.methods.registry import option
from gcnprune_fast.methods.search.reward import mask_key
from gcnprune_fast.space.reconstruct import (RECONSTRUCT_IMAGES, reconstruct as space_reconstruct,
                                             reconstruction_batches)
from gcnprune_fast.utils import format_duration

__all__ = ["RERANK_AFTER_SEARCH_OPTIONS", "RERANK_OPTIONS", "check_rerank_options",
           "criterion_candidates", "rerank", "rerank_search_candidates", "RerankOptions",
           "CRITERION_CANDIDATES"]

logger = logging.getLogger("gcnprune_fast")

# allocations of plain criteria that join the search's candidates (see criterion_candidates)
CRITERION_CANDIDATES = ("l1-global-z", "l1-global-mean", "l2-global-mean", "l1-uniform")


@dataclass
class RerankOptions:
    """Re-ranking options (a base class of the options of the methods that offer it)."""

    rerank_top: int = option(0, "re-rank this many of the search's best distinct masks (plus the "
                             "criteria's allocations when rerank_criteria) by selection accuracy "
                             "after rerank_steps fine-tuning steps; 0 = off", minimum=0)
    rerank_criteria: bool = option(True, "re-ranking also considers the plain criteria's "
                                   "allocations (L1/L2, global and uniform)")
    rerank_steps: int = option(100, "SGD steps of each candidate's short fine-tune", minimum=1)
    rerank_lr: float = option(0.01, "learning rate of the short fine-tune", minimum=0.0)
    rerank_amp: str = option("none", "mixed precision of the short fine-tunes: bf16 (autocast; "
                             "about 1.9x faster on CPUs with AMX, the bulk of a re-ranking's time "
                             "on ResNet-56) or none", choices=("none", "bf16"))
    rerank_screen_steps: int = option(0, "screen every candidate with a fine-tune of this many "
                                      "steps first and give the full rerank_steps only to the "
                                      "rerank_screen_keep best; 0 = no screening", minimum=0)
    rerank_screen_keep: int = option(2, "candidates that pass the screen", minimum=1)


# every re-ranking option: out of the search fingerprint of searches that keep every scored
# configuration (amc, evolution, graph-pruning), so a finished search serves any of them
RERANK_OPTIONS = tuple(f.name for f in fields(RerankOptions))
# read only once a search has finished (rerank_top is not for channel-gcn: its search keeps only
# that many best masks)
RERANK_AFTER_SEARCH_OPTIONS = tuple(n for n in RERANK_OPTIONS if n != "rerank_top")


def check_rerank_options(method: str, opts: RerankOptions) -> None:
    """Refuse re-ranking options that cannot work together, before the search starts."""
    if opts.rerank_screen_steps and opts.rerank_screen_steps >= opts.rerank_steps:
        raise ValueError(f"method {method!r}: rerank_screen_steps ({opts.rerank_screen_steps}) "
                         f"must be below rerank_steps ({opts.rerank_steps}): the screen is the "
                         f"cheap first look, the full fine-tune the second")


def criterion_candidates(space, budget: Budget) -> List[Tuple[str, List[torch.Tensor]]]:
    """Masks of the plain magnitude criteria at ``budget``, as ``(name, masks)``:

    - ``l1-global-z``: L1 norms standardized within each group, one global ranking (the
      library's ``l1`` method, and channel-gcn's warm start);
    - ``l1-global-mean`` / ``l2-global-mean``: norms divided by their group's mean, one global
      ranking (Torch-Pruning's GroupMagnitudeImportance with its default ``normalizer="mean"``,
      its strongest pruner after fine-tuning in issue 9's measurements);
    - ``l1-uniform``: the same fraction of every group, top L1 kept.
    """
    l1, l2 = l1_scores(space), l2_scores(space)
    out = [("l1-global-z", allocate(space, l1, budget, allocation="global"))]
    for name, scores in (("l1-global-mean", l1), ("l2-global-mean", l2)):
        normed = [s / s.mean().clamp_min(1e-12) for s in scores]
        out.append((name, project_to_budget(space, space.full_masks(), normed, budget, fill=True)))
    out.append(("l1-uniform", allocate(space, l1, budget, allocation="uniform")))
    return out


def rerank(space, candidates: Sequence[Tuple[str, List[torch.Tensor]]], *, loader, val_loader,
           device, steps: int, lr: float = 0.01, bn_batches: int = 10, seed: int = 0,
           amp: Optional[str] = None, screen_steps: int = 0, screen_keep: int = 2,
           eval_batches: Optional[int] = None, progress: bool = False,
           reconstruct: Optional[str] = None, reconstruct_images: int = RECONSTRUCT_IMAGES
           ) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
    """Pick the candidate with the best selection accuracy after a short fine-tune.

    Args:
        space: the PruningSpace (its model is not modified).
        candidates: ``(name, masks)``; duplicates (same masks) are scored once, under the first
            name.
        loader: search data: BN re-estimation and the ``steps`` fine-tuning steps.
        val_loader: the selection data the candidates are scored on (must not be ``loader``).
        steps: SGD steps per candidate (cosine schedule from ``lr``, batch = the loader's).
        seed: seeds each candidate's fine-tune identically (same batches for everyone).
        amp: ``"bf16"``: the fine-tunes under bf16 autocast (``training.train``); None: float32.
        screen_steps: > 0 (below ``steps``): every candidate is first fine-tuned this many
            steps and scored (``screen_acc``); only the ``screen_keep`` best get the full
            fine-tune (ties go to the earlier candidate). Skipped when there are no more than
            ``screen_keep`` distinct candidates.
        reconstruct / reconstruct_images: each candidate is refit by least squares
            (``gcnprune_fast.space.reconstruct``, on the first images of ``loader``) as
            ``prune(reconstruct=...)`` builds the result; no separate BN re-estimation (the
            short fine-tune, in train mode, re-estimates the statistics anyway).

    Returns:
        (winning masks, one row per distinct candidate: ``name``, ``screen_acc`` (None without
        screening), ``selection_acc`` (None for a candidate screened out), ``kept_flops``,
        ``time_s`` (both fidelities), ``chosen``), rows in candidate order.
    """
    from gcnprune_fast import training

    if val_loader is None or val_loader is loader:
        raise ValueError("rerank needs selection data (val_loader) distinct from the search "
                         "loader: scoring on the fine-tuning data would favour overfitting")
    if not candidates:
        raise ValueError("rerank got no candidates")
    if steps < 1:
        raise ValueError(f"rerank: steps must be >= 1, got {steps}")
    if screen_steps < 0 or screen_keep < 1 or (screen_steps and screen_steps >= steps):
        raise ValueError(f"rerank: need 0 <= screen_steps < steps and screen_keep >= 1, got "
                         f"screen_steps={screen_steps}, steps={steps}, screen_keep={screen_keep}")
    seen, rows, masks_of = set(), [], []
    for name, masks in candidates:
        key = mask_key(masks)
        if key in seen:
            continue
        seen.add(key)
        flops, _ = space.cost(masks)
        rows.append({"name": name, "screen_acc": None, "selection_acc": None,
                     "kept_flops": float(flops) / max(float(space.base_flops), 1.0),
                     "time_s": 0.0, "chosen": False})
        masks_of.append(masks)
    screening = screen_steps > 0 and len(rows) > screen_keep
    calibration = None if reconstruct is None else \
        reconstruction_batches(loader, reconstruct_images, device)
    total_steps = (len(rows) * screen_steps + screen_keep * steps) if screening \
        else len(rows) * steps
    done = [0]  # fine-tune steps run so far
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc="re-rank", unit="step", leave=False)

    def score(i: int, n_steps: int, field: str) -> None:
        t0 = time.perf_counter()
        if calibration is None:
            compact = space.prune(masks_of[i]).to(device)
            training.recalibrate_bn(compact, loader, num_batches=bn_batches, device=device)
        else:  # refit; the fine-tune below re-estimates the BN statistics
            compact = space_reconstruct(space, masks_of[i], calibration, layers=reconstruct,
                                        seed=seed).to(device)
        training.train(compact, loader, 1, lr=lr, device=device, progress=False, seed=seed,
                       max_steps_per_epoch=n_steps, amp=amp)
        acc = training.evaluate(compact, val_loader, device=device, max_batches=eval_batches)
        rows[i][field] = float(acc)
        rows[i]["time_s"] += time.perf_counter() - t0
        logger.info("re-rank %-18s selection acc %.4f after %d steps (FLOPs kept %.3f)",
                    rows[i]["name"], acc, n_steps, rows[i]["kept_flops"])
        done[0] += n_steps
        if done[0] == n_steps and total_steps > n_steps:  # after the first: what is left
            per_step = (time.perf_counter() - t0) / n_steps
            logger.info("re-rank: about %s for the %d fine-tune steps left",
                        format_duration(per_step * (total_steps - n_steps)),
                        total_steps - n_steps)
        if bar is not None:
            bar.update(n_steps)
            bar.set_postfix(best=f"{max(r[field] for r in rows if r[field] is not None):.4f}")

    finalists = range(len(rows))
    if screening:  # ties go to the earlier candidate
        for i in finalists:
            score(i, screen_steps, "screen_acc")
        by_screen = sorted(finalists, key=lambda i: (-rows[i]["screen_acc"], i))
        finalists = sorted(by_screen[:screen_keep])
    for i in finalists:
        score(i, steps, "selection_acc")
    if bar is not None:
        bar.close()
    # ties go to the earlier candidate (the search's own best comes first)
    best = max(finalists, key=lambda i: (rows[i]["selection_acc"], -i))
    rows[best]["chosen"] = True
    return [m.clone() for m in masks_of[best]], rows


def rerank_search_candidates(method: str, space, ctx, opts: RerankOptions,
                             found: Sequence[List[torch.Tensor]], info: Dict[str, Any],
                             extra: Sequence[Tuple[str, List[torch.Tensor]]] = ()
                             ) -> List[torch.Tensor]:
    """A search's result re-ranked (``opts.rerank_top`` > 0): ``found`` (its best distinct masks,
    best first; the first ``rerank_top`` are used), the method's ``extra`` (name, masks)
    candidates and the criteria's allocations when ``opts.rerank_criteria``, chosen by
    :func:`rerank`. Writes ``rerank`` (rows),
    ``rerank_time_s`` and ``rerank_choice`` into ``info``. Without selection data distinct from
    the search loader it warns and returns ``found[0]``."""
    if ctx.val_loader is None or ctx.val_loader is ctx.loader:
        logger.warning("%s: rerank_top=%d needs selection data (val_loader) distinct from the "
                       "search loader; keeping the search's best mask", method, opts.rerank_top)
        info["rerank"] = None
        return found[0]
    candidates = [(f"search-{i + 1}", masks) for i, masks in enumerate(found[:opts.rerank_top])]
    candidates += list(extra)
    if opts.rerank_criteria:
        candidates += criterion_candidates(space, ctx.budget)
    t0 = time.perf_counter()
    masks, rows = rerank(space, candidates, loader=ctx.loader, val_loader=ctx.val_loader,
                         device=ctx.device, steps=opts.rerank_steps, lr=opts.rerank_lr,
                         seed=ctx.seed, progress=ctx.progress,
                         amp=None if opts.rerank_amp == "none" else opts.rerank_amp,
                         screen_steps=opts.rerank_screen_steps,
                         screen_keep=opts.rerank_screen_keep, reconstruct=ctx.reconstruct,
                         reconstruct_images=ctx.reconstruct_images)
    info["rerank"] = rows
    info["rerank_time_s"] = time.perf_counter() - t0
    info["rerank_choice"] = next(r["name"] for r in rows if r["chosen"])
    return masks
