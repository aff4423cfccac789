"""Part 3 of benchmarks/bench_latency_budget.py: quality.py rows rebuilt from their widths, timed,
and paired by seed against the latency-budgeted search (the timings themselves are not asserted)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_latency_budget  # noqa: E402

FULL = [64, 32, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64]  # resnet20's groups
LATENCY = "channel-gcn:flops=none,latency=0.5"


def _row(candidate, seed, acc, widths=None, flops=0.3):
    row = {"candidate": candidate, "flops_budget": flops, "seed": seed, "flops_kept": 0.4,
           "acc_ft1": acc, "finetune": {"epochs": [1], "lr": 0.01}}
    if widths is not None:
        row["widths"] = widths
    return row


def _args(path, *more):
    return ["--time-rows", str(path), "--model", "resnet20", "--checkpoint", "",
            "--threads", "1", "--batches", "1", "--rounds", "1", "--seeds", "0", "1", *more]


def test_time_rows_pairs_the_searches_by_seed(tmp_path, capsys):
    half = [w // 2 for w in FULL]
    rows = [_row(LATENCY, 0, 0.81, half), _row(LATENCY, 1, 0.80, half),
            _row("channel-gcn", 0, 0.79, half, 0.38), _row("channel-gcn", 1, 0.79, half, 0.38),
            _row("channel-gcn", 0, 0.70, FULL, 0.5),  # the same name at another --flops
            _row("tp:l1-global", 0, 0.78)]  # no widths recorded: skipped
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_latency_budget.main(_args(path)) == 0
    out = capsys.readouterr().out
    assert "skipped (no widths recorded): tp:l1-global" in out
    line = next(x for x in out.splitlines() if x.startswith("| channel-gcn @flops=0.38 |"))
    assert "| 2 |" in line and "+1.50 ±" in line  # (0.81 + 0.80) / 2 - 0.79, two seeds
    assert next(x for x in out.splitlines() if x.startswith("| channel-gcn @flops=0.5 |"))
    assert f"| {LATENCY} | 2 |" in out


def test_time_rows_refuses_widths_of_another_model(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row(LATENCY, 0, 0.8, [8, 8])) + "\n")
    with pytest.raises(SystemExit, match="2 widths, resnet20 has 12 groups"):
        bench_latency_budget.main(_args(path))
