"""Tables and plots from a results folder.

Per run (:func:`run_stats`):

- **test** Dice: the test split, evaluated once after the last round (mean over sites of the mean
  of WT/TC/ET, each region, the worst site). This is the number the final tables rank by and the
  paired comparisons use. Runs without a test split fall back to the final validation Dice.
- **validation** Dice of the final round and the mean of the last ``K`` rounds (is the curve flat?).
- bytes per client per round (mean over rounds and sites), wall time, step / retrieval timings.

Per (group, label, setting): mean ± sample std over seeds (:func:`summarize`). Paired comparisons
against OmniFM (:func:`comparison_table`) use the same seeds of both methods: the mean difference,
a bootstrap 95 % CI, the Wilcoxon signed-rank p-value and its Holm correction across the
comparisons of the table, both with the seed as the unit and with the (seed, site) cell as the unit
(:mod:`omnifm.bench.stats`). Diagnostics (:func:`diagnostics_table`) are final-round means over
sites and seeds of what the run recorded under ``diagnostics``.
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
from omnifm.bench.stats import holm, paired_summary
from omnifm.bench.tune import last_k_dice, tuning_markdown

REGIONS = ("dice", "dice_WT", "dice_TC", "dice_ET")
REFERENCE = "omnifm"
LAST_K = 3
DIAGNOSTIC_KEYS = ("token_cos_within", "token_cos_across", "retrieval_own_share", "retrieved_age_rounds",
                   "placebo_dice_delta", "placebo_logit_rel")
BANK_KEYS = ("size", "inserted", "merged", "pruned")
MATPLOTLIB_HINT = "plots skipped: matplotlib is not installed (pip install -e \".[bench]\" or pip install matplotlib)"


def _nanmean(values: Sequence[float]) -> float:
    valid = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(valid)) if valid else math.nan


def _test_sites(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The run's per-site test scores, or its final validation scores when it has no test split."""
    return run.get("test") or run["rounds"][-1]["sites"]


def run_stats(run: dict[str, Any], last_k: int = LAST_K) -> dict[str, float]:
    """One run's numbers (see the module docstring)."""
    final = run["rounds"][-1]["sites"]
    test = _test_sites(run)
    cells = [m for r in run["rounds"] for m in r["sites"].values()]
    stats = {k: _nanmean([m[k] for m in final.values()]) for k in REGIONS}
    stats.update({f"test_{k}": _nanmean([m[k] for m in test.values()]) for k in REGIONS})
    stats.update({
        "lastk": last_k_dice(run, last_k),
        "worst": min((d for d in (m["dice"] for m in final.values()) if not math.isnan(d)), default=math.nan),
        "test_worst": min((d for d in (m["dice"] for m in test.values()) if not math.isnan(d)), default=math.nan),
        "has_test": float(bool(run.get("test"))),
        "lr": float(run["config"].get("train", {}).get("learning_rate", math.nan)),
        "up_kb": _nanmean([m["bytes_up"] for m in cells]) / 1024,
        "down_kb": _nanmean([m["bytes_down"] for m in cells]) / 1024,
        "wall_s": float(run["wall_s"]),
        "step_ms": _nanmean([m["step_ms"] for m in cells]),
        "retrieval_ms": _nanmean([m.get("retrieval_ms", math.nan) for m in cells]),
        "aggregate_s": _nanmean([r["aggregate_s"] for r in run["rounds"]]),
        "round_s": _nanmean([r["round_s"] for r in run["rounds"]]),
    })
    return stats


