"""The C++ runtime path: build `gcnprune_run` with CMake (scripts/build_cpp.sh, against the pip
torch), run exported models with it and check that the output tensor it writes
(``--save-output``) equals Python's element by element (a checksum alone would pass a permuted
output), plus its printed shape and checksum lines.

Skips cleanly when cmake or a C++ compiler is missing; with both present (as in CI) a failing
build is a test failure. Set GCNPRUNE_RUN_BINARY to test a prebuilt binary instead."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gcnprune_fast.export as E
from gcnprune_fast.models import get_model

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = ROOT / "build-cmake"
SOURCES = [ROOT / "CMakeLists.txt", ROOT / "csrc" / "tools" / "gcnprune_run.cpp",
           ROOT / "cmake" / "GcnpruneFindTorch.cmake"]

CHECKSUM = re.compile(r"^checksum (\d+) sum (\S+) abs_sum (\S+)$", re.M)
OUTPUT = re.compile(r"^output (\d+) shape \[([\d, ]*)\] dtype (\w+)$", re.M)
LATENCY = re.compile(r"^latency_ms median (\S+) p90 (\S+) mean (\S+) min (\S+) iters (\d+)", re.M)


def _compiler_available() -> bool:
    cxx = os.environ.get("CXX")
    return any(shutil.which(c) for c in ([cxx] if cxx else []) + ["c++", "g++", "clang++"])


@pytest.fixture(scope="module")
def runner() -> Path:
    prebuilt = os.environ.get("GCNPRUNE_RUN_BINARY")
    if prebuilt:
        return Path(prebuilt)
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not _compiler_available():
        pytest.skip("no C++ compiler (c++, g++ or clang++) found")
    binary = BUILD_DIR / "gcnprune_run"
    fresh = binary.exists() and all(binary.stat().st_mtime >= s.stat().st_mtime for s in SOURCES)
    if not fresh:
        env = dict(os.environ, TARGETS="gcnprune_run", PYTHON=sys.executable)
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_cpp.sh")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, (
            f"scripts/build_cpp.sh failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}")
    assert binary.exists(), f"{binary} was not built"
    if not fresh:
        binary.touch()  # ninja keeps an unchanged binary's old mtime; mark it checked
    return binary


def _run(binary: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert proc.returncode == 0, f"gcnprune_run {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _checksums(stdout: str):
    return {int(i): (float(s), float(a)) for i, s, a in CHECKSUM.findall(stdout)}


def _expected(out: torch.Tensor):
    out = out.detach().double()
    return float(out.sum()), float(out.abs().sum())


def _run_and_compare(binary: Path, tmp_path: Path, expected: torch.Tensor, *args: str):
    """Run the model, read the output tensor the runner wrote and compare it with ``expected``
    element by element; also check the printed shape and checksum lines."""
    out_file = tmp_path / "runner_output.pt"
    proc = _run(binary, *args, "--save-output", str(out_file))
    assert f"saved outputs {out_file}" in proc.stdout
    outputs = torch.load(out_file, weights_only=True)
    assert isinstance(outputs, tuple) and len(outputs) == 1, outputs
    # Same libtorch kernels; only thread scheduling differs: float32 rounding at most.
    torch.testing.assert_close(outputs[0], expected.detach(), rtol=1e-4, atol=1e-5)
    _assert_checksum_matches(proc.stdout, expected)
    return proc


def _assert_checksum_matches(stdout: str, out: torch.Tensor):
    got = _checksums(stdout)
    assert list(got) == [0], stdout
    total, abs_total = _expected(out)
    # Same libtorch kernels; only thread scheduling differs: float32 rounding at most.
    assert got[0][0] == pytest.approx(total, rel=1e-4, abs=1e-4 * max(abs_total, 1.0))
    assert got[0][1] == pytest.approx(abs_total, rel=1e-4)
    shapes = OUTPUT.findall(stdout)
    assert shapes == [("0", ", ".join(map(str, out.shape)), "Float")], stdout


def _pruned_or_full(name: str, x: torch.Tensor):
    torch.manual_seed(0)
    model = get_model(name).eval()
    try:
        from gcnprune_fast.space import PruningSpace
    except ImportError:
        return model
    space = PruningSpace(model, x)
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(gr.size, generator=g) < 0.5 for gr in space.groups]
    for i, m in enumerate(masks):
        if int(m.sum()) < space.min_keep(i):
            m[: space.min_keep(i)] = True
    return space.prune(space.round_masks(masks)).eval()


@pytest.mark.parametrize("name", ["resnet20"])
def test_runner_matches_python_on_saved_input(runner, name, tmp_path):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    model = _pruned_or_full(name, x)
    paths = E.export_artifacts(model, tmp_path, x, ["torchscript"])
    with torch.no_grad():
        expected = model(x)
    proc = _run_and_compare(runner, tmp_path, expected, str(paths["torchscript"]), "--input",
                            str(tmp_path / E.EXAMPLE_INPUT_FILENAME), "--iters", "3", "--warmup",
                            "1", "--threads", "1")
    median, p90, mean, low, iters = LATENCY.search(proc.stdout).groups()
    assert int(iters) == 3 and 0 < float(low) <= float(median) <= float(p90)


def test_runner_seeded_random_input_matches_torch_randn(runner, tmp_path):
    """Without --input the runner draws torch.randn(shape) after torch.manual_seed(seed)."""
    torch.manual_seed(0)
    model = get_model("simple_cnn").eval()
    path = E.export_model(model, tmp_path / "m.pt", torch.randn(2, 3, 16, 16))
    torch.manual_seed(5)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    proc = _run_and_compare(runner, tmp_path, expected, str(path), "--shape", "2,3,16,16",
                            "--seed", "5", "--iters", "1", "--warmup", "0", "--optimize")
    assert "input shape [2, 3, 16, 16]" in proc.stdout


def test_runner_rejects_bad_arguments(runner, tmp_path):
    proc = _run(runner, "model.pt", "--iters", "many", check=False)
    assert proc.returncode == 2 and "--iters expects an integer" in proc.stderr
    proc = _run(runner, str(tmp_path / "missing.pt"), "--iters", "1", check=False)
    assert proc.returncode == 1 and "error" in proc.stderr
    proc = _run(runner, "model.pt", "--save-output", check=False)
    assert proc.returncode == 2 and "--save-output needs a value" in proc.stderr


def test_output_comparison_catches_a_permuted_output(runner, tmp_path):
    """The check this file relies on: a model whose output is a permutation of the expected one
    has the same checksums but fails the element-wise comparison."""
    torch.manual_seed(0)
    model = get_model("simple_cnn").eval()
    x = torch.randn(2, 3, 16, 16)
    path = E.export_model(model, tmp_path / "m.pt", x)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x)
    permuted = expected.flip(-1)
    _assert_checksum_matches(_run(runner, str(path), "--input", str(tmp_path / "x.pt"),
                                  "--iters", "0", "--warmup", "0").stdout, permuted)
    with pytest.raises(AssertionError):
        _run_and_compare(runner, tmp_path, permuted, str(path), "--input", str(tmp_path / "x.pt"),
                         "--iters", "0", "--warmup", "0")


@pytest.mark.slow
def test_runner_runs_aoti_package(runner, tmp_path):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model = _pruned_or_full("simple_cnn", x)
    paths = E.export_artifacts(model, tmp_path, x, ["aoti"])
    with torch.no_grad():
        expected = model(x)
    proc = _run(runner, str(paths["aoti"]), "--input", str(tmp_path / E.EXAMPLE_INPUT_FILENAME),
                "--iters", "0", "--warmup", "0", check=False)
    if "no AOTInductor package loader" in proc.stderr:
        pytest.skip("this libtorch has no AOTInductor loader")
    proc = _run_and_compare(runner, tmp_path, expected, str(paths["aoti"]), "--input",
                            str(tmp_path / E.EXAMPLE_INPUT_FILENAME), "--iters", "2", "--warmup", "1")
    assert "format aoti" in proc.stdout
