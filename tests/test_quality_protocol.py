"""The statistics and parsing of benchmarks/quality.py (the protocol itself is a benchmark)."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402


def test_t_interval_matches_known_values():
    m, h = quality.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0
    # sd = sqrt(2.5), t(4) = 2.776
    assert h == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert math.isnan(quality.mean_ci([1.0])[1])
    assert quality.t95(100) == 1.96 and quality.t95(11) == quality.t95(10)


def test_parse_variant():
    assert quality.parse_variant("l1") == ("l1", {})
    assert quality.parse_variant("m:lr=0, gcn=false") == ("m", {"lr": "0", "gcn": "false"})
    with pytest.raises(ValueError, match="key=value"):
        quality.parse_variant("m:lr")


def test_summary_pairs_by_seed_against_the_best_baseline():
    rows = []
    for seed, (a, b, c) in enumerate([(0.50, 0.60, 0.62), (0.52, 0.61, 0.64), (0.51, 0.59, 0.60)]):
        for name, acc in (("base1", a), ("base2", b), ("ours", c)):
            rows.append({"candidate": name, "flops_budget": 0.5, "seed": seed, "acc_ft1": acc,
                         "flops_kept": 0.5, "params_kept": 0.5, "search_time_s": 1.0})
    summary = {r["candidate"]: r for r in quality.summarize(rows, ["base1", "base2"], [1])}
    assert summary["ours"]["vs_ft1"] == "base2"  # the best baseline by mean
    d, h = summary["ours"]["diff_ft1"]
    assert d == pytest.approx((0.02 + 0.03 + 0.01) / 3)
    assert h == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert "diff_ft1" not in summary["base2"]  # the best itself
    assert "| ours | 3 |" in quality.markdown(list(summary.values()), [1], {"model": "m", "dataset": "d"})
