"""The statistics and parsing of benchmarks/quality.py (the protocol itself is a benchmark)."""
import copy
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


def test_variants_carry_typed_prune_arguments():
    opts = quality.parse_variant("channel-gcn:flops=none,latency=0.5,latency_threads=1,lr=0")[1]
    assert quality.split_prune_arguments("v", opts) == {"flops": None, "latency": 0.5,
                                                        "latency_threads": 1}
    assert opts == {"lr": "0"}  # the method's own options stay
    assert quality.split_prune_arguments("v", {"flops": "0.3"}) == {"flops": 0.3}
    with pytest.raises(ValueError, match="latency_threads='two'"):
        quality.split_prune_arguments("v", {"latency_threads": "two"})


def test_variant_budgets_are_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        quality.main(["--synthetic", "50", "--variants", "l1:latency=1.5"])
    assert "variant 'l1:latency=1.5': latency=1.5 is outside (0, 1]" in capsys.readouterr().err


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


def test_greedy_curve_lines_average_the_curves_ends_over_seeds():
    rows = [
        {"candidate": "ours", "seed": 0, "greedy_curve": [0.30, 0.31],
         "final_greedy_reward": 0.34, "greedy_heldout_curve": [0.28, 0.27],
         "final_greedy_heldout_reward": 0.26},
        # a row written before final_greedy_reward was kept: the last curve entry; a held-out
        # curve resumed from a checkpoint without one starts at its first scored update
        {"candidate": "ours", "seed": 1, "greedy_curve": [0.30, 0.36],
         "greedy_heldout_curve": [None, 0.30], "final_greedy_heldout_reward": 0.32},
        {"candidate": "l1", "seed": 0},
    ]
    lines = quality.greedy_curve_lines(rows)
    assert lines[-1] == ("| ours | 30.00 -> 35.00 (rose in 2 of 2) | "
                         "29.00 -> 29.00 (rose in 1 of 2) |")
    assert not any(line.startswith("| l1 ") for line in lines)
    assert quality.greedy_curve_lines([{"candidate": "l1", "seed": 0}]) == []


def test_finetune_under_bf16_autocast_trains_in_place():
    import torch
    from gcnprune_fast.data import TensorBatchLoader, TensorImageDataset
    from gcnprune_fast.models import get_model

    torch.manual_seed(0)
    ds = TensorImageDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,)), mean=None,
                            std=None, num_classes=10)
    model = get_model("simple_cnn")
    before = [p.detach().clone() for p in model.parameters()]
    accs = quality.finetune_and_evaluate(model, ds, TensorBatchLoader(ds, 32), [0, 1],
                                         0.05, seed=0, batch_size=32, amp="bf16")
    assert set(accs) == {"acc_ft0", "acc_ft1"}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_resume_refuses_rows_fine_tuned_otherwise(tmp_path, capsys):
    args = ["--synthetic", "64", "--image-size", "16", "--model", "simple_cnn", "--variants", "l1",
            "--tp-pruners", "--seeds", "0", "--finetune-epochs", "0", "1", "--quick",
            "--search-images", "48", "--selection-images", "16", "--no-progress",
            "--out", str(tmp_path)]
    assert quality.main(args) == 0
    assert quality.main(args + ["--resume"]) == 0  # same fine-tune: the finished row is kept
    for other in (["--finetune-amp", "bf16"], ["--finetune-lr", "0.02"]):
        with pytest.raises(SystemExit):
            quality.main(args + ["--resume"] + other)
        assert "holds runs fine-tuned with" in capsys.readouterr().err


def test_refuse_mixed_finetunes_treats_unrecorded_rows_as_full_precision():
    messages = []
    fp32 = {"epochs": [0, 1], "lr": 0.01, "amp": None}
    bf16 = {**fp32, "amp": "bf16"}
    legacy, recorded = {"candidate": "a"}, {"candidate": "b", "finetune": fp32}
    quality.refuse_mixed_finetunes([legacy, recorded], fp32, "x.jsonl", messages.append)
    assert messages == []
    quality.refuse_mixed_finetunes([legacy], bf16, "x.jsonl", messages.append)
    quality.refuse_mixed_finetunes([recorded], bf16, "x.jsonl", messages.append)
    assert len(messages) == 2 and all("x.jsonl" in m for m in messages)
    assert "unrecorded settings (full precision)" in messages[0]


