"""The method registry: options parsing, what prune()/the CLI read from it, the docs' example
method, and that no method name is spelled out outside its own module."""
import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import gcnprune_fast
from gcnprune_fast.cli import build_parser, main
from gcnprune_fast.methods import Budget, get_method, method_names, register_method
from gcnprune_fast.methods.allocation import (action_wall, counts_from_ratios, fit_ratios_to_budget,
                                              grow_counts_to_budget, masks_from_counts,
                                              uniform_counts)
from gcnprune_fast.methods.registry import option, unregister_method
from helpers import random_batches, simple_cnn_space

REPO = Path(__file__).resolve().parents[1]


@dataclass
class _Opts:
    steps: int = option(3, "steps", minimum=1)
    rate: float = option(0.5, "a rate", minimum=0.0)
    mode: str = option("a", "a mode", choices=("a", "b"))
    flag: bool = option(False, "a flag")


@pytest.fixture
def toy_method():
    @register_method("toy-test", options=_Opts, summary="toy")
    def run(ctx):
        raise AssertionError("not called")
    yield get_method("toy-test")
    unregister_method("toy-test")


def test_parse_options_converts_and_validates(toy_method):
    o = toy_method.parse_options({"steps": "7", "rate": "2", "mode": "b", "flag": "yes"})
    assert (o.steps, o.rate, o.mode, o.flag) == (7, 2.0, "b", True)
    assert toy_method.parse_options({"rate": 1}).rate == 1.0  # ints accepted for floats
    with pytest.raises(TypeError, match="unknown option.*stpes.*toy-test"):
        toy_method.parse_options({"stpes": 1})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        toy_method.parse_options({"steps": 0})
    with pytest.raises(ValueError, match="expects an integer"):
        toy_method.parse_options({"steps": "many"})
    with pytest.raises(TypeError, match="steps must be int"):
        toy_method.parse_options({"steps": 2.5})
    with pytest.raises(TypeError, match="flag must be bool"):
        toy_method.parse_options({"flag": 1})
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\]"):
        toy_method.parse_options({"mode": "c"})


def test_duplicate_name_and_second_default_are_refused(toy_method):
    with pytest.raises(ValueError, match="already registered"):
        register_method("toy-test")(lambda ctx: None)
    with pytest.raises(ValueError, match="already the default"):
        register_method("toy-default", is_default=True)(lambda ctx: None)
    assert "toy-default" not in method_names()


def test_cli_reads_the_registry(toy_method, capsys):
    parser = build_parser()
    args = parser.parse_args(["prune", "--model", "simple_cnn", "--dataset", "synthetic",
                              "--checkpoint", "x.pt", "--method", "toy-test", "--out", "o"])
    assert args.method == "toy-test"
    assert main(["methods", "toy-test"]) == 0
    out = capsys.readouterr().out
    assert "toy-test: toy" in out and "steps=3" in out and "one of a, b" in out


def test_bad_option_fails_before_any_work(toy_method):
    # prune() validates options before touching the model or the loader.
    class Exploding:
        def __iter__(self):
            raise AssertionError("the loader was read")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        gcnprune_fast.prune(torch.nn.Conv2d(3, 4, 3), Exploding(), method="toy-test", flops=0.5,
                            steps=0)


def test_resume_with_nothing_to_resume_is_refused(tmp_path):
    space_model = simple_cnn_space().model
    non_resumable = [n for n in method_names() if not get_method(n).supports_resume]
    with pytest.raises(ValueError, match="nothing to resume"):
        gcnprune_fast.prune(space_model, random_batches(), method=non_resumable[0], flops=0.5,
                            resume=True, checkpoint_dir=str(tmp_path), finetune_epochs=1)


