"""prune()'s stages one by one on a wide model: native ops against the plain-PyTorch reference.

    python benchmarks/bench_pipeline.py                          # CUDA: wide_resnet101_2, 224 px
    python benchmarks/bench_pipeline.py --device cpu --quick     # CPU: simple_cnn, 32 px, toy sizes
    python benchmarks/bench_pipeline.py --json rows.json --jsonl all.jsonl

Stages (what ``prune(model, loader)`` with the default method does, in order):

  space        the model on the device, PruningSpace tracing (groups, cost model)
  features     ``features.collect_features``: forwards + ``gap_stats`` on every group's activation
  graph        ``channel_gcn.build_channel_graph``: one batched ``knn_graph`` + ``gcn_norm``
               (on the CPU, where prune() runs it; with ``--device cuda`` also on the GPU)
  node_feats   ``channel_gcn.node_features``
  policy       ``agents.ChannelGCNPolicy`` forward + backward (``spmm`` and its autograd), on the
               CPU as in prune() and, with ``--device cuda``, on the GPU
  masked_eval  one masked evaluation of the reward set (``search.MaskScorer`` / ``RewardSet``,
               BN statistics re-estimated, channels_last), per evaluation
  surgery      ``space.prune(masks)`` at about half the channels

Each implementation runs in its own process (the switch ``GCNPRUNE_NATIVE=0`` is read once per
process): first with the native ops, then with the reference ops (stages that use no op of ours --
space, masked_eval, surgery -- are timed once, in the native run). Per stage: time (median of
``--repeats`` after a warm-up, for the cheap stages; one run for space/features/surgery) and peak
memory above the stage's start (CUDA: ``torch.cuda.max_memory_allocated``; CPU: growth of the
peak resident set, Linux). Rows go to ``--jsonl`` as soon as measured; the table prints last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

STAGES = ("space", "features", "graph", "graph_cuda", "node_feats", "policy", "policy_cuda",
          "masked_eval", "surgery")
OP_STAGES = ("features", "graph", "graph_cuda", "node_feats", "policy", "policy_cuda")


# ------------------------------------------------------------------------------------------------
# memory


def _rss_mb(field: str) -> Optional[float]:
    """A /proc/self/status memory field in MiB (the one reader in benchmarks/common.py)."""
    from common import PeakRSS  # benchmarks/ is on sys.path when run or imported by run.py

    return PeakRSS._read_mb(field)


class PeakMemory:
    """Peak memory above the start of a block: CUDA allocator peak on CUDA, VmHWM growth on the
    CPU (after resetting it through /proc/self/clear_refs; None where that is impossible)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.mb: Optional[float] = None

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                self.base = _rss_mb("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None:
            hwm = _rss_mb("VmHWM")
            self.mb = None if hwm is None else max(hwm - self.base, 0.0)
        return False


# ------------------------------------------------------------------------------------------------
# the worker: one implementation, every stage


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, repeats: int) -> Dict[str, float]:
    """Median ms over ``repeats`` runs after one warm-up (repeats 0: a single run, no warm-up),
    with the peak memory of the first timed run."""
    times = []
    if repeats > 0:
        fn()
        _sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    for _ in range(max(repeats - 1, 0)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "peak_mb": mem.mb, "runs": len(times)}


