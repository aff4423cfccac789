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
    gcn, l1 = res["rows"]
    report = res["reports"]["channel-gcn"]
    # the learning: greedy-mask reward at the warm start and after the last update
    assert gcn["greedy_first"] == report["greedy_curve"][0]
    assert gcn["greedy_last"] == report["final_greedy_reward"]
    assert l1["greedy_first"] is None and l1["greedy_last"] is None
    assert report["accuracy_set"] == "val_loader" and "test split" in res["meta"]["accuracy_set"]
    md = (demo_dir / "results.md").read_text()
    assert "| channel-gcn" in md and "| l1" in md
    assert "greedy reward start" in md and "greedy reward end" in md
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
                 "--epochs", "1", "--batch-size", "256", "--no-progress", "--channels-last", "on",
                 "--out", str(ckpt)]) == 0
    assert ckpt.is_file() and not os.path.exists(str(ckpt) + ".ckpt")
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert all(v.is_contiguous() for v in saved.values())  # stored in the default format
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "simple_cnn", "--checkpoint", str(ckpt), "--dataset", "synthetic",
                 "--image-size", "8", "--batch-size", "256", "--method", "l1", "--flops", "0.5",
                 "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "l1" and report["flops_ratio"] <= 0.5
    assert report["accuracy_set"] == "val_loader"
    assert "accuracy (test split)" in capsys.readouterr().out
    assert "| accuracies measured on | val_loader |" in (out / "report.md").read_text()


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


