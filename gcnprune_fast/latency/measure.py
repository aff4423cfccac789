"""Timing on the target: layer timings for the latency table and end-to-end model timings.

Everything here goes through a *timer*, ``timer(run, spec) -> seconds``: ``run()`` executes the
work once, ``spec`` describes it (a dict; ``spec["what"]`` is ``"layer"`` or ``"model"``, and
``spec["macs"]`` its multiply-accumulates for the whole batch). The default timer
(:class:`Timer`) runs warm-up calls, then ``repeats`` timed rounds and returns the median time per
call; tests inject a fake timer (a pure function of ``spec``) so no timing reaches an assertion.

Clocks: ``"cpu"`` (the calling thread's CPU time; with one intra-op thread that is the compute
time, and it stays meaningful on a loaded, shared machine), ``"wall"`` (``perf_counter``),
``"cuda"`` (CUDA events around the calls, then a synchronize). ``"auto"``: cuda on a GPU, cpu
time with one thread, wall clock otherwise.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["Timer", "TimerFn", "device_name", "resolve_threads", "threads_context", "time_model",
           "time_models_alternating", "timing_spread",
           "runner_path", "CLOCKS"]

TimerFn = Callable[[Callable[[], Any], Dict[str, Any]], float]
CLOCKS = ("auto", "cpu", "wall", "cuda")
ROOT = Path(__file__).resolve().parents[2]


def device_name(device: torch.device) -> str:
    """A readable name of the device that keys the cache (CPU model name / GPU name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            name = m.group(1).strip()
    except OSError:
        pass
    return f"{device.type}:{name}"


def resolve_threads(threads: Optional[int]) -> int:
    """``threads`` or torch's current intra-op thread count."""
    if threads is None:
        return int(torch.get_num_threads())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"latency_threads must be None or an int >= 1, got {threads!r}")
    return threads