def build_model(name: str, num_classes: int):
    from gcnprune_fast.models import MODEL_NAMES, get_model

    if name in MODEL_NAMES:
        return get_model(name, num_classes=num_classes)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def worker(args) -> int:
    import torch

    from gcnprune_fast import ops
    from gcnprune_fast.features import collect_features
    from gcnprune_fast.methods.agents import ChannelGCNPolicy
    from gcnprune_fast.methods.allocation import Budget
    from gcnprune_fast.methods.channel_gcn import build_channel_graph, node_features
    from gcnprune_fast.methods.search import MaskScorer, RewardSet, channels_last_evaluation
    from gcnprune_fast.space import PruningSpace

    impl = "native" if ops.native_available() else "reference"
    dev = args.device
    torch.manual_seed(0)
    if dev.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows: List[dict] = []
    facts: Dict[str, object] = {}

    def emit(stage: str, res: Dict[str, float], **extra) -> None:
        row = dict(stage_name=stage, impl=impl, device=dev, model=args.model,
                   image_size=args.image_size, **res, **extra)
        rows.append(row)
        if args.jsonl:
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps(dict(stage="pipeline", **facts, **row)) + "\n")
        mem = "-" if res.get("peak_mb") is None else f"{res['peak_mb']:.0f} MB"
        print(f"  [{impl}] {stage:<12} {res['ms']:10.1f} ms  peak {mem}", flush=True)

    def wanted(stage: str) -> bool:
        if stage.endswith("_cuda") and not dev.startswith("cuda"):
            return False
        return impl == "native" or stage in OP_STAGES

    n_img, bs, hw = args.samples, args.batch_size, args.image_size
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(min(bs, n_img - i), 3, hw, hw, generator=gen),
                torch.randint(0, args.num_classes, (min(bs, n_img - i),), generator=gen))
               for i in range(0, n_img, bs)]
    batches = [(x.to(dev), y.to(dev)) for x, y in batches]

    state: Dict[str, object] = {}

    def make_space():
        model = build_model(args.model, args.num_classes).to(dev).eval()
        state["space"] = PruningSpace(model, batches[0][0][:2])

    emit("space", _timed(make_space, dev, 0))
    space = state["space"]
    sizes = [g.size for g in space.groups]
    facts.update(groups=len(sizes), channels=int(sum(sizes)), max_group=int(max(sizes)),
                 params=int(space.base_params), macs=int(space.base_flops))
    print(f"  [{impl}] {args.model}: {len(sizes)} groups, {sum(sizes)} prunable channels "
          f"(largest group {max(sizes)}), {space.base_params / 1e6:.1f}M params, "
          f"{space.base_flops / 1e9:.2f} GMACs at {hw}x{hw}", flush=True)

    with torch.no_grad():
        res = _timed(lambda: state.update(features=collect_features(
            space, batches, max_samples=n_img, device=dev)), dev, 0)
    emit("features", res, samples=n_img)
    features = state["features"]
    offsets = space.group_offsets()
    budget = Budget.from_ratios(space, flops=0.5)

    def graph_on(device: str):
        from dataclasses import replace

        feats = features if device == "cpu" else replace(
            features, gap=[g.to(device) for g in features.gap])
        seg = offsets.to(device)
        return lambda: state.update(graph=build_channel_graph(feats, seg, k=args.k))

    emit("graph", _timed(graph_on("cpu"), "cpu", args.repeats), k=args.k)
    raw, graph = state["graph"]
    facts.update(graph_edges=int(raw.nnz))
    if wanted("graph_cuda"):
        emit("graph_cuda", _timed(graph_on(dev), dev, args.repeats), k=args.k)

    res = _timed(lambda: state.update(x=node_features(space, features, raw, offsets, budget)),
                 "cpu", args.repeats)
    emit("node_feats", res)
    x = state["x"]

    def policy_on(device: str):
        g = ops.CSRGraph(*(t.to(device) for t in graph))
        xx = x.to(device)
        policy = ChannelGCNPolicy(sizes, xx.shape[1], hidden=32,
                                  generator=torch.Generator().manual_seed(0)).to(device)
        ax = ops.spmm(g, xx)  # the search precomputes A X once

        def step():
            policy.zero_grad(set_to_none=True)
            logits = policy(g, xx, ax)
            masks = (torch.rand_like(logits) < 0.5).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
            loss.backward()
        return step

    emit("policy", _timed(policy_on("cpu"), "cpu", args.repeats), hidden=32)
    if wanted("policy_cuda"):
        emit("policy_cuda", _timed(policy_on(dev), dev, args.repeats), hidden=32)

    if wanted("masked_eval"):
        rewards = RewardSet(torch.cat([b[0] for b in batches])[:args.reward_samples],
                            torch.cat([b[1] for b in batches])[:args.reward_samples],
                            batch_size=args.reward_samples)
        scorer = MaskScorer(space, rewards, "accuracy_bn", torch.device(dev))
        mgen = torch.Generator().manual_seed(1)

        def random_masks():
            return space.round_masks([torch.rand(s, generator=mgen) < 0.5 for s in sizes])

        with channels_last_evaluation(space, rewards, True):
            res = _timed(lambda: scorer(random_masks()), dev, args.repeats)
        emit("masked_eval", res, reward_samples=len(rewards))

    if wanted("surgery"):
        masks = space.round_masks([torch.rand(s, generator=torch.Generator().manual_seed(2)) < 0.5
                                   for s in sizes])
        res = _timed(lambda: state.update(pruned=space.prune(masks)), dev, 0)
        kept = sum(p.numel() for p in state["pruned"].parameters())
        emit("surgery", res, params_kept=kept)

    if args.worker_out:
        with open(args.worker_out, "w") as fh:
            json.dump({"facts": facts, "rows": rows}, fh)
    return 0


