"""Time a channel-gcn search (features + graph + RL episodes) on a built-in model.

    python benchmarks/bench_search.py --model resnet56 --episodes 300 --threads 2

Prints wall time and process CPU time. On a shared machine run with ``--threads 1``: the CPU time
of a single-threaded run is then close to the wall time the same run takes on an idle core, which
is the figure to compare with the target (ResNet-56, 300 episodes, <= 10 minutes on 2 cores).
Inputs are random 32x32 images (search speed does not depend on the data).
"""
import argparse
import time

import torch

from gcnprune_fast.methods import Budget, SearchContext, channel_gcn
from gcnprune_fast.models import get_model
from gcnprune_fast.space import PruningSpace


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
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, 10, (512,), generator=gen)
    loader = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    torch.manual_seed(0)
    model = get_model(args.model).eval()
    space = PruningSpace(model, x[:2])
    ctx = SearchContext(space=space, budget=Budget.from_ratios(space, args.flops), loader=loader,
                        device=torch.device("cpu"),
                        options={"episodes": args.episodes, "reward_samples": args.reward_samples})
    c0, w0 = time.process_time(), time.perf_counter()
    result = channel_gcn.search(space, ctx)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    print(f"{args.model}: {space.num_groups} groups, {sum(g.size for g in space.groups)} channels; "
          f"channel-gcn {args.episodes} episodes ({result.info['masked_evaluations']} masked "
          f"evaluations of {args.reward_samples} images), threads {args.threads}: wall {wall:.1f} s, "
          f"cpu {cpu:.1f} s, {wall / args.episodes:.2f} s/episode wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
