"""The gcnprune command line: help texts, inspect, a tiny demo, export of its result, errors."""
import json
import os

import pytest
import torch

from gcnprune_fast.cli import build_parser, main

SUBCOMMANDS = ("demo", "train", "prune", "inspect", "export")


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"gcnprune {cmd}" in out and "--" in out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in SUBCOMMANDS)


def test_inspect(capsys, tmp_path):
    assert main(["inspect", "--model", "resnet20", "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert "resnet20:" in out and "prunable channel groups" in out and "layer1.0.conv1" in out
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["base_flops"] > 0 and len(data["groups"]) >= 10
    assert all(0 <= g["flops_share"] <= 1 for g in data["groups"])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def test_demo_quick_writes_comparison(demo_dir, capsys):
    res = json.loads((demo_dir / "results.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["channel-gcn", "l1"]
    for r in res["rows"]:
        assert 0 < r["flops_kept"] <= 0.5 and 0 <= r["acc_pruned"] <= 1
        assert r["acc_finetuned"] is not None
    md = (demo_dir / "results.md").read_text()
    assert "| channel-gcn" in md and "| l1" in md
    assert (demo_dir / "widths.png").stat().st_size > 1000
    assert (demo_dir / "reward_curve.png").stat().st_size > 1000
    assert (demo_dir / "channel-gcn" / "plan.json").is_file()


def test_export_of_demo_result(demo_dir, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", "--pruned", str(demo_dir / "l1"), "--format", "torchscript",
                 "--out", str(out)]) == 0
    assert "simple_cnn" in capsys.readouterr().out
    loaded = torch.jit.load(str(out))
    assert loaded(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_train_and_prune_on_synthetic(tmp_path, capsys):
    ckpt = tmp_path / "w.pt"
    assert main(["train", "--model", "simple_cnn", "--dataset", "synthetic", "--image-size", "8",
                 "--epochs", "1", "--batch-size", "256", "--no-progress", "--out", str(ckpt)]) == 0
    assert ckpt.is_file() and not os.path.exists(str(ckpt) + ".ckpt")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "simple_cnn", "--checkpoint", str(ckpt), "--dataset", "synthetic",
                 "--image-size", "8", "--batch-size", "256", "--method", "l1", "--flops", "0.5",
                 "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "l1" and report["flops_ratio"] <= 0.5


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "resnet20", "--checkpoint", "/nonexistent/w.pt", "--dataset", "synthetic",
      "--flops", "0.5", "--out", "/tmp/x"], "does not exist"),
    (["train", "--model", "resnet20", "--dataset", "nosuchdata", "--epochs", "1", "--out", "/tmp/x.pt"],
     "unknown dataset"),
    (["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", "/nonexistent", "--epochs",
      "1", "--out", "/tmp/x.pt"], "make_cifar10"),
    (["export", "--pruned", "/nonexistent", "--out", "/tmp/x.pt"], "plan.json"),
])
def test_errors_exit_2_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_arguments_exit_2(capsys):
    for argv, message in ((["demo", "--flops", "1.5"], "(0, 1]"), (["inspect", "--model", "nope"], "nope"),
                          (["prune"], "required"), ([], "required")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_parser_defaults():
    args = build_parser().parse_args(["demo"])
    assert args.flops == 0.5 and args.methods == ["channel-gcn", "l1"] and args.out == os.path.join("runs", "demo")


def test_report_tables_and_quality_summary(tmp_path):
    from gcnprune_fast.report import markdown_table, summarize_by_method, write_quality_report

    table = markdown_table([{"a": 1, "b": 0.5}, {"a": 2}], ["a", "b"])
    assert table.splitlines()[2] == "| 1 | 0.5000 |" and table.splitlines()[3] == "| 2 | -      |"
    rows = [{"method": "l1", "seed": s, "acc_pruned": a, "acc_bn_recalibrated": a, "acc_finetuned": a + 0.1,
             "flops_kept": 0.5, "params_kept": 0.4, "search_time_s": 1.0} for s, a in ((0, 0.5), (1, 0.7))]
    summary = summarize_by_method(rows)
    assert summary == [{"method": "l1", "n": 2, "acc_pruned": "60.00±14.14", "acc_bn_recalibrated": "60.00±14.14",
                        "acc_finetuned": "70.00±14.14", "flops_kept": 0.5, "params_kept": 0.4,
                        "search_time_s": 1.0}]
    md = write_quality_report(str(tmp_path), rows, {"model": "resnet20"})
    assert "60.00±14.14" in md and json.loads((tmp_path / "quality.json").read_text())["rows"] == rows
