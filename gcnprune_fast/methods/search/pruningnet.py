"""PruningNet: weights for any sub-network (per-group widths) from aggregated node features, with
the network graph aggregator of GraphPruning (Rong et al.) and the training of MetaPruning
(Liu et al. 2019).

Pieces:

- :class:`NetworkAggregator`: a 2-layer GCN over the group graph (``space.group_graph()``,
  normalized with ``ops.gcn_norm``; shared weights, ``ops.spmm``) giving h_i per group from the
  node features (static embedding + the group's current keep ratio).
- :class:`PruningNet`: for every conv / linear layer that reads or writes a pruning group, a small
  generator MLP from ``z = (h_in, h_out, r_in, r_out)`` (aggregated features and keep ratios of the
  groups the layer reads and writes) to the layer's full weight tensor. Weights are
  ``W = W_base + std(W_orig) * MLP(z)``: ``W_base`` starts from the trained weights and the last
  generator layer starts at zero, so the untrained PruningNet is the weight-sharing supernet of the
  trained model and training learns width-dependent corrections. Layers with more than
  ``max_generated_weights`` weights (or every layer with ``weights="supernet"``) have no generator:
  their trained base weights are shared by all sub-networks (slicing). All other parameters (BN,
  biases, unprunable layers) are shared base parameters too.
- The sub-network of widths ``counts`` keeps, in every group, the ``counts[g]`` channels ranked
  highest by an importance score of the original weights (L1 by default), and is computed
  functionally: ``torch.func.functional_call`` with the generated weights inside
  ``space.masked(masks)``. That equals the physically pruned model carrying the generated weights
  cropped to the kept channels (tested), without building a module per step.
- :func:`train_pruningnet`: every step samples a keep ratio per group from a grid (default 0.1 to
  1.0, step 0.05), generates the sub-network and trains base weights, generators and aggregator end
  to end with cross-entropy on a training batch (BatchNorm with batch statistics); checkpoint and
  resume (resumed == uninterrupted), progress bar.
- :class:`PruningNetScorer`: scores widths by the generated sub-network's accuracy on the reward
  set with BatchNorm statistics re-estimated on that set (``RewardSet.evaluate_with_bn``).

Under torch.distributed (see :mod:`gcnprune_fast.distributed`) the training is data-parallel:
rank r of N takes batches r, r+N, ... of the loader (``distributed.shard(even=True)``), every rank
draws the same widths from the same seeded generator, and the gradients (and the loss) are
averaged over the ranks before every rank takes the same Adam step. A step therefore trains on a
global batch of N loader batches: with per-rank batch B it equals a single-process step on a batch
of N*B (up to float rounding; exactly so for a BatchNorm-free model, since BatchNorm normalizes
with each rank's own batch statistics). The running BN statistics of the PruningNet's buffers are
averaged over the ranks at every checkpoint and at the end. Rank 0 writes the checkpoint;
resuming needs the same number of processes (it is in the fingerprint).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from gcnprune_fast import distributed, ops
from gcnprune_fast.data import iterate_inputs
from gcnprune_fast.features import collect_features
from gcnprune_fast.methods.allocation import counts_from_ratios, masks_from_counts
from gcnprune_fast.methods.registry import option
from gcnprune_fast.methods.search.checkpoint import SearchCheckpoint
from gcnprune_fast.methods.search.gcn import GCNLayer, uniform_parameter
from gcnprune_fast.methods.search.layer_features import (activation_summary, decision_order,
                                                         layer_embedding)
from gcnprune_fast.methods.search.reward import REWARD_KINDS, RewardSet
from gcnprune_fast.training import GLOBAL_RNG_LOCK

__all__ = ["WEIGHT_MODES", "IMPORTANCE_KINDS", "ratio_grid", "NetworkAggregator", "PruningNet",
           "LoaderCycle", "train_pruningnet", "PruningNetScorer", "bn_train_mode",
           "PruningNetOptions", "default_pruningnet_steps", "importance_scores",
           "prepare_pruningnet"]

WEIGHT_MODES = ("generated", "supernet")
# importance rank of the original weights: filter norms summed over the group's producers, or |gamma|
IMPORTANCE_KINDS = ("filter_l1", "filter_l2", "bn_gamma")
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def ratio_grid(low: float = 0.1, high: float = 1.0, step: float = 0.05) -> torch.Tensor:
    """The keep ratios low, low + step, ..., high (float64)."""
    if not (0 < low <= high <= 1) or step <= 0:
        raise ValueError(f"ratio grid needs 0 < low <= high <= 1 and step > 0, got low={low}, "
                         f"high={high}, step={step}")
    n = int(math.floor((high - low) / step + 1e-9)) + 1
    return low + step * torch.arange(n, dtype=torch.float64)


class NetworkAggregator(nn.Module):
    """h = tanh(A relu(A X W1 + b1) W2 + b2): a 2-layer GCN with shared weights over the
    normalized group graph A ([G, G] CSR). ``x`` [G, in_dim] -> h [G, hidden]."""

    def __init__(self, graph: ops.CSRGraph, in_dim: int, hidden: int,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.register_buffer("indptr", graph.indptr.clone())
        self.register_buffer("indices", graph.indices.clone())
        self.register_buffer("values", graph.values.float().clone())
        self.gcn1 = GCNLayer(in_dim, hidden, None, generator)
        self.gcn2 = GCNLayer(hidden, hidden, None, generator)

    @property
    def graph(self) -> ops.CSRGraph:
        return ops.CSRGraph(self.indptr, self.indices, self.values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        graph = self.graph
        return torch.tanh(self.gcn2(graph, torch.relu(self.gcn1(graph, x))))


@contextlib.contextmanager
def bn_train_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside, every BatchNorm of ``model`` normalizes with batch statistics (train mode); the
    other modules keep their mode (no dropout noise). Modes are restored on exit."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.training for m in bns]
    try:
        if enabled:
            for m in bns:
                m.train()
        yield
    finally:
        for m, t in zip(bns, saved):
            m.train(t)


class _Functional(nn.Module):
    """``model`` run with ``params`` in place of its own (for ``RewardSet.evaluate_with_bn``,
    which reaches the BatchNorms through ``modules()``)."""

    def __init__(self, model: nn.Module, params: Dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self._params = params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self._params, (x,))


class PruningNet(nn.Module):
    """Weights of any sub-network of ``space.model`` (see the module docstring).

    Args:
        space: the pruning space (its model is read, never modified).
        static_features: float [G, d] per-group node features that do not depend on the widths
            (layer embedding, activation summary); the keep ratio is appended as the last column.
        importance: per group a float [C_g] score; the kept channels of a width are the top ones.
        hidden: aggregator width (dimension of h_i).
        generator_hidden: hidden width of every layer's generator MLP.
        weights: ``"generated"`` (generators for layers up to ``max_generated_weights`` weights,
            shared sliced weights above) or ``"supernet"`` (no generators: a weight-sharing
            supernet).
        seed: initialization seed.
    """

    def __init__(self, space, static_features: torch.Tensor, importance: Sequence[torch.Tensor], *,
                 hidden: int = 32, generator_hidden: int = 32, weights: str = "generated",
                 max_generated_weights: int = 65536, seed: int = 0):
        super().__init__()
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {list(WEIGHT_MODES)}, got {weights!r}")
        num = space.num_groups
        if static_features.shape[0] != num:
            raise ValueError(f"static_features has {static_features.shape[0]} rows, the space has "
                             f"{num} groups")
        if len(importance) != num:
            raise ValueError(f"importance has {len(importance)} entries, expected {num}")
        gen = torch.Generator().manual_seed(int(seed))
        self._space = space
        self.sizes = [int(g.size) for g in space.groups]
        self.importance = [s.detach().to(torch.float64).cpu() for s in importance]
        self.register_buffer("static", static_features.detach().float().clone())
        self.register_buffer("size_tensor", torch.tensor(self.sizes, dtype=torch.float32))
        graph = ops.gcn_norm(space.group_graph(), add_self_loops=True)
        self.aggregator = NetworkAggregator(graph, self.static.shape[1] + 1, hidden, gen)

        model = space.model
        self.param_names = [n for n, _ in model.named_parameters()]
        self.base = nn.ParameterList([nn.Parameter(p.detach().clone())
                                      for _, p in model.named_parameters()])
        self.buffer_names = [n for n, _ in model.named_buffers()]
        for i, (_, b) in enumerate(model.named_buffers()):
            self.register_buffer(f"model_buffer_{i}", b.detach().clone())

        # The layers that read or write a group, with the groups they read / write.
        reads: Dict[str, List[int]] = {}
        writes: Dict[str, int] = {}
        for g, grp in enumerate(space.groups):
            for name in grp.consumers:
                reads.setdefault(name, []).append(g)
            for name in grp.producers:
                writes.setdefault(name, g)
        modules = dict(model.named_modules())
        index = {n: i for i, n in enumerate(self.param_names)}
        self.layers: List[str] = [n for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)
                                  and (n in reads or n in writes) and f"{n}.weight" in index]
        a_in = torch.zeros(len(self.layers), num)
        a_out = torch.zeros(len(self.layers), num)
        for i, name in enumerate(self.layers):
            groups_in = reads.get(name, [])
            total = sum(self.sizes[g] for g in groups_in)
            for g in groups_in:
                a_in[i, g] += self.sizes[g] / total
            if name in writes:
                a_out[i, writes[name]] = 1.0
        self.register_buffer("a_in", a_in)
        self.register_buffer("a_out", a_out)
        self.weight_index = [index[f"{n}.weight"] for n in self.layers]
        self.generated = [i for i, n in enumerate(self.layers)
                          if weights == "generated"
                          and modules[n].weight.numel() <= int(max_generated_weights)]
        z_dim = 2 * hidden + 2
        ng, gh = len(self.generated), int(generator_hidden)
        self.gen_w1 = uniform_parameter(max(ng, 1), z_dim, gh, fan_in=z_dim, generator=gen)
        self.gen_b1 = nn.Parameter(torch.zeros(max(ng, 1), gh))
        shapes = [tuple(modules[self.layers[i]].weight.shape) for i in self.generated]
        self.gen_shapes = shapes
        self.gen_w2 = nn.ParameterList([nn.Parameter(torch.zeros(gh, math.prod(s))) for s in shapes])
        self.gen_b2 = nn.ParameterList([nn.Parameter(torch.zeros(math.prod(s))) for s in shapes])
        scales = [float(modules[self.layers[i]].weight.detach().float().std()) if
                  modules[self.layers[i]].weight.numel() > 1 else 1.0 for i in self.generated]
        self.register_buffer("gen_scale", torch.tensor(scales or [1.0], dtype=torch.float32))

    # ------------------------------------------------------------------ facts
    @property
    def space(self):
        return self._space

    @property
    def num_generated(self) -> int:
        """How many layers have a weight generator (the others share sliced base weights)."""
        return len(self.generated)

    def base_parameters(self) -> List[nn.Parameter]:
        return list(self.base)

    def generator_parameters(self) -> List[nn.Parameter]:
        """Aggregator and generator parameters (the part a plain supernet does not have)."""
        return (list(self.aggregator.parameters()) + [self.gen_w1, self.gen_b1]
                + list(self.gen_w2) + list(self.gen_b2))

    def ratios(self, counts: Sequence[int]) -> torch.Tensor:
        """Keep ratios float32 [G] of widths ``counts``."""
        c = torch.as_tensor(list(counts), dtype=torch.float32, device=self.size_tensor.device)
        return c / self.size_tensor

    def masks(self, counts: Sequence[int]) -> List[torch.Tensor]:
        """Bool masks keeping the ``counts[g]`` most important channels of every group."""
        return masks_from_counts(self.importance, [int(c) for c in counts])

    # ------------------------------------------------------------------ generation
    def embed(self, ratios: torch.Tensor) -> torch.Tensor:
        """h [G, hidden] for keep ratios [G] (the aggregator over static features + ratio)."""
        x = torch.cat([self.static, ratios.to(self.static)[:, None]], dim=1)
        return self.aggregator(x)

    def weights(self, ratios: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every parameter of the model for keep ratios [G]: generated weights where a layer has
        a generator, the shared base parameters elsewhere (full-size tensors, original layout)."""
        params = {n: p for n, p in zip(self.param_names, self.base)}
        if not self.generated:
            return params
        ratios = ratios.to(self.static)
        h = self.embed(ratios)
        in_share = self.a_in.sum(1)
        out_share = self.a_out.sum(1)
        r_in = self.a_in @ ratios + (1 - in_share)
        r_out = self.a_out @ ratios + (1 - out_share)
        z = torch.cat([self.a_in @ h, self.a_out @ h, r_in[:, None], r_out[:, None]], dim=1)
        sel = torch.tensor(self.generated, device=z.device)
        hid = torch.relu(torch.einsum("lz,lzh->lh", z[sel], self.gen_w1) + self.gen_b1)
        for j, i in enumerate(self.generated):
            delta = (hid[j] @ self.gen_w2[j] + self.gen_b2[j]).view(self.gen_shapes[j])
            name = self.param_names[self.weight_index[i]]
            params[name] = params[name] + self.gen_scale[j] * delta
        return params

    def full_state_dict(self, counts: Sequence[int]) -> Dict[str, torch.Tensor]:
        """A state_dict of the original architecture carrying the weights generated for widths
        ``counts`` (the model's own buffers: BN statistics need re-estimation anyway); with
        ``space.prune(self.masks(counts))`` applied to such a model this is the generated
        sub-network, physically."""
        with torch.no_grad():
            params = self.weights(self.ratios(counts))
        state = {k: v.detach().clone() for k, v in self.space.model.state_dict().items()}
        for n, p in params.items():
            state[n] = p.detach().clone()
        return state

    def subnet_forward(self, x: torch.Tensor, counts: Sequence[int], *, batch_stats: bool,
                       params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Logits of the sub-network of widths ``counts`` on ``x``: the generated weights cropped
        to the kept channels, computed as a masked forward of the full model. ``batch_stats``:
        BatchNorm with batch statistics (training) instead of the model's running statistics;
        the running statistics of ``space.model`` are never changed."""
        model = self.space.model
        if params is None:
            params = self.weights(self.ratios(counts))
        tensors = dict(params)
        if batch_stats:  # running-stat updates go to this module's copies, not the model's
            tensors.update({n: getattr(self, f"model_buffer_{i}")
                            for i, n in enumerate(self.buffer_names)})
        masks = [m.to(x.device) for m in self.masks(counts)]
        with bn_train_mode(model, batch_stats), self.space.masked(masks):
            return functional_call(model, tensors, (x,))


class LoaderCycle:
    """Endless batches from ``loader`` with a reproducible, resumable position.

    Loaders that draw their randomness (shuffling, augmentation) from their own
    ``loader.generator`` (what ``prune()`` hands a method) keep doing so; the generator's state
    at the start of every epoch is recorded (:meth:`position_state`) and restored by :meth:`seek`.
    Other loaders draw from torch's global RNG: each epoch starts from it seeded with
    ``(seed, epoch)``, on a stream of its own saved and restored around every batch, so the
    caller's RNG is untouched. Either way batch k of epoch e is the same batch in a resumed run
    (:meth:`seek` replays the epoch up to the position)."""

    def __init__(self, loader, seed: int, loader_name: str = "loader"):
        self.loader, self.seed, self.name = loader, int(seed), loader_name
        self.epoch, self.position = 0, 0
        self._it = None
        self._rng: Optional[torch.Tensor] = None
        self._epoch_generator_state: Optional[torch.Tensor] = None

    @property
    def _generator(self) -> Optional[torch.Generator]:
        # a rank's shard (distributed.shard) iterates the whole loader: its generator draws
        g = getattr(distributed.inner_loader(self.loader), "generator", None)
        return g if isinstance(g, torch.Generator) else None

    def _start_epoch(self) -> None:
        gen = self._generator
        self._epoch_generator_state = None if gen is None else gen.get_state()
        torch.manual_seed((self.seed * 1_000_003 + self.epoch) % (2 ** 63))
        self._it = iter(iterate_inputs(self.loader, self.name))
        self.position = 0

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            if self._it is None:
                self._start_epoch()
            else:
                torch.set_rng_state(self._rng)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch += 1
                self._start_epoch()
                batch = next(self._it)
            self._rng = torch.get_rng_state()
        self.position += 1
        return batch

    def position_state(self) -> Dict[str, Any]:
        """Where the stream is: ``epoch``, ``position`` and the loader generator's state at the
        start of the epoch (None without one)."""
        return {"epoch": self.epoch, "position": self.position,
                "epoch_generator_state": self._epoch_generator_state}

    def seek(self, epoch: int, position: int,
             epoch_generator_state: Optional[torch.Tensor] = None) -> None:
        """Continue at batch ``position`` of epoch ``epoch`` (replays that epoch's first batches;
        the loader's own generator, if any, is set to ``epoch_generator_state`` first)."""
        gen = self._generator
        if gen is not None and epoch_generator_state is not None:
            gen.set_state(epoch_generator_state)
        self.epoch, self._it = int(epoch), None
        with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            self._start_epoch()
            for _ in range(int(position)):
                next(self._it)
            self._rng = torch.get_rng_state()
        self.position = int(position)


def train_pruningnet(pnet: PruningNet, loader, *, steps: int, lr: float = 1e-3,
                     lr_base: float = 1e-4, grid: Optional[torch.Tensor] = None, seed: int = 0,
                     device=None, checkpoint=None, resume: bool = False,
                     checkpoint_every: int = 100, grad_clip: float = 5.0,
                     progress: bool = False, desc: str = "PruningNet") -> Dict[str, Any]:
    """Train ``pnet`` for ``steps`` steps (or continue a checkpointed training up to ``steps``).

    Every step: a keep ratio per group drawn uniformly from ``grid`` (default
    :func:`ratio_grid`), legal widths (``counts_from_ratios``), the sub-network's cross-entropy on
    the next training batch with BatchNorm batch statistics, one Adam step (``lr`` for
    aggregator and generators, ``lr_base`` for the shared base weights; cosine decay over
    ``steps``; gradient norm clipped at ``grad_clip``).

    ``checkpoint`` (a ``SearchCheckpoint`` or None) is written every ``checkpoint_every`` steps and
    at the end; with ``resume`` a finished training is reused and an interrupted one continues
    (same result as uninterrupted: sampler RNG, optimizer and data position are restored).

    Under torch.distributed (a collective: every rank calls it) each rank trains on its shard of
    ``loader`` and the gradients are averaged over the ranks (see the module docstring): N
    processes with per-rank batch B give the parameters of one process with batch N*B.

    Returns:
        ``steps``, ``loss_curve`` (per step), ``train_time_s`` (summed over resumed runs),
        ``final_loss`` (mean of the last 10% of steps), ``resumed_from`` (step or None).

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}")
    grid = ratio_grid() if grid is None else torch.as_tensor(grid, dtype=torch.float64)
    device = torch.device(device) if device is not None else pnet.static.device
    space = pnet.space
    sampler = torch.Generator().manual_seed(int(seed) + 1)
    base_ids = {id(p) for p in pnet.base_parameters()}
    optimizer = torch.optim.Adam([
        {"params": pnet.base_parameters(), "lr": float(lr_base), "initial_lr": float(lr_base)},
        {"params": [p for p in pnet.parameters() if id(p) not in base_ids], "lr": float(lr),
         "initial_lr": float(lr)}])
    dist_world = distributed.world()
    if dist_world.distributed:  # this rank's batches r, r+N, ...; the same count on every rank
        loader = distributed.shard(loader, even=True)
    data = LoaderCycle(loader, seed)
    pnet_buffers = [getattr(pnet, f"model_buffer_{i}") for i in range(len(pnet.buffer_names))]
    state: Dict[str, Any] = {"step": 0, "loss_curve": [], "train_time_s": 0.0, "done": False}
    resumed_from = None
    saved = checkpoint.load(resume) if checkpoint is not None else None
    if saved is not None:
        pnet.load_state_dict(saved["pnet"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.set_state(saved["sampler"])
        state = saved["state"]
        if state["step"] < steps:
            data.seek(**state["data"])
        resumed_from = int(state["step"])

    def save() -> None:
        distributed.average_(pnet_buffers)  # BN running statistics: the mean over the ranks
        if checkpoint is not None:
            state["data"] = data.position_state()
            checkpoint.save(pnet=pnet.state_dict(), optimizer=optimizer.state_dict(),
                            sampler=sampler.get_state(), state=state)

    bar = None
    if progress and state["step"] < steps:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=state["step"], desc=desc, unit="step", leave=False)
    pnet.train()
    t0 = time.perf_counter()
    try:
        while state["step"] < steps:
            idx = torch.randint(0, grid.numel(), (space.num_groups,), generator=sampler)
            counts = counts_from_ratios(space, grid[idx])
            x, y = data.next()
            x, y = x.to(device), y.to(device)
            factor = 0.5 * (1 + math.cos(math.pi * state["step"] / max(int(steps), 1)))
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            logits = pnet.subnet_forward(x, counts, batch_stats=True)
            loss = F.cross_entropy(logits.float(), y.long())
            if not dist_world.distributed and not torch.isfinite(loss):
                raise FloatingPointError(f"PruningNet loss is {float(loss)} at step {state['step']}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if dist_world.distributed:
                # the mean gradient and loss over the ranks; checked after the all-reduce, so
                # that every rank raises together
                value = distributed.average_gradients(pnet.parameters(), value)[0]
                if not math.isfinite(value):
                    raise FloatingPointError(f"PruningNet loss is {value} at step {state['step']} "
                                             f"(mean over the ranks)")
            if grad_clip and grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(pnet.parameters(), float(grad_clip))
            optimizer.step()
            state["loss_curve"].append(value)
            state["step"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{state['loss_curve'][-1]:.3f}")
            if state["step"] % max(int(checkpoint_every), 1) == 0 or state["step"] == steps:
                state["train_time_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                state["done"] = state["step"] >= steps
                save()
    finally:
        if bar is not None:
            bar.close()
        pnet.eval()
    curve = state["loss_curve"]
    tail = curve[-max(len(curve) // 10, 1):] if curve else []
    return {"steps": int(state["step"]), "loss_curve": list(curve),
            "train_time_s": float(state["train_time_s"]),
            "final_loss": float(sum(tail) / len(tail)) if tail else float("nan"),
            "resumed_from": resumed_from}


class PruningNetScorer:
    """Scores widths (a count per group) by the PruningNet sub-network on the reward set:
    ``(reward, accuracy, loss)``, reward per ``kind`` (:data:`REWARD_KINDS`; ``"accuracy_bn"``
    re-estimates BatchNorm statistics on the reward set in the same forward). Cached by widths."""

    def __init__(self, pnet: PruningNet, rewards: RewardSet, kind: str = "accuracy_bn"):
        if kind not in REWARD_KINDS:
            raise ValueError(f"reward kind must be one of {list(REWARD_KINDS)}, got {kind!r}")
        self.pnet, self.rewards, self.kind = pnet, rewards, kind
        self.evaluations = 0
        self.cache: Dict[Tuple[int, ...], Tuple[float, float, float]] = {}

    @torch.no_grad()
    def __call__(self, counts: Sequence[int]) -> Tuple[float, float, float]:
        key = tuple(int(c) for c in counts)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        pnet = self.pnet
        params = pnet.weights(pnet.ratios(key))
        space = pnet.space
        masks = [m.to(self.rewards.x.device) for m in pnet.masks(key)]
        model = _Functional(space.model, params)
        with space.masked(masks):
            if self.kind == "accuracy_bn":
                acc, loss = self.rewards.evaluate_with_bn(model)
            else:
                acc, loss = self.rewards.evaluate(model)
        reward = -loss if self.kind == "loss" else acc
        self.evaluations += 1
        self.cache[key] = (reward, acc, loss)
        return self.cache[key]

    def remember(self, counts: Sequence[int], result: Tuple[float, float, float]) -> None:
        """Cache a score computed elsewhere (by another rank of a distributed search)."""
        self.cache.setdefault(tuple(int(c) for c in counts), tuple(result))


# ----------------------------------------------------------------------------------------------
# options and set-up shared by the methods that use a PruningNet


@dataclass
class PruningNetOptions:
    """PruningNet options (a base class of the options of the methods that train one)."""

    pruningnet_steps: Optional[int] = option(
        None, "PruningNet training steps (batches); None: by model size (see "
        "default_pruningnet_steps); 0: no training (the supernet of the trained weights)",
        minimum=0)
    weights: str = option("generated", "generated: per-layer weight generators (layers up to "
                          "max_generated_weights); supernet: shared sliced weights everywhere",
                          choices=WEIGHT_MODES)
    max_generated_weights: int = option(65536, "layers with more weights share sliced weights "
                                        "instead of having a generator", minimum=1)
    hidden: int = option(32, "graph aggregator width (the dimension of h_i)", minimum=1)
    generator_hidden: int = option(32, "hidden width of each layer's weight generator", minimum=1)
    pruningnet_lr: float = option(1e-3, "Adam learning rate of aggregator and generators",
                                  minimum=0.0)
    pruningnet_lr_base: float = option(1e-4, "Adam learning rate of the shared base weights",
                                       minimum=0.0)
    grid_low: float = option(0.1, "smallest keep ratio sampled in PruningNet training",
                             minimum=0.01)
    grid_step: float = option(0.05, "step of the keep-ratio grid", minimum=0.01)
    importance: str = option("filter_l1", "channel order inside a group (which channels a width "
                             "keeps)", choices=IMPORTANCE_KINDS)
    feature_samples: int = option(512, "images for the activation statistics", minimum=2)
    pruningnet_checkpoint_every: int = option(100, "PruningNet steps between checkpoints",
                                              minimum=1)


def default_pruningnet_steps(space) -> int:
    """Training steps (batches) by model size (MACs per image): 1000 below 100M (CIFAR ResNet-20/56,
    simple_cnn), 500 below 1G, 300 above. A step costs about one training step of the model
    itself (the generators are cheap), so ResNet-20 with batches of 128 takes ~1000 training
    steps' time; raise it when time allows (MetaPruning trains 32 epochs)."""
    flops = float(space.base_flops)
    return 1000 if flops < 1e8 else 500 if flops < 1e9 else 300


def importance_scores(space, kind: str) -> List[torch.Tensor]:
    """Per group float64 [C_g] importance of the original weights (higher = kept first)."""
    if kind not in IMPORTANCE_KINDS:
        raise ValueError(f"importance must be one of {list(IMPORTANCE_KINDS)}, got {kind!r}")
    out = []
    for s in space.weight_stats():
        key = kind[len("filter_"):] if kind.startswith("filter_") else kind
        v = s.get(key)
        if v is None:  # a group without BN: fall back to the filter norm
            v = s[IMPORTANCE_KINDS[0][len("filter_"):]]
        out.append(v.detach().abs().to(torch.float64).cpu())
    return out


def _pnet_fingerprint(space, seed: int, opts: PruningNetOptions, steps: int,
                      grid: torch.Tensor) -> Dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(PruningNetOptions)} - {
        "pruningnet_steps", "pruningnet_checkpoint_every"}
    fp = {k: v for k, v in dataclasses.asdict(opts).items() if k in fields}
    fp.update(steps=int(steps), seed=int(seed), sizes=[int(g.size) for g in space.groups],
              round_to=int(space.round_to), grid=[round(float(v), 6) for v in grid])
    w = distributed.world()
    if w.distributed:  # a step's global batch and the data positions depend on it
        fp["world_size"] = int(w.size)
    return fp


def prepare_pruningnet(space, loader, opts: PruningNetOptions, *, seed: int, device,
                       checkpoint_dir: Optional[str], checkpoint_name: str, resume: bool,
                       progress: bool) -> Tuple[PruningNet, Dict[str, Any]]:
    """Build the PruningNet of ``space`` (node features: AMC layer embedding + activation summary
    from ``feature_samples`` images of ``loader``; importance ``opts.importance``) and train it
    for ``opts.pruningnet_steps`` steps (None: :func:`default_pruningnet_steps`), checkpointed
    in ``checkpoint_dir/checkpoint_name``. Returns (pnet in eval mode, facts for the report)."""
    t0 = time.perf_counter()
    steps = default_pruningnet_steps(space) if opts.pruningnet_steps is None \
        else int(opts.pruningnet_steps)
    grid = ratio_grid(float(opts.grid_low), 1.0, float(opts.grid_step))
    features = collect_features(space, loader, max_samples=int(opts.feature_samples),
                                device=device, progress=progress)
    static = torch.cat([layer_embedding(space, decision_order(space)),
                        activation_summary(features)], dim=1)
    pnet = PruningNet(space, static, importance_scores(space, opts.importance),
                      hidden=int(opts.hidden), generator_hidden=int(opts.generator_hidden),
                      weights=opts.weights, max_generated_weights=int(opts.max_generated_weights),
                      seed=seed).to(device)
    checkpoint = SearchCheckpoint(checkpoint_dir, checkpoint_name,
                                  _pnet_fingerprint(space, seed, opts, steps, grid))
    setup_s = time.perf_counter() - t0
    facts = train_pruningnet(pnet, loader, steps=steps, lr=float(opts.pruningnet_lr),
                             lr_base=float(opts.pruningnet_lr_base), grid=grid, seed=seed,
                             device=device, checkpoint=checkpoint, resume=resume,
                             checkpoint_every=int(opts.pruningnet_checkpoint_every),
                             progress=progress)
    curve = facts["loss_curve"]
    stride = max(len(curve) // 200, 1)
    info = {"pruningnet_steps": facts["steps"],
            "pruningnet_train_time_s": facts["train_time_s"],
            "pruningnet_loss": facts["final_loss"],
            "pruningnet_loss_curve": [float(sum(curve[i:i + stride]) / len(curve[i:i + stride]))
                                      for i in range(0, len(curve), stride)],
            "pruningnet_resumed_from": facts["resumed_from"],
            "pruningnet_generated_layers": pnet.num_generated,
            "pruningnet_layers": len(pnet.layers),
            "pruningnet_setup_time_s": setup_s}
    return pnet, info
