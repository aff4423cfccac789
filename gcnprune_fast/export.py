"""Export (compact, pruned) models for deployment: TorchScript, torch.export, AOTInductor, ONNX.

The exported graphs hold only standard ops (``aten::`` / ``prim::`` in TorchScript, ``aten`` in
torch.export programs, the default ONNX domain), never the project's own ``gcnprune::`` operators,
so a plain libtorch (``csrc/tools/gcnprune_run.cpp``), ``torch.export.load``, AOTInductor or
onnxruntime loads them without gcnprune installed. Every export is checked for that and raises
:class:`NonStandardOpError` otherwise.

Formats and files:

===============  ==================================================  ===============================
format           how                                                 load with
===============  ==================================================  ===============================
``torchscript``  ``torch.jit.script`` (``torch.jit.trace`` fallback)  ``torch.jit.load`` / C++
                                                                      ``torch::jit::load``, gcnprune_run
``export``       ``torch.export.export`` + ``torch.export.save``      ``torch.export.load``
``aoti``         ``torch._inductor.aoti_compile_and_package``         ``torch._inductor.aoti_load_package``,
                 (compiles C++: slow, seconds to minutes)             C++ ``AOTIModelPackageLoader``, gcnprune_run
``onnx``         ``torch.onnx.export(..., dynamo=True)``              onnxruntime
===============  ==================================================  ===============================

The user's model is never modified: export works on an eval-mode deep copy.

CPU deployment of pruned models (``benchmarks/bench_latency.py``): export TorchScript with
``optimize=True`` (frozen, BatchNorm folded into the convs) and prune with
``PruningSpace(..., round_to=8)``; channel counts that are not multiples of the SIMD width (8
floats with AVX2) cost ResNet-56 about 15-20 points of the ideal FLOPs speed-up.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

FORMATS: Tuple[str, ...] = ("torchscript", "export", "aoti", "onnx")
# File names written by export_artifacts (export and aoti both make .pt2 files).
ARTIFACT_FILENAMES: Dict[str, str] = {
    "torchscript": "model.ts.pt",
    "export": "model.export.pt2",
    "aoti": "model.aoti.pt2",
    "onnx": "model.onnx",
}
EXAMPLE_INPUT_FILENAME = "example_input.pt"

# Namespaces of TorchScript node kinds / torch.export operator overloads that plain runtimes know.
_STANDARD_TS_NAMESPACES = frozenset({"aten", "prim"})
_STANDARD_EXPORT_NAMESPACES = frozenset({"aten"})
_STANDARD_ONNX_DOMAINS = frozenset({"", "ai.onnx"})

PathLike = Union[str, os.PathLike]
ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor]]


class NonStandardOpError(ValueError):
    """An exported graph holds operators a plain runtime does not know (e.g. ``gcnprune::``)."""


@contextlib.contextmanager
def _quiet_torch_jit():
    """Hides torch.jit's per-call deprecation FutureWarning ("`torch.jit.script` is deprecated...")
    around our own calls; other warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=FutureWarning,
            message=r"`torch\.jit\.\w+` is (deprecated|not supported)")
        # Scripting a torch.fx GraphModule (fuse_bn=True) trips over fx's own attributes.
        warnings.filterwarnings(
            "ignore", category=UserWarning,
            message="The TorchScript type system doesn't support instance-level annotations")
        yield


def _normalize_inputs(example_inputs: ExampleInputs) -> Tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a non-empty tuple/list of tensors, got "
        f"{type(example_inputs).__name__}")


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    return format


def _prepare_copy(model: nn.Module, fuse_bn: bool) -> nn.Module:
    """Eval-mode deep copy of ``model`` (optionally with BatchNorm folded into the preceding conv)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model_copy = copy.deepcopy(model).eval()
    if fuse_bn:
        model_copy = fuse_conv_bn(model_copy)
    return model_copy


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Folds every eval-mode ``BatchNorm{1,2,3}d`` that directly follows a ``Conv{1,2,3}d`` (its only
    consumer) into the conv's weight and bias, using ``torch.fx``.

    Returns a new ``torch.fx.GraphModule`` computing the same function (up to float rounding) with
    fewer kernels and memory passes. If the model cannot be symbolically traced, it is returned
    unchanged and a message is logged.
    """
    from torch.fx.experimental.optimization import fuse

    if model.training:
        raise ValueError("fuse_conv_bn needs an eval-mode model (BatchNorm statistics are folded)")
    try:
        return fuse(model, inplace=False)
    except Exception as exc:  # noqa: BLE001 - fx tracing fails in many ways on dynamic code
        logger.warning("gcnprune export: cannot fold BatchNorm into convs (torch.fx tracing failed: "
                       "%s); exporting unfused", exc)
        return model


# ---------------------------------------------------------------------------------------------
# Op checks


