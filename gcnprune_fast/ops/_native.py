"""Loads the compiled library ``gcnprune_fast._C`` (which registers ``torch.ops.gcnprune.*``).

The native library is optional at run time: when it is missing, or ``GCNPRUNE_NATIVE=0`` is set,
every public op in :mod:`gcnprune_fast.ops` runs its plain-PyTorch reference instead and a warning
is logged once.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("gcnprune_fast")

_LOADED: bool | None = None
_WITH_CUDA = False
_REASON = ""


def _load() -> bool:
    global _LOADED, _WITH_CUDA, _REASON
    if _LOADED is not None:
        return _LOADED
    if os.environ.get("GCNPRUNE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        _LOADED, _REASON = False, "disabled by GCNPRUNE_NATIVE=0"
    else:
        try:
            from gcnprune_fast import _C  # noqa: F401  (registers the ops)

            _WITH_CUDA = bool(getattr(_C, "WITH_CUDA", 0))
            _LOADED = True
        except ImportError as exc:  # not built, or built against another torch
            _LOADED, _REASON = False, f"could not import gcnprune_fast._C ({exc})"
    if not _LOADED:
        logger.warning("gcnprune_fast: native kernels unavailable, %s; using the plain-PyTorch "
                       "reference ops (slower). Build with `pip install -e . --no-build-isolation`.",
                       _REASON)
    return _LOADED


def native_available() -> bool:
    """True when the compiled ops are loaded (and not disabled by ``GCNPRUNE_NATIVE=0``)."""
    return _load()


def native_cuda_available() -> bool:
    """True when the compiled library has CUDA kernels and a CUDA device is visible."""
    return _load() and _WITH_CUDA and torch.cuda.is_available()


def use_native(*tensors: torch.Tensor) -> bool:
    """Whether an op on these tensors should go to the native kernels."""
    if not _load():
        return False
    for t in tensors:
        if t is not None and t.is_cuda and not _WITH_CUDA:
            return False
    return True