def summarize(runs: list[dict[str, Any]], last_k: int = LAST_K) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``{(group, label, setting): {"n": seeds, metric: (mean, std), ...}}`` over seeds."""
    grouped: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        cfg = run["config"]
        grouped[(cfg["group"], cfg["label"], cfg["setting"])].append(run_stats(run, last_k))
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


def _lrs(pair: tuple[float, float]) -> str:
    return "n/a" if math.isnan(pair[0]) else f"{pair[0]:g}"


def _key(v: dict[str, Any]) -> float:
    return -1.0 if math.isnan(v["test_dice"][0]) else v["test_dice"][0]


def main_table(summary: dict, setting: str, last_k: int = LAST_K) -> str:
    """Markdown table of the main algorithms in one setting, best test Dice first."""
    rows = sorted(((k[1], v) for k, v in summary.items() if k[0] == "main" and k[2] == setting), key=lambda r: -_key(r[1]))
    lines = [
        f"| algorithm | lr | test Dice (WT/TC/ET mean) | test WT | test TC | test ET | worst site (test) "
        f"| val Dice, final round | val Dice, mean of last {last_k} | up KiB/round | down KiB/round | wall s/run | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, v in rows:
        lines.append(
            f"| {label} | {_lrs(v['lr'])} | {fmt(v['test_dice'])} | {fmt(v['test_dice_WT'])} | {fmt(v['test_dice_TC'])} "
            f"| {fmt(v['test_dice_ET'])} | {fmt(v['test_worst'])} | {fmt(v['dice'])} | {fmt(v['lastk'])} "
            f"| {_kb(v['up_kb'])} | {_kb(v['down_kb'])} | {v['wall_s'][0]:.0f} | {v['n']} |"
        )
    return "\n".join(lines)


def _cells(runs: list[dict[str, Any]], group: str, setting: str) -> dict[str, dict[int, dict[str, float]]]:
    """``{label: {seed: {site: test Dice}}}`` of one group and setting."""
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for run in runs:
        cfg = run["config"]
        if cfg["group"] == group and cfg["setting"] == setting:
            out[cfg["label"]][cfg["seed"]] = {s: float(m["dice"]) for s, m in _test_sites(run).items()}
    return out


def _modalities(runs: list[dict[str, Any]], setting: str) -> dict[str, str]:
    for run in runs:
        if run["config"]["setting"] == setting and run.get("sites"):
            return {site: info.get("modality", site) for site, info in run["sites"].items()}
    return {}


def modality_table(runs: list[dict[str, Any]], setting: str) -> str:
    """Test Dice per site (its modality), mean over seeds, per main algorithm."""
    cells = _cells(runs, "main", setting)
    sites = sorted({s for by_seed in cells.values() for sites in by_seed.values() for s in sites})
    if not sites:
        return ""
    names = _modalities(runs, setting)
    lines = ["| algorithm | " + " | ".join(f"{s} ({names.get(s, '?')})" for s in sites) + " |", "|---|" + "---|" * len(sites)]
    for label in sorted(cells):
        means = [_nanmean([cells[label][seed].get(s, math.nan) for seed in cells[label]]) for s in sites]
        lines.append(f"| {label} | " + " | ".join("n/a" if math.isnan(m) else f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def comparisons(
    runs: list[dict[str, Any]], setting: str, group: str = "main", reference: str = REFERENCE
) -> list[dict[str, Any]]:
    """Paired test-Dice differences ``label - reference`` per label of ``group``, seed and cell units,
    with Holm-adjusted Wilcoxon p-values across the returned comparisons."""
    cells = _cells(runs, group, setting)
    ref = _cells(runs, "main", setting).get(reference, {})
    out = []
    for label in sorted(cells):
        if label == reference and group == "main":
            continue
        seeds = sorted(set(cells[label]) & set(ref))
        by_seed = [_nanmean(list(cells[label][s].values())) - _nanmean(list(ref[s].values())) for s in seeds]
        by_cell = [cells[label][s][site] - ref[s][site] for s in seeds for site in cells[label][s] if site in ref[s]]
        out.append({"label": label, "seed": paired_summary(by_seed), "cell": paired_summary(by_cell)})
    for unit in ("seed", "cell"):
        for row, adjusted in zip(out, holm([row[unit]["p_wilcoxon"] for row in out])):
            row[unit]["p_holm"] = adjusted
    return out


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")


def _ci(summary: dict[str, float]) -> str:
    if math.isnan(summary["mean"]):
        return "n/a"
    ci = "" if math.isnan(summary["ci_low"]) else f" [{summary['ci_low']:+.3f}, {summary['ci_high']:+.3f}]"
    return f"{summary['mean']:+.3f}{ci}"


def comparison_table(runs: list[dict[str, Any]], setting: str, group: str = "main") -> str:
    """Markdown of :func:`comparisons`: Δ test Dice vs OmniFM, 95 % CI, Wilcoxon p, Holm p per unit."""
    rows = comparisons(runs, setting, group)
    if not rows:
        return ""
    lines = [
        f"| {group} vs {REFERENCE} | seeds | Δ test Dice [95 % CI] (seed unit) | p Wilcoxon | p Holm "
        "| cells | Δ [95 % CI] (seed × site unit) | p Wilcoxon | p Holm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, c = row["seed"], row["cell"]
        lines.append(
            f"| {row['label']} | {s['n']} | {_ci(s)} | {_p(s['p_wilcoxon'])} | {_p(s['p_holm'])} "
            f"| {c['n']} | {_ci(c)} | {_p(c['p_wilcoxon'])} | {_p(c['p_holm'])} |"
        )
    return "\n".join(lines)


def headroom(summary: dict, setting: str) -> dict[str, float]:
    """Central − Local on the test split and on the validation mean of the last K rounds (NaN if missing)."""
    central, local = summary.get(("main", "central", setting)), summary.get(("main", "local", setting))
    if not central or not local:
        return {"test": math.nan, "lastk": math.nan}
    return {k: central[m][0] - local[m][0] for k, m in (("test", "test_dice"), ("lastk", "lastk"))}


def ablation_table(runs: list[dict[str, Any]], group: str, setting: str = "cross-modality") -> str:
    """OmniFM (main group) and the ``group`` variants in one setting; paired test-Dice differences
    vs OmniFM on the same seeds (seed unit; see :func:`comparison_table` for the tests)."""
    summary = summarize(runs)
    cells, ref = _cells(runs, group, setting), _cells(runs, "main", setting).get(REFERENCE, {})
    labels = ([REFERENCE] if ref else []) + sorted(k[1] for k in summary if k[0] == group and k[2] == setting)
    lines = [
        "| variant | test Dice | test WT | test TC | test ET | seeds | omnifm, same seeds | Δ test Dice (paired, mean ± std) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        key = ("main", label, setting) if label == REFERENCE else (group, label, setting)
        v, mine = summary[key], ref if label == REFERENCE else cells[label]
        seeds = sorted(set(mine) & set(ref))
        ref_mean = _nanmean([_nanmean(list(ref[s].values())) for s in seeds])
        diffs = [_nanmean(list(mine[s].values())) - _nanmean(list(ref[s].values())) for s in seeds]
        delta = "n/a" if not diffs else fmt((float(np.mean(diffs)), statistics.stdev(diffs) if len(diffs) > 1 else math.nan))
        delta = delta if delta.startswith(("-", "n")) else "+" + delta
        lines.append(
            f"| {label} | {fmt(v['test_dice'])} | {fmt(v['test_dice_WT'])} | {fmt(v['test_dice_TC'])} | {fmt(v['test_dice_ET'])} "
            f"| {','.join(map(str, sorted(mine)))} | {ref_mean:.3f} | {delta} |"
        )
    return "\n".join(lines)


def diagnostics_summary(runs: list[dict[str, Any]], setting: str) -> dict[str, dict[str, float]]:
    """``{label: {key: final-round mean over sites, then seeds}}`` for the runs' recorded diagnostics."""
    per_label: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        cfg, diag = run["config"], run.get("diagnostics") or []
        if cfg["setting"] != setting or cfg["group"] not in ("main", "ablation") or not diag:
            continue
        last = diag[-1] if isinstance(diag[-1], dict) else {}
        sites = last.get("sites") or {}
        for key in {k for values in sites.values() for k in values}:
            per_label[cfg["label"]][key].append(_nanmean([values.get(key, math.nan) for values in sites.values()]))
        for key, value in (last.get("bank") or {}).items():
            per_label[cfg["label"]][f"bank_{key}"].append(float(value))
    return {label: {k: _nanmean(v) for k, v in values.items()} for label, values in sorted(per_label.items())}


