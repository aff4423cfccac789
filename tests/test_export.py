"""Export round trips (TorchScript, torch.export, AOTInductor, ONNX) of the built-in CIFAR models,
unpruned and pruned with random ~50% masks, plus the exporter's contracts (user model untouched,
standard ops only, trace fallback, no torch.jit deprecation noise, clear errors).

Budget: the default selection exports every model to TorchScript (fast) and a few to
torch.export / ONNX; the full format x model sweep and AOTInductor (compiles C++) are `slow`."""
import importlib.util
import logging
import warnings

import pytest
import torch
import torch.nn as nn

import gcnprune_fast.export as E
from gcnprune_fast.models import get_model

MODELS = ["simple_cnn", "resnet20", "resnet56", "vgg16_bn", "mobilenet_v2"]
TOL = dict(rtol=1e-4, atol=1e-4)
HAVE_ONNX = all(importlib.util.find_spec(n) is not None for n in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that eval-mode export (and BN folding) is tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def _random_masks(space, seed: int = 0, keep: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for i, group in enumerate(space.groups):
        mask = torch.rand(group.size, generator=g) < keep
        need = space.min_keep(i) - int(mask.sum())
        if need > 0:
            mask[torch.nonzero(~mask).flatten()[:need]] = True
        masks.append(mask)
    return space.round_masks(masks)


_CACHE = {}


def _model(name: str, pruned: bool):
    """(eval-mode model, example input [2, 3, 32, 32]); pruned ones via PruningSpace."""
    key = (name, pruned)
    if key not in _CACHE:
        torch.manual_seed(0)
        model = _randomize_bn(get_model(name)).eval()
        x = torch.randn(2, 3, 32, 32)
        if pruned:
            space_mod = pytest.importorskip("gcnprune_fast.space")
            space = space_mod.PruningSpace(model, x)
            model = space.prune(_random_masks(space)).eval()
            assert sum(p.numel() for p in model.parameters()) < space.base_params
        _CACHE[key] = (model, x)
    return _CACHE[key]


def _roundtrip(name, pruned, fmt, tmp_path, **options):
    model, x = _model(name, pruned)
    suffix = {"torchscript": ".pt", "export": ".pt2", "aoti": ".pt2", "onnx": ".onnx"}[fmt]
    path = E.export_model(model, tmp_path / f"{name}{suffix}", x, fmt, **options)
    assert path.exists() and path.stat().st_size > 0
    assert E.detect_format(path) == fmt
    loaded = E.load_exported(path, fmt)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(loaded(x), expected, **TOL)
    return model, x, loaded


@pytest.mark.parametrize("pruned", [False, True], ids=["full", "pruned"])
@pytest.mark.parametrize("name", MODELS)
def test_torchscript_roundtrip(name, pruned, tmp_path):
    _roundtrip(name, pruned, "torchscript", tmp_path)


@pytest.mark.parametrize("name,pruned", [("resnet20", True), ("simple_cnn", False)])
def test_torch_export_roundtrip(name, pruned, tmp_path):
    _roundtrip(name, pruned, "export", tmp_path)


@pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxscript and onnxruntime are not installed")
@pytest.mark.parametrize("name,pruned", [("simple_cnn", True)])
def test_onnx_roundtrip(name, pruned, tmp_path):
    _roundtrip(name, pruned, "onnx", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["export", "onnx"])
@pytest.mark.parametrize("pruned", [False, True], ids=["full", "pruned"])
@pytest.mark.parametrize("name", MODELS)
def test_roundtrip_sweep(name, pruned, fmt, tmp_path):
    if fmt == "onnx" and not HAVE_ONNX:
        pytest.skip("onnx, onnxscript and onnxruntime are not installed")
    _roundtrip(name, pruned, fmt, tmp_path)


@pytest.mark.slow
def test_aoti_roundtrip(tmp_path):
    """AOTInductor compiles C++ (a minute on 2 cores): one small pruned model."""
    _roundtrip("simple_cnn", True, "aoti", tmp_path)


def test_user_model_is_untouched_and_exported_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(get_model("resnet20")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    path = E.export_model(model, tmp_path / "m.pt", x)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"export changed {k}"
    loaded = E.load_exported(path)
    with torch.no_grad():
        expected = model.eval()(x)  # eval-mode semantics (running BN statistics)
        torch.testing.assert_close(loaded(x), expected, **TOL)


def test_no_torch_jit_deprecation_warning(tmp_path):
    model, x = _model("simple_cnn", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        E.export_model(model, tmp_path / "m.pt", x, optimize=True)
        E.load_exported(tmp_path / "m.pt")
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not any("torch.jit" in m for m in messages), messages


class _KwargsForward(nn.Module):
    """torch.jit.script rejects **kwargs in forward; tracing handles it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, **kwargs):
        return self.conv(x).relu()


def test_trace_fallback_logs_and_roundtrips(tmp_path, caplog):
    torch.manual_seed(0)
    model = _KwargsForward()
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="gcnprune_fast.export"):
        path = E.export_model(model, tmp_path / "m.pt", x)
    assert any("falling back to torch.jit.trace" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        torch.testing.assert_close(E.load_exported(path)(x), model(x))


# A model that calls a non-aten operator: must never reach an artifact.
@torch.library.custom_op("gcnprune_export_test::scale", mutates_args=())
def _scale_op(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_scale_op.register_fake
def _(x):
    return torch.empty_like(x)


class _CustomOpModel(nn.Module):
    def forward(self, x):
        return torch.ops.gcnprune_export_test.scale(x) + 1


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_non_standard_ops_are_rejected(fmt, tmp_path):
    x = torch.randn(2, 3)
    path = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    with pytest.raises(E.NonStandardOpError, match="gcnprune_export_test"):
        E.export_model(_CustomOpModel(), path, x, fmt)
    assert not path.exists()


def test_exported_graph_holds_only_standard_ops(tmp_path):
    model, x = _model("resnet20", True)
    loaded = E.load_exported(E.export_model(model, tmp_path / "m.pt", x))
    namespaces = E.torchscript_op_namespaces(loaded)
    assert namespaces.get("aten", 0) > 0 and set(namespaces) <= {"aten", "prim"}


def test_fuse_bn_removes_batch_norm_and_matches(tmp_path):
    model, x = _model("resnet20", True)
    _, _, loaded = _roundtrip("resnet20", True, "torchscript", tmp_path, fuse_bn=True)
    kinds = {n.kind() for n in loaded.inlined_graph.nodes()}
    assert not any("batch_norm" in k for k in kinds), kinds
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original keeps BN


def test_optimized_torchscript_matches(tmp_path):
    _roundtrip("vgg16_bn", True, "torchscript", tmp_path, optimize=True)


def test_dynamic_batch_export(tmp_path):
    model, x = _model("simple_cnn", True)
    path = E.export_model(model, tmp_path / "m.pt2", x, "export", dynamic_batch=True)
    loaded = E.load_exported(path)
    x5 = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x5), model(x5), **TOL)


def test_export_artifacts_writes_each_format(tmp_path):
    model, x = _model("simple_cnn", True)
    paths = E.export_artifacts(model, tmp_path / "out", x, ["torchscript", "export"],
                               optimize=True)
    assert set(paths) == {"torchscript", "export"}
    for fmt, path in paths.items():
        assert path.parent == tmp_path / "out" and path.name == E.ARTIFACT_FILENAMES[fmt]
        assert E.detect_format(path) == fmt
    saved_input = torch.load(tmp_path / "out" / E.EXAMPLE_INPUT_FILENAME)
    assert torch.equal(saved_input, x)


def test_package_level_export_is_callable(tmp_path):
    import gcnprune_fast

    model, x = _model("simple_cnn", False)
    assert gcnprune_fast.export_model(model, tmp_path / "m.pt", x).exists()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(format="tflite"), ValueError, "format must be one of"),
    (dict(example_inputs="x"), TypeError, "example_inputs"),
    (dict(model="net"), TypeError, "model must be an nn.Module"),
    (dict(format="aoti", path="m.pt"), ValueError, r"\.pt2"),
    (dict(format="export", optimize=True), ValueError, "optimize"),
])
def test_bad_arguments(kwargs, error, match, tmp_path):
    args = dict(model=nn.Conv2d(3, 4, 1), path=tmp_path / "m.pt2", example_inputs=torch.randn(1, 3, 4, 4),
                format="export")
    args.update(kwargs)
    if isinstance(args["path"], str):
        args["path"] = tmp_path / args["path"]
    with pytest.raises(error, match=match):
        E.export_model(args.pop("model"), args.pop("path"), args.pop("example_inputs"), **args)


def test_onnx_without_packages_raises_import_error(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="onnxscript"):
        E.export_model(nn.Conv2d(3, 4, 1), tmp_path / "m.onnx", torch.randn(1, 3, 4, 4), "onnx")


def test_load_exported_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        E.load_exported(tmp_path / "nope.pt")