def test_cosine_finetune_runs_each_length_on_its_own():
    """With the cosine schedule every length is a complete run from the given weights: the
    1-epoch figure of an [0, 1, 2] fine-tune is the one of a lone 1-epoch fine-tune, and the
    2-epoch figure differs from the constant-rate loop's; unknown schedules are refused."""
    import torch
    from gcnprune_fast.data import TensorBatchLoader, TensorImageDataset
    from gcnprune_fast.models import get_model

    torch.manual_seed(0)
    ds = TensorImageDataset(torch.randn(96, 3, 16, 16), torch.randint(0, 10, (96,)), mean=None,
                            std=None, num_classes=10)
    test = TensorBatchLoader(ds, 32)
    torch.manual_seed(1)
    base = get_model("simple_cnn")

    def tune(epochs, schedule):
        model = copy.deepcopy(base)
        return quality.finetune_and_evaluate(model, ds, test, epochs, 0.1, seed=0, batch_size=16,
                                             schedule=schedule), model

    both, model = tune([0, 1, 2], "cosine")
    alone, _ = tune([1], "cosine")
    constant, _ = tune([0, 1, 2], "constant")
    assert set(both) == {"acc_ft0", "acc_ft1", "acc_ft2"}
    assert both["acc_ft1"] == alone["acc_ft1"]
    assert both["acc_ft0"] == constant["acc_ft0"]
    assert both["acc_ft2"] != constant["acc_ft2"] or both["acc_ft1"] != constant["acc_ft1"]
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="schedule"):
        quality.finetune_and_evaluate(copy.deepcopy(base), ds, test, [1], 0.1, seed=0,
                                      schedule="step")


def _row(name, seed, acc, finetune=None, **extra):
    return {"candidate": name, "flops_budget": 0.5, "seed": seed, "acc_ft0": acc / 2, "acc_ft1": acc,
            "flops_kept": 0.5, "params_kept": 0.5, "search_time_s": 1.0,
            "finetune": finetune or {"epochs": [0, 1], "lr": 0.01, "amp": "bf16"}, **extra}


def _raise(message):
    raise AssertionError(message)


def _write_rows(path, rows):
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_reference_pairs_every_candidate_against_it():
    rows = [_row(n, s, a) for s, accs in enumerate([(0.70, 0.60), (0.72, 0.61), (0.71, 0.59)])
            for n, a in zip(("full", "ablation"), accs)]
    rows += [_row("base", s, 0.9) for s in range(3)]  # the best baseline, ignored here
    summary = {r["candidate"]: r for r in quality.summarize(rows, ["base"], [1], "full")}
    assert summary["ablation"]["vs_ft1"] == "full"
    assert summary["ablation"]["diff_ft1"][0] == pytest.approx(-(0.10 + 0.11 + 0.12) / 3)
    assert summary["base"]["vs_ft1"] == "full" and "diff_ft1" not in summary["full"]
    md = quality.markdown(list(summary.values()), [1], {"model": "m", "dataset": "d",
                                                         "reference": "full"})
    assert "| full | 3 |" in md and "reference |" in md


def test_from_rows_joins_runs_by_seed(tmp_path, capsys):
    longer = {"epochs": [0, 1, 5], "lr": 0.01, "amp": "bf16"}
    a = _write_rows(tmp_path / "a.jsonl", [_row("full", s, 0.70 + s / 100, longer, acc_ft5=0.8)
                                           for s in range(3)])
    b = _write_rows(tmp_path / "b.jsonl", [_row("ablation", s, 0.60) for s in range(3)])
    rows, epochs = quality.rows_from_files([a, b], pytest.fail)
    assert len(rows) == 6 and epochs == [0, 1, 5]  # 5 epochs only in a: "-" for the ablation
    assert quality.main(["--from-rows", a, b, "--reference", "full"]) == 0
    out = capsys.readouterr().out
    assert "| ablation | 3 |" in out and "-11.00 ±" in out  # 0.60 - 0.71 on average
    ablation = next(line for line in out.splitlines() if line.startswith("| ablation |"))
    assert ablation.split(" | ")[-3:-1] == ["-", "-"]  # no 5-epoch figure, no difference


