"""Tables and plots from a results folder: final-round Dice (not best round), mean +- std over seeds.

Per run: the final round's Dice averaged over sites (mean of WT/TC/ET, and each region), the
worst site's Dice, bytes per client per round (mean over rounds and sites, up and down) and the
run's wall time. Per (group, label, setting): mean +- sample std of those over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnifm.bench.record import read_runs, write_csv
from omnifm.bench.settings import SETTINGS

METRICS = ("dice", "dice_WT", "dice_TC", "dice_ET", "worst", "up_kb", "down_kb", "wall_s")


def run_stats(run: dict[str, Any]) -> dict[str, float]:
    """One run's final-round numbers (see the module docstring)."""
    final = run["rounds"][-1]["sites"]
    per_site = [m["dice"] for m in final.values()]
    cells = [m for r in run["rounds"] for m in r["sites"].values()]
    stats = {k: _nanmean([m[k] for m in final.values()]) for k in ("dice", "dice_WT", "dice_TC", "dice_ET")}
    stats.update({
        "worst": min((d for d in per_site if not math.isnan(d)), default=math.nan),
        "up_kb": _nanmean([m["bytes_up"] for m in cells]) / 1024,
        "down_kb": _nanmean([m["bytes_down"] for m in cells]) / 1024,
        "wall_s": float(run["wall_s"]),
        "step_ms": _nanmean([m["step_ms"] for m in cells]),
        "retrieval_ms": _nanmean([m.get("retrieval_ms", math.nan) for m in cells]),
        "aggregate_s": _nanmean([r["aggregate_s"] for r in run["rounds"]]),
        "round_s": _nanmean([r["round_s"] for r in run["rounds"]]),
    })
    return stats


def _nanmean(values: Sequence[float]) -> float:
    valid = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(valid)) if valid else math.nan


def summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``{(group, label, setting): {"n": seeds, metric: (mean, std), ...}}`` over seeds."""
    grouped: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        cfg = run["config"]
        grouped[(cfg["group"], cfg["label"], cfg["setting"])].append(run_stats(run))
    return {key: _over_seeds(values) for key, values in grouped.items()}


def _over_seeds(values: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(values)}
    for key in values[0]:
        column = [v[key] for v in values if not math.isnan(v[key])]
        mean = float(np.mean(column)) if column else math.nan
        std = statistics.stdev(column) if len(column) > 1 else math.nan
        out[key] = (mean, std)
    return out


def fmt(pair: tuple[float, float], digits: int = 3) -> str:
    """``0.612 ± 0.034``; no std with one seed; ``n/a`` for NaN."""
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _kb(pair: tuple[float, float]) -> str:
    return "—" if pair[0] == 0 or math.isnan(pair[0]) else f"{pair[0]:.0f}"


def main_table(summary: dict, setting: str, by_seed: dict | None = None) -> str:
    """Markdown table of the main algorithms in one setting (rows in descending mean Dice).

    With ``by_seed`` (:func:`_final_dice_by_seed`) a last column gives each algorithm's paired
    difference to ``omnifm`` (same seeds and the same label suffix, e.g. ``learning_rate=0.003``;
    mean ± std): the seed spread is large, pairing removes the part of it that comes from the
    phantom draw.
    """
    rows = sorted(((k[1], v) for k, v in summary.items() if k[0] == "main" and k[2] == setting), key=lambda r: -_key(r[1]))
    paired = by_seed is not None
    lines = [
        "| algorithm | Dice (mean WT/TC/ET) | WT | TC | ET | worst site | up KiB/round | down KiB/round | wall s/run | seeds |"
        + (" Δ Dice vs omnifm (paired) |" if paired else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if paired else ""),
    ]
    for label, v in rows:
        lines.append(
            f"| {label} | {fmt(v['dice'])} | {fmt(v['dice_WT'])} | {fmt(v['dice_TC'])} | {fmt(v['dice_ET'])} "
            f"| {fmt(v['worst'])} | {_kb(v['up_kb'])} | {_kb(v['down_kb'])} | {v['wall_s'][0]:.0f} | {v['n']} |"
            + (f" {_paired(by_seed, ('main', label))} |" if paired else "")
        )
    return "\n".join(lines)


def _paired(by_seed: dict, key: tuple[str, str]) -> str:
    """Seed-paired difference to ``omnifm`` with the same label suffix (``local lr=x`` -> ``omnifm lr=x``)."""
    suffix = key[1].partition(" ")[2]
    reference = by_seed.get(("main", f"omnifm {suffix}" if suffix else "omnifm"))
    reference = reference if reference is not None else by_seed.get(("main", "omnifm"), {})
    mine = by_seed.get(key, {})
    diffs = [mine[s] - reference[s] for s in sorted(set(mine) & set(reference))]
    if not diffs:
        return "n/a"
    text = fmt((float(np.mean(diffs)), statistics.stdev(diffs) if len(diffs) > 1 else math.nan))
    return text if text.startswith("-") else "+" + text


def _key(v: dict[str, Any]) -> float:
    return -1.0 if math.isnan(v["dice"][0]) else v["dice"][0]


def ablation_table(runs: list[dict[str, Any]], group: str, setting: str = "cross-modality") -> str:
    """OmniFM (main group) and the ``group`` variants in one setting.

    The last two columns compare each variant with ``omnifm`` on the *same seeds*: OmniFM's mean
    Dice on those seeds and the paired difference (variant - omnifm, seed by seed; mean ± std).
    """
    summary = summarize(runs)
    by_seed = _final_dice_by_seed(runs, setting)
    reference = by_seed.get(("main", "omnifm"), {})
    labels = ["omnifm"] if reference else []
    labels += sorted(k[1] for k in summary if k[0] == group and k[2] == setting)
    lines = [
        "| variant | Dice | WT | TC | ET | worst site | seeds | omnifm, same seeds | Δ Dice (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        key = ("main", label, setting) if label == "omnifm" else (group, label, setting)
        v, mine = summary[key], by_seed[key[:2]]
        seeds = sorted(set(mine) & set(reference))
        ref = float(np.mean([reference[s] for s in seeds])) if seeds else math.nan
        delta = _paired({("main", "omnifm"): reference, key[:2]: mine}, key[:2])
        lines.append(
            f"| {label} | {fmt(v['dice'])} | {fmt(v['dice_WT'])} | {fmt(v['dice_TC'])} | {fmt(v['dice_ET'])} "
            f"| {fmt(v['worst'])} | {','.join(map(str, sorted(mine)))} | {ref:.3f} | {delta} |"
        )
    return "\n".join(lines)


def _final_dice_by_seed(runs: list[dict[str, Any]], setting: str) -> dict[tuple[str, str], dict[int, float]]:
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for run in runs:
        cfg = run["config"]
        if cfg["setting"] == setting:
            out[(cfg["group"], cfg["label"])][cfg["seed"]] = run_stats(run)["dice"]
    return out


def cost_table(summary: dict, setting: str = "cross-modality") -> str:
    """Per main algorithm: mean training step, retrieval per batch, aggregation and round wall time.

    A step is ``train_round`` time / (epochs x batches); Ditto trains two models per round, so its
    step covers one step of each.
    """
    lines = ["| algorithm | step ms | retrieval ms/batch | retrieval / step | aggregate ms | round s |", "|---|---|---|---|---|---|"]
    for (group, label, s), v in sorted(summary.items()):
        if group != "main" or s != setting:
            continue
        step, retr = v["step_ms"][0], v["retrieval_ms"][0]
        ratio = "—" if math.isnan(retr) else f"{100 * retr / step:.2f} %"
        retr_text = "—" if math.isnan(retr) else f"{retr:.3f}"
        lines.append(
            f"| {label} | {step:.1f} | {retr_text} | {ratio} | {1000 * v['aggregate_s'][0]:.1f} | {v['round_s'][0]:.2f} |"
        )
    return "\n".join(lines)


def markdown(runs: list[dict[str, Any]]) -> str:
    """The whole report: one main table per setting, ablations, sensitivity, costs."""
    summary = summarize(runs)
    settings = [s for s in SETTINGS if any(k[2] == s for k in summary)]
    parts = []
    for setting in settings:
        table = main_table(summary, setting, _final_dice_by_seed(runs, setting))
        parts += [f"### {setting}: final-round Dice, mean ± std over seeds", "", table, ""]
    for group, title in (("ablation", "Ablations (cross-modality)"), ("sensitivity", "Sensitivity: lambda and top-k (cross-modality)")):
        if any(k[0] == group for k in summary):
            parts += [f"### {title}", "", ablation_table(runs, group), ""]
    parts += ["### Time per step, retrieval, aggregation (cross-modality, in-process)", "", cost_table(summary), ""]
    return "\n".join(parts)


def plot_curves(runs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``dice_<setting>.png`` (main group) and ``dice_ablation.png``: Dice (mean of WT/TC/ET, and WT)
    after each round's aggregation, averaged over sites; line = mean over seeds, band = ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    panels = [(s, "main", s) for s in SETTINGS] + [("ablation", "ablation", "cross-modality")]
    for name, group, setting in panels:
        if not any(run["config"]["group"] == group and run["config"]["setting"] == setting for run in runs):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, key, title in zip(axes, ("dice", "dice_WT"), ("mean of WT/TC/ET", "WT")):
            _plot_panel(ax, _curves(runs, group, setting, key, with_reference=group != "main"))
            ax.set(xlabel="round", ylabel=f"Dice ({title}), mean over sites", title=f"{name}: {title} after aggregation")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"dice_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_panel(ax: Any, curves: dict[str, np.ndarray]) -> None:
    top = 0.0
    for label, matrix in sorted(curves.items()):
        mean, std = np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
        x = np.arange(1, matrix.shape[1] + 1)
        style = "--" if label in ("central", "local") else "-"
        ax.plot(x, mean, style, label=f"{label} (n={matrix.shape[0]})", linewidth=2.2 if label == "omnifm" else 1.2)
        ax.fill_between(x, mean - std, mean + std, alpha=0.12)
        top = max(top, float(np.nanmax(mean + std)))
    ax.set_ylim(0, min(1.0, top * 1.1 + 0.02))


def _curves(
    runs: list[dict[str, Any]], group: str, setting: str, key: str, with_reference: bool
) -> dict[str, np.ndarray]:
    rows: dict[str, list[list[float]]] = defaultdict(list)
    for run in runs:
        cfg = run["config"]
        wanted = cfg["group"] == group or (with_reference and cfg["group"] == "main" and cfg["label"] == "omnifm")
        if wanted and cfg["setting"] == setting:
            rows[cfg["label"]].append([_nanmean([m[key] for m in r["sites"].values()]) for r in run["rounds"]])
    return {label: np.array(v, dtype=float) for label, v in rows.items() if len({len(x) for x in v}) == 1}


def write_report(results_dir: str | Path) -> Path:
    """Write ``results.csv``, ``summary.md`` and the plots into ``results_dir``; returns ``summary.md``."""
    results_dir = Path(results_dir)
    runs = read_runs(results_dir)
    write_csv(results_dir / "results.csv", runs)
    plots = plot_curves(runs, results_dir)
    text = markdown(runs) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    path = results_dir / "summary.md"
    path.write_text(text)
    return path
