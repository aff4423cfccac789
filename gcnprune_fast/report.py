"""Result reports: JSON, Markdown tables and matplotlib plots (Agg backend, no display needed).

Used by ``gcnprune demo`` / ``gcnprune prune`` and ``benchmarks/quality.py``. Rows are plain dicts;
a column missing from a row prints as ``-``.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

HELD_OUT = "held-out"
VAL_LOADER = "val_loader"
SEARCH_SET = "search-set (loader too small to hold out)"
ACCURACY_SETS = (HELD_OUT, VAL_LOADER, SEARCH_SET)
"""The values of a prune report's ``accuracy_set``: what ``acc_before`` / ``acc_pruned`` /
``acc_finetuned`` were measured on (see ``gcnprune_fast.prune``, ``val_loader``)."""


def _fmt(v, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Optional[Sequence[str]] = None,
                   digits: int = 4) -> str:
    """A GitHub Markdown table of ``rows`` (dicts) over ``columns`` (keys), floats with ``digits``."""
    headers = list(headers or columns)
    if len(headers) != len(columns):
        raise ValueError(f"headers has {len(headers)} entries, columns {len(columns)}")
    cells = [[_fmt(r.get(c), digits) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def _jsonable(obj):
    """Convert tensors / numpy values / tuples to JSON-friendly Python objects."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_json(path: str, obj) -> str:
    """Write ``obj`` as indented JSON (tensors and numpy arrays become lists); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=1)
        f.write("\n")
    return path


PLOTS_HINT = ("plots skipped: matplotlib is not installed (pip install matplotlib, or the plots "
              "extra: pip install -e '.[plots]')")
"""The one line printed when plots are skipped."""


def plots_available() -> bool:
    """Whether matplotlib can be imported (plots are optional; results never depend on them)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(PLOTS_HINT.replace("plots skipped: ", "cannot plot: ")) from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path: str) -> str:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns ``path``."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_widths(path: str, widths: Dict[str, Sequence[int]], base_widths: Sequence[int],
                group_names: Optional[Sequence[str]] = None, title: str = "channels kept per group") -> str:
    """Grouped bar chart of per-group widths: the original model and one bar per method.

    Args:
        path: output image (``.png``).
        widths: method name -> kept channels per group (length G each).
        base_widths: the unpruned group sizes (length G).
        group_names: labels of the G groups (default ``g0``, ``g1``, ...).
    """
    g = len(base_widths)
    for name, w in widths.items():
        if len(w) != g:
            raise ValueError(f"widths[{name!r}] has {len(w)} groups, base_widths {g}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * g + 2), 3.6))
    series = [("original", list(base_widths))] + [(k, list(v)) for k, v in widths.items()]
    bar_w = 0.85 / len(series)
    for i, (name, w) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * bar_w for j in range(g)]
        ax.bar(xs, w, width=bar_w, label=name, color="lightgray" if i == 0 else None)
    labels = list(group_names) if group_names else [f"g{j}" for j in range(g)]
    ax.set_xticks(range(g))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_figure(plt, fig, path)


# (curve key, final key) of the greedy-mask rewards: on the search's reward set, and held out
_GREEDY_KEYS = {False: ("greedy_curve", "final_greedy_reward"),
                True: ("greedy_heldout_curve", "final_greedy_heldout_reward")}