def torchscript_op_namespaces(module: torch.jit.ScriptModule) -> Dict[str, int]:
    """Namespace -> node count of every node in the module's inlined forward graph, recursively
    through blocks (``aten``, ``prim``, ...)."""
    counts: Dict[str, int] = {}

    def visit(block):
        for node in block.nodes():
            ns = node.kind().split("::", 1)[0]
            counts[ns] = counts.get(ns, 0) + 1
            for sub in node.blocks():
                visit(sub)

    visit(module.inlined_graph)
    return counts


def _check_torchscript_ops(module: torch.jit.ScriptModule) -> None:
    bad = []

    def visit(block):
        for node in block.nodes():
            if node.kind().split("::", 1)[0] not in _STANDARD_TS_NAMESPACES:
                bad.append(node.kind())
            for sub in node.blocks():
                visit(sub)

    visit(module.inlined_graph)
    if bad:
        raise NonStandardOpError(
            f"TorchScript graph holds non-standard operators {sorted(set(bad))}; plain libtorch "
            "cannot run them. Export the compact model from space.prune(masks), not a model that "
            "calls gcnprune ops in forward()")


def _check_exported_program_ops(program: "torch.export.ExportedProgram") -> None:
    bad = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            if target.namespace not in _STANDARD_EXPORT_NAMESPACES:
                bad.append(str(target))
        elif isinstance(target, torch._ops.HigherOrderOperator):
            bad.append(str(target))
        # Plain Python callables (operator.getitem) are graph plumbing, not operators.
    if bad:
        raise NonStandardOpError(
            f"exported program holds non-aten operators {sorted(set(bad))}; plain runtimes cannot "
            "run them. Export the compact model from space.prune(masks)")


def _check_onnx_ops(path: Path) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    domains = {node.domain for node in proto.graph.node}
    for function in proto.functions:
        domains |= {node.domain for node in function.node}
    local_functions = {f.domain for f in proto.functions}
    bad = sorted(d for d in domains - _STANDARD_ONNX_DOMAINS - local_functions)
    if bad:
        raise NonStandardOpError(f"ONNX graph {path} uses non-standard operator domains {bad}")


# ---------------------------------------------------------------------------------------------
# Exporters


def _to_torchscript(model: nn.Module, inputs: Tuple[torch.Tensor, ...], optimize: bool,
                    ) -> torch.jit.ScriptModule:
    with _quiet_torch_jit():
        try:
            scripted = torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - scripting fails with many error types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning(
                "gcnprune export: torch.jit.script failed (%s); falling back to torch.jit.trace "
                "with the example inputs (Python control flow is frozen to the traced path)",
                first_line)
            with torch.no_grad():
                scripted = torch.jit.trace(model, inputs, check_trace=False)
        if optimize:
            # Freezing inlines the weights as constants and folds conv+bn / conv+mul/add.
            # (torch.jit.optimize_for_inference goes further, but its MKLDNN-prepacked result
            # cannot be saved: apply it after loading, e.g. gcnprune_run --optimize.)
            scripted = torch.jit.freeze(scripted)
    return scripted


def _dynamic_batch_shapes(inputs: Tuple[torch.Tensor, ...]):
    return tuple({0: torch.export.Dim.DYNAMIC} if t.dim() > 0 else None for t in inputs)


def _to_exported_program(model: nn.Module, inputs: Tuple[torch.Tensor, ...], dynamic_batch: bool,
                         ) -> "torch.export.ExportedProgram":
    dynamic_shapes = _dynamic_batch_shapes(inputs) if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
    # Kept at the export IR (aten ops such as aten.batch_norm in eval form): loaders, Inductor
    # and the ONNX exporter decompose further as they need; doing it here costs seconds.
    _check_exported_program_ops(program)
    return program


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"format='onnx' needs the packages {missing}: pip install onnx onnxscript "
            "(and onnxruntime to run the result), or pip install 'gcnprune_fast[export]'")


