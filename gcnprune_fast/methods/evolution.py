"""MetaPruning's evolutionary search (Liu et al. 2019, liuzechun/MetaPruning) over per-group keep
ratios, as a method of its own.

- a candidate is one legal width per group (a keep ratio from the grid 0.1..1.0, step 0.05, then
  legal widths via ``counts_from_ratios``); every candidate is scaled by the largest common
  factor (ratios capped at 1) that meets the budget, up or down, so candidates differ in shape
  and all lie on the budget surface (MetaPruning instead rejects candidates outside a FLOPs range);
- population 50, 20 iterations; the top ``parents`` (10) of everything scored so far are the
  parents; each iteration makes 25 mutations (each gene replaced by a random grid ratio with
  probability 0.1) and 25 crossovers (each gene from one of two random parents), duplicates
  rejected, and fills up with random candidates;
- score: top-1 accuracy on the reward set after BN re-estimation (``reward="accuracy_bn"``) of the
  PruningNet sub-network when ``pruningnet_steps`` > 0 (a PruningNet is trained first, see
  :mod:`.search.pruningnet`), else of the original weights sliced by importance (filter L1);
- result: the best candidate, as masks keeping the most important original channels; with
  ``rerank_top`` > 0 the best distinct candidates and the plain criteria's allocations are
  re-ranked by selection accuracy after a short fine-tune (:mod:`.search.rerank`, as the other
  searches).

Checkpoints: ``evolution_pruningnet.pt`` (PruningNet training) and ``evolution_search.pt`` (after
every iteration); ``resume=True`` continues exactly.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from gcnprune_fast import distributed
from gcnprune_fast.methods.allocation import masks_from_counts, scale_ratios_to_budget
from gcnprune_fast.methods.context import MethodResult, SearchContext
from gcnprune_fast.methods.registry import get_method, option, register_method
from gcnprune_fast.methods.search import (REWARD_KINDS, MaskScorer, SearchCheckpoint,
                                          channels_last_evaluation)
from gcnprune_fast.methods.search.pruningnet import (PruningNetOptions, PruningNetScorer,
                                                     importance_scores, prepare_pruningnet,
                                                     ratio_grid)
from gcnprune_fast.methods.search.ratio_search import reward_set
from gcnprune_fast.methods.search.rerank import (RERANK_OPTIONS, RerankOptions,
                                                  check_rerank_options, rerank_search_candidates)

__all__ = ["NAME", "EvolutionOptions", "search", "PRUNINGNET_CHECKPOINT", "SEARCH_CHECKPOINT"]

NAME = "evolution"
PRUNINGNET_CHECKPOINT = "evolution_pruningnet.pt"
SEARCH_CHECKPOINT = "evolution_search.pt"


@dataclass
class EvolutionOptions(PruningNetOptions, RerankOptions):
    """Options of evolution (MetaPruning's defaults; re-ranking, off by default, from
    :class:`~gcnprune_fast.methods.search.rerank.RerankOptions`)."""

    pruningnet_steps: Optional[int] = option(
        0, "train a PruningNet for this many steps and score candidates with its weights (0: "
        "score the original weights sliced by importance; None: by model size)", minimum=0)
    population: int = option(50, "candidates per iteration", minimum=2)
    iterations: int = option(20, "evolution iterations", minimum=1)
    parents: int = option(10, "top-k candidates (of all scored) that parent the next generation",
                          minimum=1)
    mutations: int = option(25, "mutated children per iteration", minimum=0)
    crossovers: int = option(25, "crossover children per iteration", minimum=0)
    mutation_prob: float = option(0.1, "probability that a gene (a group's ratio) mutates",
                                  minimum=0.0)
    reward: str = option("accuracy_bn", "accuracy_bn: top-1 with BN statistics re-estimated on "
                         "the reward set; accuracy: with the original statistics; loss: -CE",
                         choices=REWARD_KINDS)
    reward_samples: int = option(256, "images in the cached reward set", minimum=1)
    reward_batch_size: int = option(256, "forward chunk on the reward set", minimum=1)
    reward_source: str = option("loader", "where the reward set comes from",
                                choices=("loader", "val"))
    channels_last: bool = option(True, "sliced scoring in channels_last (faster on CPU)")


def _fingerprint(space, ctx: SearchContext, opts: EvolutionOptions) -> Dict[str, Any]:
    fp = {k: v for k, v in dataclasses.asdict(opts).items()
          if k not in ("iterations", "pruningnet_checkpoint_every") + RERANK_OPTIONS}
    fp.update(seed=int(ctx.seed), sizes=[int(g.size) for g in space.groups],
              budget_flops=ctx.budget.flops, budget_params=ctx.budget.params, **ctx.budget.fingerprint_extra(),
              round_to=int(space.round_to), min_channels=int(space.min_channels))
    return fp


class _Evolution:
    """The candidate operators (all randomness from ``gen``)."""

    def __init__(self, space, budget, grid: torch.Tensor, gen: torch.Generator):
        self.space, self.budget, self.grid, self.gen = space, budget, grid, gen
        self.sizes = torch.tensor([g.size for g in space.groups], dtype=torch.float64)

    def project(self, ratios: torch.Tensor, iterations: int = 30) -> Tuple[int, ...]:
        """Legal widths for ``ratios`` scaled onto the budget surface, up when the proposal is
        under it, down when over (:func:`~gcnprune_fast.methods.allocation.
        scale_ratios_to_budget`)."""
        return tuple(scale_ratios_to_budget(self.space, ratios, self.budget,
                                            iterations=iterations))

    def ratios(self, counts) -> torch.Tensor:
        return torch.tensor(counts, dtype=torch.float64) / self.sizes

    def grid_sample(self) -> torch.Tensor:
        return self.grid[torch.randint(0, self.grid.numel(), (self.space.num_groups,),
                                       generator=self.gen)]

    def random(self) -> Tuple[int, ...]:
        return self.project(self.grid_sample())

    def mutate(self, parent, prob: float) -> Tuple[int, ...]:
        flip = torch.rand(self.space.num_groups, generator=self.gen, dtype=torch.float64) < prob
        return self.project(torch.where(flip, self.grid_sample(), self.ratios(parent)))

    def crossover(self, a, b) -> Tuple[int, ...]:
        pick = torch.rand(self.space.num_groups, generator=self.gen, dtype=torch.float64) < 0.5
        return self.project(torch.where(pick, self.ratios(a), self.ratios(b)))


def search(space, ctx: SearchContext) -> MethodResult:
    """Run evolution on ``space`` (options :class:`EvolutionOptions` or a dict of overrides)."""
    opts = get_method(NAME).resolve_options(ctx.options)
    check_rerank_options(NAME, opts)
    if opts.parents > opts.population:
        raise ValueError(f"method {NAME!r}: parents ({opts.parents}) must be <= population "
                         f"({opts.population})")
    if opts.mutation_prob > 1:
        raise ValueError(f"method {NAME!r} option mutation_prob must be <= 1, got "
                         f"{opts.mutation_prob!r}")
    t_start = time.perf_counter()
    seed = int(ctx.seed)
    info: Dict[str, Any] = {}
    steps = opts.pruningnet_steps
    use_pnet = steps is None or steps > 0
    importance = importance_scores(space, opts.importance)
    rewards = reward_set(ctx, opts)
    if use_pnet:
        pnet, info = prepare_pruningnet(space, ctx.loader, opts, seed=seed, device=ctx.device,
                                        checkpoint_dir=ctx.checkpoint_dir,
                                        checkpoint_name=PRUNINGNET_CHECKPOINT,
                                        resume=ctx.resume, progress=ctx.progress)
        scorer = PruningNetScorer(pnet, rewards, opts.reward)
        score_fn = scorer
    else:
        scorer = MaskScorer(space, rewards, opts.reward, ctx.device)

        def score_fn(counts):
            return scorer(masks_from_counts(importance, counts))

    grid = ratio_grid(float(opts.grid_low), 1.0, float(opts.grid_step))
    gen = torch.Generator().manual_seed(seed)
    evo = _Evolution(space, ctx.budget, grid, gen)
    checkpoint = SearchCheckpoint(ctx.checkpoint_dir, SEARCH_CHECKPOINT,
                                  _fingerprint(space, ctx, opts))
    state: Dict[str, Any] = {"iteration": 0, "population": None, "scored": {}, "order": [],
                             "reward_curve": [], "best_curve": []}
    saved = checkpoint.load(ctx.resume)
    if saved is not None:
        gen.set_state(saved["rng"])
        state = saved["state"]
    # scored: candidate key "w1,w2,..." -> [reward, accuracy, -loss]; order: keys by time scored
    scored: Dict[str, List[float]] = state["scored"]

    def key(c) -> str:
        return ",".join(str(int(v)) for v in c)

    def unkey(k: str) -> Tuple[int, ...]:
        return tuple(int(v) for v in k.split(","))

    def score_all(keys: List[str]) -> None:
        """Score the candidates not scored yet, in order. Under torch.distributed they are
        split across the ranks (rank r scores r, r+N, ...) and the scores all-gathered, so
        every rank records the same values in the same order."""
        todo = list(dict.fromkeys(k for k in keys if k not in scored))
        for k, (r, acc, loss) in zip(todo, distributed.map_split(
                lambda k: tuple(score_fn(list(unkey(k)))), todo)):
            scored[k] = [float(r), float(acc), -float(loss)]
            state["order"].append(k)
            state["reward_curve"].append(float(r))

    def top(n: int) -> List[str]:
        return sorted(scored, key=lambda k: (scored[k][0], scored[k][2]), reverse=True)[:n]

    def fill(children: List[Tuple[int, ...]], n: int, tries: int, seen: set) -> None:
        """Random candidates not in ``seen`` until ``children`` has ``n``."""
        for _ in range(tries):
            if len(children) >= n:
                break
            c = evo.random()
            if key(c) not in seen:
                seen.add(key(c))
                children.append(c)

    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=opts.iterations, initial=min(state["iteration"], opts.iterations),
                   desc=f"{NAME} search", unit="it", leave=False)
    with channels_last_evaluation(space, rewards, opts.channels_last and not use_pnet):
        try:
            if state["population"] is None:
                pop: List[Tuple[int, ...]] = []
                fill(pop, opts.population, 20 * opts.population, set())
                state["population"] = [key(c) for c in pop]
            while state["iteration"] < opts.iterations:
                score_all(state["population"])
                parents = [unkey(k) for k in top(opts.parents)]
                state["best_curve"].append(scored[key(parents[0])][0])
                children: List[Tuple[int, ...]] = []
                seen = set(scored)
                for n_target, make in ((opts.mutations, lambda: evo.mutate(
                        parents[int(torch.randint(0, len(parents), (), generator=gen))],
                        float(opts.mutation_prob))),
                                       (opts.crossovers, lambda: evo.crossover(
                        parents[int(torch.randint(0, len(parents), (), generator=gen))],
                        parents[int(torch.randint(0, len(parents), (), generator=gen))]))):
                    made = 0
                    for _ in range(10 * max(n_target, 1)):
                        if made >= n_target:
                            break
                        c = make()
                        if key(c) not in seen:
                            seen.add(key(c))
                            children.append(c)
                            made += 1
                fill(children, opts.population, 20 * opts.population, seen)
                state["population"] = [key(c) for c in children]
                state["iteration"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best=f"{state['best_curve'][-1]:.4f}", scored=len(scored))
                checkpoint.save(rng=gen.get_state(), state=state)
            score_all(state["population"])  # the last generation is scored too
        finally:
            if bar is not None:
                bar.close()
    best = unkey(top(1)[0])
    masks = masks_from_counts(importance, list(best))
    if opts.rerank_top > 0:
        masks = rerank_search_candidates(NAME, space, ctx, opts,
                                         [masks_from_counts(importance, list(unkey(k)))
                                          for k in top(opts.rerank_top)], info)
        best = [int(m.sum()) for m in masks]  # the report's ratios: the chosen configuration
    info.update({
        "episodes": len(scored),
        "iterations": int(state["iteration"]),
        "reward_curve": list(state["reward_curve"]),
        "best_curve": list(state["best_curve"]),
        "best_reward": float(scored[top(1)[0]][0]),
        "ratios": {g.name: c / g.size for g, c in zip(space.groups, best)},
        "scored_with": "pruningnet" if use_pnet else "sliced",
        "reward": opts.reward,
        "reward_samples": len(rewards),
        "masked_evaluations": int(distributed.all_reduce_numbers([scorer.evaluations])[0]),
        "search_time_s": time.perf_counter() - t_start,
    })
    return MethodResult(masks, info)


@register_method(NAME, options=EvolutionOptions, supports_resume=True,
                 summary="MetaPruning's evolutionary search over per-group keep ratios (PruningNet "
                 "weights when trained, else sliced original weights)")
def run(ctx: SearchContext) -> MethodResult:
    """evolution on ``ctx.space`` (see the module docstring)."""
    return search(ctx.space, ctx)