@contextlib.contextmanager
def threads_context(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside, restored on exit."""
    old = torch.get_num_threads()
    if threads != old:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


class Timer:
    """The default timer: median seconds per call of ``run`` after warm-up.

    Args:
        device: where the work runs (``cuda`` uses CUDA events).
        clock: one of ``CLOCKS``.
        threads: intra-op threads (decides ``clock="auto"`` on the CPU).
        warmup: untimed calls first.
        repeats: timed rounds; the median round is returned.
        min_round_s: each round repeats the call until it lasts at least this long (sub-ms layers).
    """

    def __init__(self, device="cpu", clock: str = "auto", threads: int = 1, warmup: int = 3,
                 repeats: int = 7, min_round_s: float = 2e-3):
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}")
        self.device = torch.device(device)
        if clock == "auto":
            clock = "cuda" if self.device.type == "cuda" else ("cpu" if threads == 1 else "wall")
        if clock == "cuda" and self.device.type != "cuda":
            raise ValueError("clock='cuda' needs a CUDA device")
        self.clock, self.warmup, self.repeats, self.min_round_s = clock, warmup, repeats, min_round_s

    def _now(self) -> float:
        return time.thread_time() if self.clock == "cpu" else time.perf_counter()

    def __call__(self, run: Callable[[], Any], spec: Dict[str, Any]) -> float:
        with torch.inference_mode():
            for _ in range(self.warmup):
                run()
            if self.clock == "cuda":
                return self._cuda(run)
            # calibrate the calls per round on one call
            t0 = self._now()
            run()
            one = max(self._now() - t0, 1e-7)
            number = max(1, min(1000, int(self.min_round_s / one)))
            times = []
            for _ in range(self.repeats):
                t0 = self._now()
                for _ in range(number):
                    run()
                times.append((self._now() - t0) / number)
        return float(statistics.median(times))

    def _cuda(self, run: Callable[[], Any]) -> float:  # pragma: no cover - needs a GPU
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize(self.device)
        one = max(start.elapsed_time(end) / 1e3, 1e-7)
        number = max(1, min(1000, int(self.min_round_s / one)))
        times = []
        for _ in range(self.repeats):
            start.record()
            for _ in range(number):
                run()
            end.record()
            torch.cuda.synchronize(self.device)
            times.append(start.elapsed_time(end) / 1e3 / number)
        return float(statistics.median(times))


def runner_path() -> Optional[Path]:
    """``gcnprune_run`` (``$GCNPRUNE_RUN_BINARY`` or ``build-cmake/gcnprune_run``) if built."""
    p = Path(os.environ.get("GCNPRUNE_RUN_BINARY", ROOT / "build-cmake" / "gcnprune_run"))
    return p if p.is_file() and os.access(p, os.X_OK) else None


_RUNNER_WALL = re.compile(r"^latency_ms median (\S+)", re.M)
_RUNNER_CPU = re.compile(r"^cpu_ms median (\S+)", re.M)


def _deployable(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """The model as it is deployed: eval copy, BN folded, TorchScript, frozen."""
    from gcnprune_fast.export import _prepare_copy, _to_torchscript
    return _to_torchscript(_prepare_copy(model, fuse_bn=True), (example,), optimize=True)


def time_model(model: nn.Module, example: torch.Tensor, *, timer: TimerFn, threads: int,
               runtime: str = "auto", macs: Optional[float] = None,
               iters: int = 50, warmup: int = 10, rounds: int = 3) -> Tuple[float, str]:
    """End-to-end seconds per forward of ``model`` on ``example`` ([batch, ...] on the target
    device) deployed as the export does it (BN folded, TorchScript, frozen), and how it was timed:

    - ``"gcnprune_run"``: the C++ runner in a fresh process (CPU, when built and the timer is the
      default :class:`Timer`); its median CPU time per iteration with ``clock='cpu'``, else its
      median wall-clock latency; the best of ``rounds`` runs (background load only slows);
    - ``"torch"``: in-process with ``timer`` (the injected timer in tests, or when the runner is
      not built / the device is a GPU).

    ``runtime``: ``"auto"`` (the runner when possible), ``"runner"`` or ``"torch"``."""
    if runtime not in ("auto", "runner", "torch"):
        raise ValueError(f"runtime must be 'auto', 'runner' or 'torch', got {runtime!r}")
    spec = {"what": "model", "shape": list(example.shape), "macs": macs}
    binary = runner_path()
    use_runner = (runtime == "runner" or (runtime == "auto" and isinstance(timer, Timer))) \
        and example.device.type == "cpu"
    if runtime == "runner" and binary is None:
        raise RuntimeError("runtime='runner' but gcnprune_run is not built (bash scripts/build_cpp.sh)")
    with threads_context(threads):
        scripted = _deployable(model, example)
        if use_runner and binary is not None:
            best = None
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.ts.pt"
                scripted.save(str(path))
                cmd = [str(binary), str(path), "--shape", ",".join(map(str, example.shape)),
                       "--iters", str(iters), "--warmup", str(warmup), "--threads", str(threads)]
                use_cpu = isinstance(timer, Timer) and timer.clock == "cpu"
                for _ in range(rounds):
                    proc = subprocess.run(cmd, capture_output=True, text=True,
                                          env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
                    m = (_RUNNER_CPU if use_cpu else _RUNNER_WALL).search(proc.stdout) \
                        if proc.returncode == 0 else None
                    if m is None:
                        break
                    v = float(m.group(1)) / 1e3
                    best = v if best is None else min(best, v)
            if best is not None:
                return best, "gcnprune_run"
        with torch.inference_mode():
            seconds = timer(lambda: scripted(example), spec)
    return float(seconds), "torch"


def time_models_alternating(models: Dict[str, nn.Module], example: torch.Tensor, *,
                            timer: TimerFn, threads: int, rounds: int, runtime: str = "auto",
                            macs: Optional[Dict[str, float]] = None, runner_rounds: int = 1,
                            samples: Optional[Dict[str, list]] = None
                            ) -> Dict[str, Tuple[float, str]]:
    """``{name: (seconds, timed_by)}``: every model timed by :func:`time_model` (``runner_rounds``
    runs of the runner per call) once per round, the models in turn, for ``rounds`` rounds; the
    best of each. Alternating means a slow spell of a shared machine hits every model alike.
    ``samples``: if given, every round's time of model ``name`` is appended to
    ``samples[name]`` (see :func:`timing_spread`)."""
    best: Dict[str, Tuple[float, str]] = {}
    for _ in range(rounds):
        for name, net in models.items():
            t, how = time_model(net, example, timer=timer, threads=threads, runtime=runtime,
                                macs=None if macs is None else macs.get(name),
                                rounds=runner_rounds)
            if samples is not None:
                samples.setdefault(name, []).append(float(t))
            if name not in best or t < best[name][0]:
                best[name] = (t, how)
    return best


def timing_spread(times) -> float:
    """How much repeated timings of one thing disagree: median / best - 1 (0 for one timing).
    On an idle machine a few percent; a busy or noisy one (other tenants of the host) gives tens
    of percent, and the best-of timings it yields are not to be trusted."""
    times = [float(t) for t in times]
    if not times or min(times) <= 0:
        return 0.0
    return statistics.median(times) / min(times) - 1.0