def greedy_points(report: Dict[str, Any], heldout: bool = False
                  ) -> Optional[Tuple[List[float], List[float]]]:
    """``(x, reward)`` of the greedy-mask rewards of a search report, or None without a
    ``greedy_curve``: ``greedy_curve[u]`` (the policy's greedy mask before update u) is placed at
    the episodes sampled before it, ``u * episodes / updates``, and ``final_greedy_reward`` (after
    the last update), when present, at ``episodes``. ``heldout=True``: the same masks scored on
    held-out images (``greedy_heldout_curve`` / ``final_greedy_heldout_reward``; entries that are
    None, updates run before a resume without that curve, are left out)."""
    curve_key, final_key = _GREEDY_KEYS[bool(heldout)]
    curve = list(report.get(curve_key) or [])
    if not curve:
        return None
    episodes = len(report.get("reward_curve") or []) or int(report.get("episodes") or 0)
    updates = int(report.get("updates") or len(report.get("greedy_curve") or curve))
    per_update = episodes / max(updates, 1)
    points = [(u * per_update, float(v)) for u, v in enumerate(curve) if v is not None]
    if report.get(final_key) is not None and updates > 0 and episodes > 0:
        points.append((float(episodes), float(report[final_key])))
    if not points:
        return None
    return [p[0] for p in points], [p[1] for p in points]


def greedy_first_last(report: Dict[str, Any], heldout: bool = False
                      ) -> Tuple[Optional[float], Optional[float]]:
    """The greedy-mask reward at the start of a search (the warm start) and at its end (after
    the last update: ``final_greedy_reward``, else the last ``greedy_curve`` entry); (None, None)
    for reports without a greedy curve. ``heldout=True``: on held-out images
    (:func:`greedy_points`)."""
    points = greedy_points(report, heldout)
    if points is None:
        return None, None
    return points[1][0], points[1][-1]


