"""One command, one table: every native op (and the cost model / deployment latency) against its
reference in the same run, with the ratio.

    python benchmarks/run.py            # full shapes (minutes on 2 cores)
    python benchmarks/run.py --quick    # small shapes (seconds)
    python benchmarks/run.py --only gap_stats knn_graph --json out.json
    python benchmarks/run.py --only search   # a channel-gcn search (not in the default set)

Each family lives in ``benchmarks/bench_<family>.py`` and exposes ``table_rows(quick) -> list[dict]``
with keys op, shape, impl_ms, ref_name, ref_ms, ratio (= ref_ms / impl_ms), note, built with
``common.row`` and timed with ``common.measure`` (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from common import COLUMNS, format_table, header  # noqa: E402  (also puts the repo on sys.path)

DEFAULT_FAMILIES = ["gap_stats", "knn_graph", "spmm", "cost_model", "latency"]
FAMILIES = DEFAULT_FAMILIES + ["search", "channels_last"]


def check_rows(family: str, rows) -> list:
    """The family's rows, after checking they follow the row interface."""
    if not isinstance(rows, list):
        raise TypeError(f"bench_{family}.table_rows must return a list, got {type(rows).__name__}")
    for r in rows:
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            raise ValueError(f"bench_{family}: row {r!r} lacks {missing}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--only", nargs="*", choices=FAMILIES, help="benchmark families to run")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    print(header("gcnprune_fast benchmarks"))
    rows, failed = [], []
    for family in args.only or DEFAULT_FAMILIES:
        try:
            module = importlib.import_module(f"bench_{family}")
        except ImportError as exc:
            print(f"(skipping {family}: {exc})")
            continue
        try:
            rows += check_rows(family, module.table_rows(quick=args.quick))
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