# ------------------------------------------------------------------------------------------------
# the parent: one process per implementation, then the table


def _fmt_ms(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if v < 1e4 else f"{v / 1e3:.1f}s")


def _fmt_mb(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_table(facts: dict, by_impl: Dict[str, Dict[str, dict]]) -> str:
    nat, ref = by_impl.get("native", {}), by_impl.get("reference", {})
    head = (f"pipeline stages: {facts.get('model')} on {facts.get('device')}, "
            f"{facts.get('groups')} groups, {facts.get('channels')} channels "
            f"(largest {facts.get('max_group')}), graph edges {facts.get('graph_edges')}")
    lines = [head, "| stage | native ms | reference ms | ref/native | native peak MB | "
             "reference peak MB |", "|---|---|---|---|---|---|"]
    for stage in STAGES:
        n, r = nat.get(stage), ref.get(stage)
        if n is None and r is None:
            continue
        ratio = (r["ms"] / n["ms"]) if (n and r and n["ms"]) else None
        lines.append(f"| {stage} | {_fmt_ms(n and n['ms'])} | {_fmt_ms(r and r['ms'])} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{_fmt_mb(n and n.get('peak_mb'))} | {_fmt_mb(r and r.get('peak_mb'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="small model and input (simple_cnn, 32 px, 32 samples)")
    parser.add_argument("--model", default=None,
                        help="gcnprune_fast model name or torchvision constructor "
                             "(default wide_resnet101_2; simple_cnn with --quick)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="default 224 on CUDA, 64 on the CPU, 32 with --quick")
    parser.add_argument("--samples", type=int, default=None, help="feature images (512; 32 quick)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reward-samples", type=int, default=None, help="256 (16 quick)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cheap stage")
    parser.add_argument("--impl", nargs="*", default=["native", "reference"],
                        choices=["native", "reference"])
    parser.add_argument("--json", help="write facts + rows to this JSON file")
    parser.add_argument("--jsonl", help="append every row to this JSON-lines file as measured")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per implementation's process (default: none)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    q = args.quick
    args.model = args.model or ("simple_cnn" if q else "wide_resnet101_2")
    args.image_size = args.image_size or (32 if q else (224 if args.device.startswith("cuda")
                                                        else 64))
    args.samples = args.samples or (32 if q else 512)
    args.reward_samples = args.reward_samples or (16 if q else 256)
    args.num_classes = args.num_classes or (10 if args.model in ("resnet20", "resnet32", "resnet56",
                                                                 "resnet110", "vgg16_bn",
                                                                 "mobilenet_v2", "simple_cnn")
                                            else 1000)
    args.repeats = args.repeats if args.repeats is not None else (1 if q else 3)
    if args.worker:
        return worker(args)

    by_impl: Dict[str, Dict[str, dict]] = {}
    facts: Dict[str, object] = {"model": args.model, "device": args.device}
    failed = []
    for impl in args.impl:
        env = dict(os.environ)
        env["GCNPRUNE_NATIVE"] = "1" if impl == "native" else "0"
        env.setdefault("PYTHONUNBUFFERED", "1")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            out_path = tmp.name
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--worker-out", out_path,
               "--device", args.device, "--model", args.model, "--image-size",
               str(args.image_size), "--samples", str(args.samples), "--batch-size",
               str(args.batch_size), "--reward-samples", str(args.reward_samples),
               "--num-classes", str(args.num_classes), "--k", str(args.k), "--repeats",
               str(args.repeats)]
        if args.jsonl:
            cmd += ["--jsonl", args.jsonl]
        print(f"[bench_pipeline] {impl}: GCNPRUNE_NATIVE={env['GCNPRUNE_NATIVE']}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"[bench_pipeline] {impl}: rc={rc}, {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            with open(out_path) as fh:
                data = json.load(fh)
            facts.update(data["facts"])
            by_impl[impl] = {r["stage_name"]: r for r in data["rows"]}
        except (OSError, ValueError):
            pass
        finally:
            if os.path.exists(out_path):
                os.unlink(out_path)
        if rc != 0:
            failed.append(impl)
    table = format_table(facts, by_impl)
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"facts": facts, "rows": by_impl, "table": table}, fh, indent=1)
    if failed:
        print(f"[bench_pipeline] FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