def plot_reward_curve(path: str, rewards: Sequence[float], title: str = "search reward",
                      smooth: int = 10,
                      greedy: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                      greedy_heldout: Optional[Tuple[Sequence[float], Sequence[float]]] = None
                      ) -> str:
    """Line plot of the per-episode search reward with a moving average over ``smooth`` episodes;
    with ``greedy = (x, reward)`` (:func:`greedy_points`) also the reward of the policy's greedy
    mask per update (what the search has learned, without sampling noise), and with
    ``greedy_heldout`` the same masks on held-out images (whether what it learned holds on data
    the search never saw)."""
    if len(rewards) == 0:
        raise ValueError("plot_reward_curve: rewards is empty")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = list(range(1, len(rewards) + 1))
    ax.plot(xs, rewards, lw=0.8, alpha=0.5, label="sampled mask (episode)")
    k = max(1, min(smooth, len(rewards)))
    avg = [sum(rewards[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(rewards))]
    ax.plot(xs, avg, lw=1.8, label=f"moving average ({k})")
    best = [max(rewards[:i + 1]) for i in range(len(rewards))]
    ax.plot(xs, best, lw=1.2, ls="--", label="best so far")
    if greedy is not None and len(greedy[1]) > 0:
        ax.plot(list(greedy[0]), list(greedy[1]), lw=1.6, marker="o", ms=3, color="black",
                label="greedy mask (per update)")
    if greedy_heldout is not None and len(greedy_heldout[1]) > 0:
        ax.plot(list(greedy_heldout[0]), list(greedy_heldout[1]), lw=1.6, marker="s", ms=3,
                ls=":", color="tab:red", label="greedy mask, held-out images")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_figure(plt, fig, path)


def accuracy_set_label(report: Dict[str, Any]) -> Optional[str]:
    """What a prune report's accuracies were measured on, in words (None for reports written
    before ``accuracy_set`` existed)."""
    kind = report.get("accuracy_set")
    if kind is None:
        return None
    if kind == HELD_OUT:
        n = report.get("held_out_images")
        what = "images of the loader" if n is None else f"{n:,} images of the loader"
        return (f"held-out: {what}, kept from the search (and from BN re-estimation and "
                f"fine-tuning unless a train_loader holding them was given)")
    if kind == VAL_LOADER:
        return VAL_LOADER
    return f"{kind}: the accuracies are measured on the images the search chose its masks on"


def accuracy_set_short(report: Dict[str, Any]) -> Optional[str]:
    """A few words for a summary line: ``held-out, 512 images`` / ``val_loader`` /
    ``search set, loader too small to hold out``; None for old reports."""
    kind = report.get("accuracy_set")
    if kind is None:
        return None
    if kind == HELD_OUT:
        n = report.get("held_out_images")
        return HELD_OUT + ("" if n is None else f", {n:,} images")
    return VAL_LOADER if kind == VAL_LOADER else "search set, loader too small to hold out"


def prune_report_markdown(report: Dict[str, Any]) -> str:
    """A human-readable Markdown summary of a prune report."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    short = accuracy_set_short(report)
    on = "" if short is None else f" ({short})"
    lines = [f"# Pruning report: {report.get('method')} ({report.get('allocation')})", "",
             "| metric | value |", "|---|---|",
             f"| FLOPs (MACs) | {report['flops_before']:,} -> {report['flops_after']:,} "
             f"({pct(report['flops_ratio'])} kept) |",
             f"| params | {report['params_before']:,} -> {report['params_after']:,} "
             f"({pct(report['params_ratio'])} kept) |"]
    if short is not None:
        lines.append(f"| accuracies measured on | {accuracy_set_label(report)} |")
    lines += [f"| accuracy before{on} | {pct(report.get('acc_before'))} |",
              f"| accuracy pruned (BN re-estimated){on} | {pct(report.get('acc_pruned'))} |",
              f"| accuracy fine-tuned{on} | {pct(report.get('acc_finetuned'))} |",
              f"| search time | {report.get('search_time_s', 0.0):.1f} s |",
              f"| episodes | {report.get('episodes', 0)} |",
              f"| seed | {report.get('seed')} |"]
    first, last = greedy_first_last(report)
    if first is not None:
        lines.append(f"| greedy-mask reward (search's reward set) | {first:.4f} at the start -> "
                     f"{last:.4f} at the end |")
    first, last = greedy_first_last(report, heldout=True)
    if first is not None:
        lines.append(f"| greedy-mask reward (held out: {report.get('heldout_samples')} images of "
                     f"val_loader) | {first:.4f} at the start -> {last:.4f} at the end |")
    if report.get("cost_model_mismatch") is not None:
        flag = " **cost model mismatch**" if report["cost_model_mismatch"] else ""
        lines.append(f"| counted on the pruned model | {report['flops_after_measured']:,} FLOPs, "
                     f"{report['params_after_measured']:,} params{flag} |")
    if report.get("latency_before_ms") is not None:
        t = report.get("latency_table", {})
        where = (f"{t.get('device', '?')}, batch {t.get('batch', '?')}, {t.get('threads', '?')} "
                 f"thread(s), {t.get('clock', '?')} clock")
        if report.get("latency_budget") is not None:
            lines.append(f"| latency budget | {pct(report['latency_budget'])} of the measured latency |")
        lines.append(f"| latency predicted | {report['latency_before_ms']:.3f} ms -> "
                     f"{report['latency_predicted_ms']:.3f} ms "
                     f"({report['latency_speedup_predicted']:.2f}x) on {where} |")
        if report.get("latency_after_ms") is not None:
            lines.append(f"| latency measured ({report.get('latency_timed_by')}) | "
                         f"{report['latency_before_ms']:.3f} ms -> {report['latency_after_ms']:.3f} ms "
                         f"({report['latency_speedup_measured']:.2f}x; FLOPs "
                         f"{1 / report['flops_ratio']:.2f}x) |")
    lines += ["", "## Widths per group", "", "| group | before | after |", "|---|---:|---:|"]
    for w in report.get("widths", []):
        lines.append(f"| {w['name']} | {w['before']} | {w['after']} |")
    return "\n".join(lines) + "\n"


def _group_widths(report: dict) -> Optional[List[int]]:
    """Per-group kept widths from a ``PruneResult.report`` (key ``widths`` or ``widths_after``)."""
    for key in ("widths", "widths_after", "group_widths"):
        w = report.get(key)
        if w is None:
            continue
        if isinstance(w, dict):  # {"after": [...]} or {group_name: width}
            w = w.get("after", list(w.values()))
        # entries are ints or {"name", "before", "after"} dicts (PruneResult.report)
        return [int(x["after"]) if isinstance(x, dict) else int(x) for x in w]
    return None


def _reward_curve(report: dict) -> Optional[List[float]]:
    for key in ("reward_curve", "rewards"):
        v = report.get(key)
        if v:
            return [float(x) for x in v]
    search = report.get("search") or report.get("method_info") or {}
    if isinstance(search, dict) and search.get("reward_curve"):
        return [float(x) for x in search["reward_curve"]]
    return None


DEMO_COLUMNS = ("method", "acc_pruned", "acc_finetuned", "flops_kept", "params_kept", "search_time_s",
                "episodes", "greedy_first", "greedy_last", "greedy_heldout_first",
                "greedy_heldout_last")
DEMO_HEADERS = ("method", "acc after pruning", "acc after fine-tuning", "FLOPs kept", "params kept",
                "search s", "episodes", "greedy reward start", "greedy reward end",
                "held-out greedy start", "held-out greedy end")


def write_comparison_report(out_dir: str, rows: List[dict], meta: dict, reports: Dict[str, dict],
                            base_widths: Sequence[int], group_names: Optional[Sequence[str]] = None,
                            title: str = "gcnprune demo") -> Dict[str, str]:
    """Write ``results.json``, ``results.md``, ``widths.png`` and (if a reward curve exists)
    ``reward_curve.png`` into ``out_dir``. The JSON and Markdown are written first; the plots
    only when matplotlib is installed (:func:`plots_available`; otherwise they are skipped and
    ``files["plots_skipped"]`` holds :data:`PLOTS_HINT`).

    Args:
        rows: one dict per method with the :data:`DEMO_COLUMNS` keys.
        meta: run facts (model, dataset, budget, base accuracy, timings) for the header.
        reports: method -> its ``PruneResult.report`` (widths and reward curve are read from it).
        base_widths / group_names: the unpruned group sizes and names.

    Returns:
        file kind -> path of what was written.
    """
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    widths = {m: w for m, w in ((m, _group_widths(r)) for m, r in reports.items()) if w is not None}
    curves = {m: c for m, c in ((m, _reward_curve(r)) for m, r in reports.items()) if c}
    greedy = {m: greedy_points(r) for m, r in reports.items()}
    greedy_heldout = {m: greedy_points(r, heldout=True) for m, r in reports.items()}
    files["json"] = write_json(os.path.join(out_dir, "results.json"),
                               {"meta": meta, "rows": rows, "reports": reports,
                                "base_widths": list(base_widths),
                                "group_names": list(group_names) if group_names else None})
    plots = {}
    if plots_available():
        if widths and all(len(w) == len(base_widths) for w in widths.values()):
            plots["widths_plot"] = plot_widths(os.path.join(out_dir, "widths.png"), widths,
                                               base_widths, group_names)
        for m, c in curves.items():
            name = "reward_curve.png" if len(curves) == 1 else f"reward_curve_{m}.png"
            plots[f"reward_plot_{m}"] = plot_reward_curve(os.path.join(out_dir, name), c,
                                                          title=f"{m} search reward",
                                                          greedy=greedy.get(m),
                                                          greedy_heldout=greedy_heldout.get(m))
    elif widths or curves:
        files["plots_skipped"] = PLOTS_HINT
    md = [f"# {title}", ""]
    md += [f"- **{k}**: {_fmt(v)}" for k, v in meta.items() if not isinstance(v, (dict, list))]
    md += ["", markdown_table(rows, DEMO_COLUMNS, DEMO_HEADERS), ""]
    if any(r.get("greedy_first") is not None for r in rows):
        md += ["greedy reward start / end: the reward (on the search's reward set) of the "
               "policy's greedy mask at the warm start and after the last update; held-out "
               "greedy: the same masks scored on val_loader's images, which the search never "
               "trained on.", ""]
    if widths:
        md += ["## Channels kept per group", "",
               markdown_table([{"group": (group_names[i] if group_names else f"g{i}"),
                                "original": base_widths[i], **{m: w[i] for m, w in widths.items()}}
                               for i in range(len(base_widths))],
                              ["group", "original", *widths]), ""]
    for kind, path in plots.items():
        md.append(f"![{kind}]({os.path.basename(path)})")
    files["markdown"] = os.path.join(out_dir, "results.md")
    with open(files["markdown"], "w") as f:
        f.write("\n".join(md) + "\n")
    files.update(plots)
    return files


QUALITY_COLUMNS = ("method", "n", "acc_pruned", "acc_bn_recalibrated", "acc_finetuned", "flops_kept",
                   "params_kept", "search_time_s")
QUALITY_HEADERS = ("method", "seeds", "acc pruned", "acc pruned + BN re-est.", "acc fine-tuned", "FLOPs kept", "params kept", "search s")


def summarize_by_method(rows: List[dict]) -> List[dict]:
    """Aggregate per-seed rows to one row per method: ``"mean±sd"`` strings for accuracies
    (percent), means for costs and times; methods in first-seen order."""
    order, by = [], {}
    for r in rows:
        if r["method"] not in by:
            order.append(r["method"])
            by[r["method"]] = []
        by[r["method"]].append(r)

    def pm(vals, scale=100.0):
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        m = statistics.fmean(vals) * scale
        sd = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
        return f"{m:.2f}±{sd:.2f}"

    out = []
    for m in order:
        rs = by[m]
        out.append({"method": m, "n": len(rs),
                    "acc_pruned": pm([r.get("acc_pruned") for r in rs]),
                    "acc_bn_recalibrated": pm([r.get("acc_bn_recalibrated") for r in rs]),
                    "acc_finetuned": pm([r.get("acc_finetuned") for r in rs]),
                    "flops_kept": statistics.fmean(r["flops_kept"] for r in rs),
                    "params_kept": statistics.fmean(r["params_kept"] for r in rs),
                    "search_time_s": statistics.fmean(r["search_time_s"] for r in rs)})
    return out


def write_quality_report(out_dir: str, rows: List[dict], meta: dict) -> str:
    """Write ``quality.json`` (all rows) and ``quality.md`` (per-method summary and per-seed rows)
    into ``out_dir``; returns the Markdown text."""
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize_by_method(rows)
    md = ["# Quality benchmark", ""]
    md += [f"- **{k}**: {_fmt(v)}" for k, v in meta.items() if not isinstance(v, (dict, list))]
    md += ["", "Accuracies in percent (test set), mean ± standard deviation over seeds.", "",
           markdown_table(summary, QUALITY_COLUMNS, QUALITY_HEADERS, digits=3), "",
           "## Per seed", "",
           markdown_table(rows, ["method", "seed", "acc_pruned", "acc_bn_recalibrated", "acc_finetuned",
                                 "flops_kept", "params_kept", "search_time_s", "episodes"]), ""]
    text = "\n".join(md)
    with open(os.path.join(out_dir, "quality.md"), "w") as f:
        f.write(text + "\n")
    write_json(os.path.join(out_dir, "quality.json"), {"meta": meta, "summary": summary, "rows": rows})
    return text


__all__ = ["ACCURACY_SETS", "HELD_OUT", "VAL_LOADER", "SEARCH_SET", "markdown_table", "write_json", "prune_report_markdown", "plot_widths", "plot_reward_curve",
           "plots_available", "PLOTS_HINT", "accuracy_set_label", "accuracy_set_short",
           "greedy_points", "greedy_first_last",
           "write_comparison_report", "summarize_by_method", "write_quality_report"]
