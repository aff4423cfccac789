"""scripts/gpu_check.sh, the one-command GPU check of issue 14, run in its CPU mode at toy sizes so
that it cannot rot between the (rare) sessions that get a GPU. Slow (2-4 minutes on 2 cores; a
first build of build-cmake/gcnprune_run adds a few):
``pytest -m slow tests/test_gpu_check.py``."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("env", "build", "tests", "sanitizer", "headline", "bench", "pipeline")


def runner_available() -> bool:
    """gpu_check.sh's CPU mode times with build-cmake/gcnprune_run, or builds it when cmake, a
    C++ compiler and libtorch's CMake package are there; only without all that may it skip."""
    if os.access(os.path.join(REPO, "build-cmake", "gcnprune_run"), os.X_OK):
        return True
    import torch.utils

    return bool(shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))
                and os.path.isfile(os.path.join(torch.utils.cmake_prefix_path, "Torch",
                                                "TorchConfig.cmake")))


@pytest.mark.slow
def test_gpu_check_cpu_quick(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("OUT", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--cpu",
                           "--quick", "--out", str(out), "--python", sys.executable],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ends = {r["step"]: r for r in rows if r["stage"] == "gpu_check"}
    for stage in STAGES:
        assert ends.get(stage, {}).get("rc") == "0", (stage, ends.get(stage), tail)
    runner = runner_available()
    for stage in ("runner_build", "runner"):
        assert ends.get(stage, {}).get("rc") == ("0" if runner else "skipped"), \
            (stage, ends.get(stage), tail)
    kinds = {r["stage"] for r in rows}
    assert {"env", "native", "tests_summary", "bench_ops", "pipeline", "headline"} <= kinds
    tests = next(r for r in rows if r["stage"] == "tests_summary")
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    ops = {r["op"] for r in rows if r["stage"] == "bench_ops"}
    assert {"gap_stats", "knn_graph", "spmm fwd", "spmm fwd+bwd", "gcn_norm"} <= ops
    pipe = {(r["stage_name"], r["impl"]) for r in rows if r["stage"] == "pipeline"}
    for stage in ("features", "graph", "node_feats", "policy"):
        assert (stage, "native") in pipe and (stage, "reference") in pipe, stage
    assert ("masked_eval", "native") in pipe and ("surgery", "native") in pipe
    events = [(r.get("model"), r.get("event")) for r in rows if r["stage"] == "headline"]
    assert sum(e == "finetuned" for _, e in events) == 2, events

    exported = {(r["tag"], r["variant"]) for r in rows
                if r["stage"] == "headline" and r.get("event") == "exported"}
    assert len(exported) == 4, exported  # original and pruned of both headline jobs
    if runner:  # gcnprune_run timed both pairs at batch 1 and 64, next to the FLOPs ratio
        runs = [r for r in rows if r["stage"] == "runner"]
        assert sorted((r["tag"], r["batch"]) for r in runs) == sorted(
            (tag, b) for tag, v in exported if v == "pruned" for b in (1, 64)), runs
        for r in runs:
            assert "error" not in r and r["device"] == "cpu" and r["source"] == "headline", r
            assert 0 < r["flops_ratio"] < 1 and r["ideal_speedup"] > 1
            for key in ("orig_ms", "orig_p90_ms", "pruned_ms", "pruned_p90_ms"):
                assert r[key] > 0, (key, r)
            assert r["speedup"] == pytest.approx(r["orig_ms"] / r["pruned_ms"])

    summary = (out / "summary.txt").read_text()
    assert "headline:" in summary and "pipeline:" in summary and "op benchmarks" in summary
    assert ("gcnprune_run latency" in summary) == runner, summary
    # what the device tool brings back: at most 8 files, 2 folders deep, plain names
    files = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
    assert 0 < len(files) <= 8, files
    for f in files:
        assert f.count(os.sep) <= 2 and re.fullmatch(r"[A-Za-z0-9._\-/]+", f), f