def export_model(model: nn.Module, path: PathLike, example_inputs: ExampleInputs,
                 format: str = "torchscript", *, fuse_bn: bool = False, optimize: bool = False,
           dynamic_batch: bool = False) -> Path:
    """Exports ``model`` for deployment and returns the written file's path.

    Args:
        model: the (compact) model; left untouched (an eval-mode deep copy is exported).
        path: output file; parent folders are created. ``aoti`` needs a ``.pt2`` suffix.
        example_inputs: a tensor (e.g. ``[N, 3, 32, 32]``) or tuple of tensors on the model's
            device; they fix the traced shapes (only the batch size may vary with
            ``dynamic_batch``).
        format: ``"torchscript"``, ``"export"`` (torch.export ``.pt2``), ``"aoti"``
            (AOTInductor package, compiled for the example inputs' device) or ``"onnx"``.
        fuse_bn: fold eval-mode BatchNorm into the preceding convolution first (torch.fx); the
            result matches the unfused model up to float rounding and runs faster.
        optimize: TorchScript only: ``torch.jit.freeze`` (weights become constants, conv+bn
            folded). ``torch.jit.optimize_for_inference`` is a load-time step (its result cannot
            be saved): ``gcnprune_run --optimize`` applies it.
        dynamic_batch: ``export``/``aoti``/``onnx``: let dimension 0 of the inputs vary.

    Raises:
        TypeError / ValueError on bad arguments; NonStandardOpError when the graph would hold
        non-standard (e.g. ``gcnprune::``) operators; ImportError for ``onnx`` without onnx /
        onnxscript.
    """
    _check_format(format)
    inputs = _normalize_inputs(example_inputs)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if format == "aoti" and path.suffix != ".pt2":
        raise ValueError(f"format='aoti' writes a .pt2 package; path must end with .pt2, got {path}")
    if optimize and format != "torchscript":
        raise ValueError("optimize=True applies to format='torchscript' only")
    if format == "onnx":
        _require_onnx()
    model_copy = _prepare_copy(model, fuse_bn)
    path.parent.mkdir(parents=True, exist_ok=True)

    if format == "torchscript":
        scripted = _to_torchscript(model_copy, inputs, optimize)
        _check_torchscript_ops(scripted)
        with _quiet_torch_jit():
            torch.jit.save(scripted, str(path))
        return path

    program = _to_exported_program(model_copy, inputs, dynamic_batch)
    if format == "export":
        torch.export.save(program, str(path))
    elif format == "aoti":
        from torch._inductor import aoti_compile_and_package

        if path.exists():
            path.unlink()  # the packager appends to an existing archive
        written = aoti_compile_and_package(program, package_path=str(path))
        path = Path(written)
    else:  # onnx
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # chatter
            torch.onnx.export(program, inputs, str(path), dynamo=True, external_data=False,
                              verbose=False)
        _check_onnx_ops(path)
    return path


def export_artifacts(model: nn.Module, out_dir: PathLike, example_inputs: ExampleInputs,
                     formats: Iterable[str] = ("torchscript",), *, save_example_input: bool = True,
                     **options) -> Dict[str, Path]:
    """Exports ``model`` in each of ``formats`` into ``out_dir`` (file names in
    ``ARTIFACT_FILENAMES``) and returns ``{format: path}``.

    With ``save_example_input`` the first example input is also written to
    ``out_dir/example_input.pt`` (``torch.save``), which ``gcnprune_run MODEL --input FILE``
    reads. ``options`` go to :func:`export_model` (``fuse_bn``, ``dynamic_batch``; ``optimize`` only
    applies to torchscript and is dropped for the other formats).
    """
    if isinstance(formats, str):
        formats = (formats,)
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        _check_format(fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = _normalize_inputs(example_inputs)
    written: Dict[str, Path] = {}
    for fmt in formats:
        fmt_options = dict(options)
        if fmt != "torchscript":
            fmt_options.pop("optimize", None)
        if fmt not in ("export", "aoti", "onnx"):
            fmt_options.pop("dynamic_batch", None)
        written[fmt] = export_model(model, out_dir / ARTIFACT_FILENAMES[fmt], inputs, fmt, **fmt_options)
    if save_example_input and formats:
        torch.save(inputs[0].detach().cpu().contiguous(), out_dir / EXAMPLE_INPUT_FILENAME)
    return written


# ---------------------------------------------------------------------------------------------
# Loading


class OnnxRuntimeModule:
    """Callable wrapper of an onnxruntime session: tensors in, tensor (or tuple of tensors) out."""

    def __init__(self, path: PathLike, providers: Optional[Sequence[str]] = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("loading ONNX models needs onnxruntime: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"ONNX model takes {len(self.input_names)} inputs, got {len(inputs)}")
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def detect_format(path: PathLike) -> str:
    """Guesses an artifact's format from its contents: AOTInductor packages hold compiled
    ``aotinductor`` members, TorchScript archives a ``constants.pkl``, other zip archives are
    torch.export programs; a non-zip file is ONNX."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return "onnx"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("aotinductor" in name for name in names):
        return "aoti"
    if any(name.endswith("constants.pkl") for name in names):
        return "torchscript"
    return "export"


def load_exported(path: PathLike, format: Optional[str] = None) -> Callable[..., object]:
    """Loads an artifact written by :func:`export_model` as a callable taking the example inputs'
    tensors (for round-trip checks and Python serving). ``format`` defaults to
    :func:`detect_format`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no exported model at {path}")
    format = _check_format(format if format is not None else detect_format(path))
    if format == "torchscript":
        with _quiet_torch_jit():
            return torch.jit.load(str(path), map_location="cpu")
    if format == "export":
        return torch.export.load(str(path)).module()
    if format == "aoti":
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(path))
    return OnnxRuntimeModule(path)


__all__ = [
    "FORMATS", "ARTIFACT_FILENAMES", "EXAMPLE_INPUT_FILENAME", "NonStandardOpError", "export_model",
    "export_artifacts", "load_exported", "detect_format", "fuse_conv_bn", "OnnxRuntimeModule",
    "torchscript_op_namespaces",
]
