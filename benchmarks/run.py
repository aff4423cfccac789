"""One command, one table: every native op (and the cost model / deployment latency) against its
reference in the same run, with the ratio.

    python benchmarks/run.py            # full shapes (minutes on 2 cores)
    python benchmarks/run.py --quick    # small shapes (seconds)
    python benchmarks/run.py --only gap_stats knn_graph --json out.json

Each family lives in ``benchmarks/bench_<family>.py`` and exposes ``table_rows(quick) -> list[dict]``
with keys op, shape, impl_ms, ref_name, ref_ms, ratio (= ref_ms / impl_ms), note.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import traceback

import torch

FAMILIES = ["gap_stats", "knn_graph", "spmm", "cost_model", "latency"]


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    cols = ["op", "shape", "impl_ms", "ref_name", "ref_ms", "ratio", "note"]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--only", nargs="*", choices=FAMILIES, help="benchmark families to run")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(here)]  # bench_* modules; the repo (in-place builds)
    import gcnprune_fast.ops as ops

    print(f"# gcnprune_fast benchmarks: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, native={ops.native_available()}, "
          f"cuda={torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    rows, failed = [], []
    for family in args.only or FAMILIES:
        try:
            module = importlib.import_module(f"bench_{family}")
        except ImportError as exc:
            print(f"(skipping {family}: {exc})")
            continue
        try:
            rows += module.table_rows(quick=args.quick)
        except Exception:  # keep the other families' numbers
            failed.append(family)
            traceback.print_exc()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if failed:
        print(f"FAILED families: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