def test_from_rows_merges_a_later_run_of_the_same_models(tmp_path):
    """A later run with another fine-tune length (same searches) adds its column."""
    a = _write_rows(tmp_path / "a.jsonl", [_row("full", s, 0.70) for s in range(2)])
    ft5 = {"epochs": [0, 5], "lr": 0.01, "amp": "bf16"}
    later = [_row("full", s, 0.70, ft5, acc_ft5=0.8 + s / 100) for s in range(2)]
    for r in later:
        del r["acc_ft1"]
    b = _write_rows(tmp_path / "b.jsonl", later)
    rows, epochs = quality.rows_from_files([a, b], pytest.fail)
    assert len(rows) == 2 and epochs == [0, 1, 5]
    assert [r["acc_ft5"] for r in rows] == [0.8, 0.81]
    other = [dict(r, acc_ft0=0.1) for r in later]  # another pruned model under the same name
    c = _write_rows(tmp_path / "c.jsonl", other)
    with pytest.raises(AssertionError, match="not the same pruned model"):
        quality.rows_from_files([a, c], _raise)


def test_from_rows_refuses_what_cannot_be_paired(tmp_path, capsys):
    a = _write_rows(tmp_path / "a.jsonl", [_row("full", 0, 0.7)])
    fp32 = _write_rows(tmp_path / "fp32.jsonl", [_row("other", 0, 0.6, {"lr": 0.01, "amp": None})])
    for argv, message in (([a, fp32], "fine-tuned differently"), ([a, a], "appears twice"),
                          ([a, str(tmp_path / "none.jsonl")], "no such file"),
                          ([a, "--reference", "nope"], "not among the rows' candidates")):
        with pytest.raises(SystemExit):
            quality.main(["--from-rows"] + argv)
        assert message in capsys.readouterr().err


def test_from_rows_tags_keep_the_same_candidate_of_two_runs_apart(tmp_path, capsys):
    """PATH@TAG: the same candidate from two runs (e.g. 300 and 600 episodes) is paired, not
    refused as a duplicate; a trailing '@' without a tag is an error."""
    a = _write_rows(tmp_path / "a.jsonl", [_row("full", s, 0.70) for s in range(3)])
    longer = {"epochs": [0, 1, 5], "lr": 0.01, "amp": "bf16"}
    b = _write_rows(tmp_path / "b.jsonl", [_row("full", s, 0.72 + s / 100, longer, acc_ft5=0.8)
                                           for s in range(3)])
    rows, _ = quality.rows_from_files([a + "@300", b + "@600"], pytest.fail)
    assert sorted({r["candidate"] for r in rows}) == ["full@300", "full@600"]
    assert quality.main(["--from-rows", a + "@300", b + "@600", "--reference", "full@300"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out  # no 5-epoch figure for the reference: "-", not a difference
    full600 = next(line for line in out.splitlines() if line.startswith("| full@600 |"))
    assert full600.split(" | ")[-3:-1] == ["80.00 ± 0.00", "-"]
    assert "| full@600 | 3 |" in out and "| +3.00 ± 2.48 vs full@300 |" in out  # 0.73 - 0.70
    with pytest.raises(SystemExit):
        quality.main(["--from-rows", a + "@", b])
    assert "without a tag" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the untagged duplicate still names the way out
        quality.main(["--from-rows", a, a])
    assert "PATH@TAG" in capsys.readouterr().err


def test_from_rows_prints_the_spread_over_every_row(tmp_path, capsys):
    """The range after fine-tuning over all candidates and seeds, and its correlation with the
    accuracy before: what bounds any mask choice's gain at that setting."""
    rows = [_row(n, s, 0.70 + k / 100 + s / 1000) for s in range(3)
            for k, n in enumerate(("a", "b"))]
    for r in rows:  # before fine-tuning in the same order as after it: correlation 1
        r["acc_ft0"] = r["acc_ft1"] - 0.4
    a = _write_rows(tmp_path / "a.jsonl", rows)
    assert quality.main(["--from-rows", a]) == 0
    spread = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("| 0.5 | 1 |"))
    assert spread.split(" | ")[2:5] == ["6", "30.00-31.20", "70.00-71.20"]
    assert spread.endswith("| 1.00 |")