def diagnostics_table(runs: list[dict[str, Any]], setting: str = "cross-modality") -> str:
    """Markdown of :func:`diagnostics_summary`; algorithms that recorded nothing are left out."""
    summary = diagnostics_summary(runs, setting)
    present = {k for values in summary.values() for k in values}
    keys = [k for k in (*DIAGNOSTIC_KEYS, *(f"bank_{b}" for b in BANK_KEYS)) if k in present]
    keys += sorted(present - set(keys))
    if not keys:
        return ""
    lines = ["| algorithm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, values in summary.items():
        cells = [values.get(k, math.nan) for k in keys]
        lines.append(f"| {label} | " + " | ".join("—" if math.isnan(c) else f"{c:.4g}" for c in cells) + " |")
    return "\n".join(lines)


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


def _settings(summary: dict) -> list[str]:
    known = [s for s in SETTINGS if any(k[2] == s for k in summary)]
    return known + sorted({k[2] for k in summary} - set(known))


def markdown(runs: list[dict[str, Any]], last_k: int = LAST_K) -> str:
    """The whole report: LR selection, per setting main / per-site / paired / headroom, ablations,
    sensitivity, diagnostics, costs."""
    reported = [r for r in runs if r["config"]["group"] != "tuning"]
    tuning = tuning_markdown(runs, last_k)
    parts = ([f"### Learning rate per method (validation Dice, mean of the last {last_k} rounds, tuning seeds)", "",
              tuning, ""] if tuning else [])
    summary = summarize(reported, last_k)
    for setting in _settings(summary):
        if not any(k[0] == "main" and k[2] == setting for k in summary):
            continue
        tested = all(summary[k]["has_test"][0] == 1.0 for k in summary if k[0] == "main" and k[2] == setting)
        what = "test Dice (once, after the last round)" if tested else "NO test split: the test columns are final validation Dice"
        parts += [f"### {setting}: {what}, mean ± std over seeds", "", main_table(summary, setting, last_k), ""]
        room = headroom(summary, setting)
        if not math.isnan(room["test"]):
            parts += [f"Central − Local: {room['test']:+.3f} test Dice, {room['lastk']:+.3f} validation Dice "
                      f"(mean of the last {last_k} rounds).", ""]
        parts += [f"Per site (test Dice, mean over seeds):", "", modality_table(reported, setting), ""]
        table = comparison_table(reported, setting)
        if table:
            parts += [f"Paired differences vs {REFERENCE} (test Dice):", "", table, ""]
    for group, title in (("ablation", "Ablations (cross-modality)"), ("sensitivity", "Sensitivity: lambda and top-k (cross-modality)")):
        if any(k[0] == group for k in summary):
            parts += [f"### {title}", "", ablation_table(reported, group), "", comparison_table(reported, "cross-modality", group), ""]
    diagnostics = diagnostics_table(reported)
    if diagnostics:
        parts += ["### Diagnostics (cross-modality, final round, mean over sites and seeds)", "", diagnostics, ""]
    parts += ["### Time per step, retrieval, aggregation (cross-modality, in-process)", "", cost_table(summary), ""]
    return "\n".join(parts)


def plot_curves(runs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``dice_<setting>.png`` (main group) and ``dice_ablation.png``: validation Dice (mean of
    WT/TC/ET, and WT) after each round's aggregation, averaged over sites; line = mean over seeds,
    band = ± std. Without matplotlib: prints an install hint and returns ``[]``."""
    try:
        import matplotlib
    except ImportError:
        print(MATPLOTLIB_HINT, flush=True)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    settings = _settings({(r["config"]["group"], r["config"]["label"], r["config"]["setting"]): None for r in runs})
    panels = [(s, "main", s) for s in settings] + [("ablation", "ablation", "cross-modality")]
    for name, group, setting in panels:
        if not any(run["config"]["group"] == group and run["config"]["setting"] == setting for run in runs):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, key, title in zip(axes, ("dice", "dice_WT"), ("mean of WT/TC/ET", "WT")):
            _plot_panel(ax, _curves(runs, group, setting, key, with_reference=group != "main"))
            ax.set(xlabel="round", ylabel=f"validation Dice ({title}), mean over sites", title=f"{name}: {title} after aggregation")
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
        ax.plot(x, mean, style, label=f"{label} (n={matrix.shape[0]})", linewidth=2.2 if label == REFERENCE else 1.2)
        ax.fill_between(x, mean - std, mean + std, alpha=0.12)
        top = max(top, float(np.nanmax(mean + std)))
    ax.set_ylim(0, min(1.0, top * 1.1 + 0.02))


def _curves(
    runs: list[dict[str, Any]], group: str, setting: str, key: str, with_reference: bool
) -> dict[str, np.ndarray]:
    rows: dict[str, list[list[float]]] = defaultdict(list)
    for run in runs:
        cfg = run["config"]
        wanted = cfg["group"] == group or (with_reference and cfg["group"] == "main" and cfg["label"] == REFERENCE)
        if wanted and cfg["setting"] == setting:
            rows[cfg["label"]].append([_nanmean([m[key] for m in r["sites"].values()]) for r in run["rounds"]])
    return {label: np.array(v, dtype=float) for label, v in rows.items() if len({len(x) for x in v}) == 1}


def write_report(results_dir: str | Path, last_k: int = LAST_K) -> Path:
    """Write ``results.csv``, ``summary.md`` and (with matplotlib) the plots into ``results_dir``;
    returns ``summary.md``."""
    results_dir = Path(results_dir)
    runs = read_runs(results_dir)
    write_csv(results_dir / "results.csv", runs)
    text = markdown(runs, last_k)
    path = results_dir / "summary.md"
    path.write_text(text)  # tables first: a failing plot must not lose them
    plots = plot_curves([r for r in runs if r["config"]["group"] != "tuning"], results_dir)
    if plots:
        path.write_text(text + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    return path
