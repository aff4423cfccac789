"""The committed reference checkpoints (benchmarks/models/): each loads strictly into the built-in
model it names, stays under the 3 MB limit, and is listed in the README with its hash."""
import hashlib
from pathlib import Path

import pytest
import torch

from gcnprune_fast.models import get_model

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
CHECKPOINTS = sorted(MODELS.glob("*.pt"))


def test_there_are_reference_checkpoints():
    assert CHECKPOINTS, f"no .pt files in {MODELS}"


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.name)
def test_reference_checkpoint_loads_and_is_documented(path):
    assert path.stat().st_size <= 3 * 2**20
    obj = torch.load(path, map_location="cpu", weights_only=True)
    model = get_model(obj["model_name"])
    model.load_state_dict(obj["model"], strict=True)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert 0.5 < obj["test_acc"] <= 1.0
    readme = (MODELS / "README.md").read_text()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert f"`{path.name}`" in readme and digest in readme
