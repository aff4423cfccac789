"""Time the default method's search (features + graph + RL episodes) on a built-in model.

    python benchmarks/bench_search.py --model resnet56 --episodes 300 --threads 2
    python benchmarks/run.py --only search [--quick]     # as a table row

Prints wall time and process CPU time. On a shared machine run with ``--threads 1``: the CPU time
of a single-threaded run is then close to the wall time the same run takes on an idle core, which
is the figure to compare with the target (ResNet-56, 300 episodes, <= 10 minutes on 2 cores).
Inputs are random 32x32 images (search speed does not depend on the data).

``table_rows(quick)`` (for run.py): ResNet-56 with 300 episodes against the 10-minute target
(ratio = target / wall time, >= 1 when met); quick: ResNet-20 with 10 episodes and no target.
"""
from __future__ import annotations

import argparse
import sys

import torch

from common import Timing, measure, row
from gcnprune_fast.methods import Budget, SearchContext, default_method, run_method
from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace

TARGET_MS = 10 * 60 * 1e3  # ResNet-56, 300 episodes, 2 cores


def time_search(model_name: str = "resnet56", episodes: int = 300, flops: float = 0.5,
                reward_samples: int = 256, image_size: int = 32):
    """(Timing of one search, the space, the method's result)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, 10, (512,), generator=gen)
    loader = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    torch.manual_seed(0)
    model = get_model(model_name).eval()
    space = PruningSpace(model, x[:2])
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, flops), loader=loader,
                        device=torch.device("cpu"),
                        options={"episodes": episodes, "reward_samples": reward_samples})
    results = []
    timing = measure(lambda: results.append(run_method(default_method(), ctx)), repeats=1,
                     warmup=0)
    return timing, space, results[-1]


def _summary(model: str, episodes: int, timing: Timing, space, result, reward_samples: int) -> str:
    return (f"{model}: {space.num_groups} groups, {sum(g.size for g in space.groups)} channels; "
            f"{default_method()} {episodes} episodes ({result.info.get('masked_evaluations', '?')} masked "
            f"evaluations of {reward_samples} images), threads {torch.get_num_threads()}: "
            f"wall {timing.median_ms / 1e3:.1f} s, cpu {timing.cpu_median_ms / 1e3:.1f} s, "
            f"{timing.median_ms / 1e3 / episodes:.2f} s/episode wall")


def table_rows(quick: bool = False) -> list[dict]:
    """Rows with keys op, shape, impl_ms, ref_name, ref_ms, ratio, note (see the module doc)."""
    model, episodes, reward_samples = ("resnet20", 10, 64) if quick else ("resnet56", 300, 256)
    timing, space, result = time_search(model, episodes, reward_samples=reward_samples)
    return [row(f"{default_method()} search", f"{model} {episodes} episodes 32x32", timing.median_ms,
                "-" if quick else "target (10 min)", None if quick else TARGET_MS,
                _summary(model, episodes, timing, space, result, reward_samples))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reward-samples", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    timing, space, result = time_search(args.model, args.episodes, args.flops,
                                        args.reward_samples, args.image_size)
    print(_summary(args.model, args.episodes, timing, space, result, args.reward_samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
