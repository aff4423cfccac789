"""Search checkpoints: written atomically after every update, fingerprinted so that a checkpoint
is only ever resumed by the search that wrote it."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from gcnprune_fast.distributed import is_main

__all__ = ["SearchCheckpoint"]


class SearchCheckpoint:
    """``directory/filename`` holding ``{"fingerprint": ..., **state}``.

    The fingerprint is a dict of plain values (options, seed, group sizes, budget, ...) that
    describes the work; :meth:`load` refuses a checkpoint whose fingerprint differs and names the
    keys that differ. ``directory=None`` disables checkpointing (``save`` does nothing).
    """

    def __init__(self, directory: Optional[str], filename: str, fingerprint: Dict[str, Any]):
        self.fingerprint = fingerprint
        self.path = None if directory is None else os.path.join(directory, filename)
        if directory is not None:
            os.makedirs(directory, exist_ok=True)

    def load(self, resume: bool) -> Optional[Dict[str, Any]]:
        """The saved state when ``resume`` and a checkpoint exists, else None.

        Raises:
            ValueError: the checkpoint belongs to different work (fingerprint mismatch).
        """
        if not resume or self.path is None or not os.path.exists(self.path):
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        theirs = saved.get("fingerprint", {})
        if theirs != self.fingerprint:
            diff = sorted(k for k in set(theirs) | set(self.fingerprint)
                          if theirs.get(k) != self.fingerprint.get(k))
            raise ValueError(f"checkpoint {self.path} belongs to different work (differs in "
                             f"{diff}); use another checkpoint_dir or resume=False")
        return saved

    def save(self, **state: Any) -> None:
        """Write ``state`` with the fingerprint; a crash mid-write leaves the old file intact.
        Under torch.distributed only rank 0 writes (every rank holds the same state; all of
        them read the file on resume)."""
        if self.path is None or not is_main():
            return
        tmp = self.path + ".tmp"
        torch.save({"fingerprint": self.fingerprint, **state}, tmp)
        os.replace(tmp, self.path)