# ----------------------------------------------------------------------------------------------
# reliability: one-line errors naming the file, --debug, model specs, resume, optional plots
# ----------------------------------------------------------------------------------------------
def _copy_pruned(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_export_truncated_or_malformed_files_name_the_file(demo_dir, tmp_path, capsys):
    folder = _copy_pruned(demo_dir / "l1", tmp_path / "p")
    weights = folder / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert main(["export", "--pruned", str(folder), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    weights.write_bytes(data)
    plan = folder / "plan.json"
    text = plan.read_text()
    plan.write_text(text[: len(text) // 2])
    assert main(["export", "--pruned", str(folder), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert str(plan) in err and "not valid JSON" in err and len(err.strip().splitlines()) == 1
    broken = json.loads(text)
    del broken["groups"]
    plan.write_text(json.dumps(broken))
    assert main(["export", "--pruned", str(folder), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert str(plan) in err and "'groups' is missing" in err


def test_debug_flag_shows_the_traceback(demo_dir, tmp_path, monkeypatch):
    from gcnprune_fast.cli import CLIError

    folder = _copy_pruned(demo_dir / "l1", tmp_path / "p")
    (folder / "plan.json").write_text("{")
    argv = ["export", "--pruned", str(folder), "--out", str(tmp_path / "m.pt")]
    for extra in (["--debug"] + argv, argv + ["--debug"]):
        with pytest.raises(CLIError, match="not valid JSON"):
            main(extra)
    monkeypatch.setenv("GCNPRUNE_DEBUG", "1")
    with pytest.raises(CLIError):
        main(argv)


def test_runtime_errors_are_one_line(monkeypatch, capsys):
    import gcnprune_fast.cli as cli

    def boom(args):
        raise RuntimeError("CUDA error: something\nlong torch details\nmore")

    monkeypatch.setattr(cli, "cmd_inspect", boom)  # build_parser binds it when called
    assert main(["inspect", "--model", "resnet20"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("gcnprune inspect: error: RuntimeError: CUDA error: something "
                           "(--debug shows the traceback)")
    with pytest.raises(RuntimeError):
        main(["inspect", "--model", "resnet20", "--debug"])


def _fake_checkpoint(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    return path


def test_prune_and_export_torchvision_model(tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    ckpt = _fake_checkpoint(tmp_path, torchvision.models.get_model("resnet18", num_classes=10))
    out = tmp_path / "pruned"
    common = ["--dataset", "synthetic", "--image-size", "16", "--batch-size", "250", "--no-progress"]
    assert main(["prune", "--model", "torchvision:resnet18", "--checkpoint", str(ckpt), *common,
                 "--method", "l1", "--flops", "0.5", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["flops_ratio"] <= 0.5 and report["cost_model_mismatch"] is False
    capsys.readouterr()
    assert main(["export", "--pruned", str(out), "--model", "torchvision:resnet18", "--format",
                 "torchscript", "--out", str(tmp_path / "r18.pt")]) == 0
    loaded = torch.jit.load(str(tmp_path / "r18.pt"))
    assert loaded(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    # without --model the plan is not a built-in one: say how to name it
    assert main(["export", "--pruned", str(out), "--out", str(tmp_path / "x.pt")]) == 2
    assert "torchvision:NAME" in capsys.readouterr().err


def test_model_spec_errors(monkeypatch, capsys):
    assert main(["inspect", "--model", "torchvision:nosuchnet"]) == 2
    assert "torchvision has no classification model 'nosuchnet'" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # timm not installed
    assert main(["inspect", "--model", "timm:resnet18"]) == 2
    assert "pip install timm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", "--model", "keras:resnet"])
    assert "torchvision:NAME or timm:NAME" in capsys.readouterr().err


def test_inspect_timm_model(capsys):
    pytest.importorskip("timm")
    assert main(["inspect", "--model", "timm:resnet10t", "--num-classes", "5"]) == 0
    assert "timm:resnet10t:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("trained") / "w.pt"
    assert main(["train", "--model", "simple_cnn", "--dataset", "synthetic", "--image-size", "8",
                 "--epochs", "1", "--batch-size", "256", "--no-progress", "--out", str(ckpt)]) == 0
    return ckpt


def _prune_argv(ckpt, out, *extra):
    return ["prune", "--model", "simple_cnn", "--checkpoint", str(ckpt), "--dataset", "synthetic",
            "--image-size", "8", "--batch-size", "256", "--flops", "0.5", "--no-progress",
            "--out", str(out), *extra]


def test_resume_with_nothing_to_resume_and_other_settings(trained, tmp_path, capsys, monkeypatch):
    import gcnprune_fast.cli as cli

    monkeypatch.setattr(cli, "_load_datasets", lambda *a: pytest.fail("data loaded"))
    for method in ("l1", "channel-gcn"):
        assert main(_prune_argv(trained, tmp_path / method, "--method", method, "--resume",
                                "--finetune-epochs", "1")) == 2
        err = capsys.readouterr().err
        assert "nothing to resume" in err and "--resume" in err and "resume=True" not in err
    monkeypatch.undo()
    out = tmp_path / "run"
    assert main(_prune_argv(trained, out, "--method", "l1", "--finetune-epochs", "1")) == 0
    assert (out / "search" / "finetune.pt").is_file()
    # another budget with --resume: refused before the search, naming the setting
    # same settings: the (fast, deterministic) search is rerun, the fine-tune resumed
    assert main(_prune_argv(trained, out, "--method", "l1", "--finetune-epochs", "1",
                            "--resume")) == 0
    assert "rerunning its search" in capsys.readouterr().err
    capsys.readouterr()
    argv = _prune_argv(trained, out, "--method", "l1", "--finetune-epochs", "1", "--resume")
    argv[argv.index("--flops") + 1] = "0.6"
    assert main(argv) == 2
    assert "flops_budget" in capsys.readouterr().err
    # without --resume the old checkpoint is ignored: another budget just runs
    argv.remove("--resume")
    assert main(argv) == 0


@pytest.mark.parametrize("option, message", [("hrank_samples=0", "must be >= 1"),
                                             ("hrank_samples=many", "expects an integer"),
                                             ("nosuch=1", "unknown option")])
def test_bad_option_values_exit_2_before_loading_data(trained, tmp_path, capsys, monkeypatch,
                                                       option, message):
    import gcnprune_fast.cli as cli

    monkeypatch.setattr(cli, "_load_datasets", lambda *a: pytest.fail("data loaded"))
    assert main(_prune_argv(trained, tmp_path / "o", "--method", "hrank", "--option", option)) == 2
    assert message in capsys.readouterr().err


def test_missing_matplotlib_never_costs_the_result(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    out = tmp_path / "gcn"
    assert main(_prune_argv(trained, out, "--method", "channel-gcn", "--episodes", "2",
                            "--option", "episodes_per_update=2", "--option", "reward_samples=16",
                            "--option", "feature_samples=16")) == 0
    captured = capsys.readouterr()
    assert "plots skipped" in captured.out and "pip install matplotlib" in captured.out
    assert (out / "report.json").is_file() and (out / "weights.pt").is_file()
    assert not (out / "reward_curve.png").exists()
    from gcnprune_fast.report import plot_reward_curve, write_comparison_report

    report = json.loads((out / "report.json").read_text())
    files = write_comparison_report(str(tmp_path / "cmp"), [{"method": "channel-gcn"}], {},
                                    {"channel-gcn": report}, [w["before"] for w in report["widths"]])
    assert "plots skipped" in files["plots_skipped"]
    assert (tmp_path / "cmp" / "results.json").is_file() and (tmp_path / "cmp" / "results.md").is_file()
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_reward_curve(str(tmp_path / "r.png"), [1.0, 2.0])


def test_reward_plot_draws_the_greedy_curve(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from gcnprune_fast import report as rep

    r = {"reward_curve": [0.1, 0.2, 0.3, 0.2, 0.4, 0.5], "greedy_curve": [0.2, 0.3, 0.4],
         "final_greedy_reward": 0.45, "updates": 3, "episodes": 6}
    assert rep.greedy_points(r) == ([0.0, 2.0, 4.0, 6.0], [0.2, 0.3, 0.4, 0.45])
    assert rep.greedy_first_last(r) == (0.2, 0.45)
    assert rep.greedy_first_last({"reward_curve": [0.1]}) == (None, None)
    drawn = []
    real = rep.plot_reward_curve

    def spy(path, rewards, title="", smooth=10, greedy=None, greedy_heldout=None):
        drawn.append((greedy, greedy_heldout))
        return real(path, rewards, title, smooth, greedy, greedy_heldout)

    monkeypatch.setattr(rep, "plot_reward_curve", spy)
    files = rep.write_comparison_report(str(tmp_path), [{"method": "channel-gcn"}], {},
                                        {"channel-gcn": r}, [])
    assert drawn == [(rep.greedy_points(r), None)]
    assert os.path.getsize(files["reward_plot_channel-gcn"]) > 1000
    # the held-out curve: entries None (updates before a resume without it) are left out
    r.update(greedy_heldout_curve=[None, 0.25, 0.35], final_greedy_heldout_reward=0.38,
             heldout_samples=512)
    assert rep.greedy_points(r, heldout=True) == ([2.0, 4.0, 6.0], [0.25, 0.35, 0.38])
    assert rep.greedy_first_last(r, heldout=True) == (0.25, 0.38)
    assert rep.greedy_points({**r, "greedy_heldout_curve": [None], "final_greedy_heldout_reward":
                              None}, heldout=True) is None
    files = rep.write_comparison_report(str(tmp_path), [{"method": "channel-gcn"}], {},
                                        {"channel-gcn": r}, [])
    assert drawn[-1] == (rep.greedy_points(r), rep.greedy_points(r, heldout=True))