def _doc_example() -> str:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    blocks = re.findall(r"```python example-method\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/ARCHITECTURE.md must hold one ```python example-method block"
    return blocks[0]


def test_docs_example_method_registers_and_prunes():
    code = _doc_example()
    assert len(code.strip().splitlines()) <= 35
    exec(compile(code, "ARCHITECTURE.md example", "exec"), {"__name__": "docs_example"})
    try:
        spec = get_method("depth-taper")
        assert not spec.needs_data
        with pytest.raises(ValueError, match="taper"):
            spec.parse_options({"taper": -1.0})
        space = simple_cnn_space()
        res = gcnprune_fast.prune(space.model, random_batches(), method="depth-taper", flops=0.5,
                                  progress=False, taper=0.2)
        assert res.report["flops_ratio"] <= 0.5 + 1e-9
        kept = [w["after"] / w["before"] for w in res.report["widths"]]
        assert kept[-1] < kept[0]  # deeper groups keep a smaller share
    finally:
        unregister_method("depth-taper")


def _method_literals(path: Path, names):
    """(line, name) of string constants equal to a method name, skipping docstrings and string
    keys of dicts / subscripts (e.g. the weight statistic "l1")."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
        if isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names
            and id(n) not in skip]


def test_no_method_name_literal_outside_its_module():
    names = set(method_names())
    owners = {get_method(n).run.__module__ for n in names} | {"gcnprune_fast.methods.registry"}
    files = list((REPO / "gcnprune_fast").rglob("*.py")) + list((REPO / "benchmarks").glob("*.py"))
    found = []
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module in owners:
            continue
        found += [f"{path.relative_to(REPO)}:{line}: {name!r}"
                  for line, name in _method_literals(path, names)]
    assert not found, "method names spelled out outside their module:\n" + "\n".join(found)


def test_allocation_from_ratios():
    space = simple_cnn_space()
    budget = Budget.from_ratios(space, flops=0.5)
    counts = counts_from_ratios(space, [1.0] * space.num_groups)
    assert counts == [g.size for g in space.groups]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        counts_from_ratios(space, [1.5] * space.num_groups)
    for ratios in ([1.0] * space.num_groups, torch.linspace(1, 0.2, space.num_groups)):
        fitted = fit_ratios_to_budget(space, ratios, budget)
        f, p = space.cost_from_counts(torch.tensor([fitted]))
        assert bool(budget.feasible(f[0], p[0]))
        # one more channel in any group breaks the budget or the group is full: the cut is tight
        assert any(c < g.size for c, g in zip(fitted, space.groups))
    assert uniform_counts(space, budget) == fit_ratios_to_budget(space, [1.0] * space.num_groups,
                                                                 budget)
    # the action wall: group 0's widest width with every later group at its minimum
    wall = action_wall(space, [], 0, budget)
    mins = [space.min_keep(g) for g in range(space.num_groups)]
    ok = lambda c: bool(budget.feasible(*[v[0] for v in space.cost_from_counts(
        torch.tensor([[c] + mins[1:]]))]))
    assert ok(wall) and (wall == space.groups[0].size or not ok(wall + 1))
    scores = [torch.arange(g.size, dtype=torch.float64) for g in space.groups]
    masks = masks_from_counts(scores, fitted)
    for m, c, g in zip(masks, fitted, space.groups):
        assert int(m.sum()) == c and bool(m[g.size - c:].all())  # the highest scores are kept


def test_grow_counts_to_budget():
    """Under-used budgets are filled by scaling every keep ratio by one factor: feasible, never
    narrower, wider than the input, and the scaled-up shape stays the proposal's."""
    space = simple_cnn_space()
    budget = Budget.from_ratios(space, flops=0.5)
    small = counts_from_ratios(space, [0.25] * space.num_groups)
    grown = grow_counts_to_budget(space, small, budget)
    cost = lambda c: [float(v) for v in space.cost_from_counts(torch.tensor(c))]
    f, p = space.cost_from_counts(torch.tensor([grown]))
    assert bool(budget.feasible(f[0], p[0]))
    assert all(g >= s for g, s in zip(grown, small))
    assert cost(grown)[0] > cost(small)[0] * 1.5
    # tight: one more common step of the scale breaks the budget (some group can still grow)
    assert any(c < g.size for c, g in zip(grown, space.groups))
    # counts that nearly fill the budget grow by little; an infeasible input comes back unchanged
    full = uniform_counts(space, budget)
    again = grow_counts_to_budget(space, full, budget)
    assert all(a >= c for a, c in zip(again, full))
    assert cost(again)[0] <= 0.5 * float(space.base_flops) * (1 + 1e-9)
    sizes = [g.size for g in space.groups]
    assert grow_counts_to_budget(space, sizes, budget) == sizes
    with pytest.raises(ValueError, match="counts has 1 entries"):
        grow_counts_to_budget(space, [4], budget)
