"""Tables and plots from a results folder.

Every number is the run's task's (:mod:`omnifm.bench.metrics`): its **headline** metric
(segmentation: Dice, the mean of WT/TC/ET; classification: accuracy) ranks, is tuned on and is
compared; the tables show it beside the task's other metrics (segmentation WT / TC / ET,
classification macro-F1 and AUC). Per run (:func:`run_stats`):

- **test** scores: the test split, evaluated once after the last round (mean over sites of each
  metric, the worst site's headline). This is the number the final tables rank by and the paired
  comparisons use. Runs without a test split fall back to the final validation scores.
- **validation** headline of the final round and the mean of the last ``K`` rounds (is the curve flat?).
- bytes per client per round (mean over rounds and sites), wall time, step / retrieval timings.

Per (group, label, section): mean ± sample std over seeds (:func:`summarize`); a section is the
data setting plus, for other tasks or partial participation, the scenario
(:func:`omnifm.bench.metrics.section`). Paired comparisons
against OmniFM (:func:`comparison_table`) use the same seeds of both methods: the mean difference,
a bootstrap 95 % CI, the Wilcoxon signed-rank p-value and its Holm correction across the
comparisons of the table, both with the seed as the unit and with the (seed, site) cell as the unit
(:mod:`omnifm.bench.stats`). Diagnostics (:func:`diagnostics_table`) are final-round means over
sites and seeds of what the run recorded under ``diagnostics``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnifm.bench.metrics import (
    DEFAULT_HEADLINE,
    headline,
    headline_label,
    headline_parts,
    metric_label,
    metric_names,
    section,
    shown_metrics,
)
from omnifm.bench.record import read_runs, write_csv
from omnifm.bench.settings import BASELINE_SETTINGS, SETTINGS
from omnifm.bench.stats import holm, paired_summary
from omnifm.bench.tune import last_k_score, tuning_markdown

REFERENCE = "omnifm"
LAST_K = 3
LONG_TITLE = 30  # characters of a section name above which plot titles shrink
PRIMARY_SETTING = "cross-modality"  # diagnostics and costs are shown for its sections
DIAGNOSTIC_KEYS = ("token_cos_within", "token_cos_across", "retrieval_own_share", "retrieved_age_rounds",
                   "placebo_{headline}_delta", "placebo_logit_rel")
BANK_KEYS = ("size", "inserted", "merged", "pruned")
MATPLOTLIB_HINT = "plots skipped: matplotlib is not installed (pip install -e \".[bench]\" or pip install matplotlib)"


def _nanmean(values: Sequence[float]) -> float:
    valid = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(valid)) if valid else math.nan


def _test_sites(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The run's per-site test scores, or its final validation scores when it has no test split."""
    return run.get("test") or run["rounds"][-1]["sites"]


def run_stats(run: dict[str, Any], last_k: int = LAST_K) -> dict[str, float]:
    """One run's numbers (see the module docstring): every shown metric on validation (final round)
    and test, ``lastk``, ``worst`` / ``test_worst`` (headline), costs."""
    head, metrics = headline(run), shown_metrics(run)
    final = run["rounds"][-1]["sites"]
    test = _test_sites(run)
    cells = [m for r in run["rounds"] for m in r["sites"].values()]
    stats = {k: _nanmean([m.get(k, math.nan) for m in final.values()]) for k in metrics}
    stats.update({f"test_{k}": _nanmean([m.get(k, math.nan) for m in test.values()]) for k in metrics})
    stats.update({
        "lastk": last_k_score(run, last_k),
        "worst": _worst(final, head),
        "test_worst": _worst(test, head),
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


def _worst(sites: dict[str, dict[str, float]], key: str) -> float:
    return min((d for d in (m[key] for m in sites.values()) if not math.isnan(d)), default=math.nan)


def summarize(runs: list[dict[str, Any]], last_k: int = LAST_K) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``{(group, label, section): {"n": seeds, "headline": key, "metrics": [shown keys], metric: (mean, std), ...}}``
    over seeds."""
    grouped: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    task: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in runs:
        cfg = run["config"]
        key = (cfg["group"], cfg["label"], section(cfg))
        grouped[key].append(run_stats(run, last_k))
        task.setdefault(key, {"headline": headline(run), "metrics": shown_metrics(run)})
    return {key: {**_over_seeds(values), **task[key]} for key, values in grouped.items()}


def _over_seeds(values: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(values)}
    for key in values[0]:
        column = [v.get(key, math.nan) for v in values if not math.isnan(v.get(key, math.nan))]
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
    score = v[f"test_{v['headline']}"][0]
    return -1.0 if math.isnan(score) else score


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table_head(cells: Sequence[str]) -> list[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


def _names(metrics: list[str]) -> tuple[str, str, list[str]]:
    """``(headline, its label, the labels of the other shown metrics)``."""
    head = metrics[0]
    return head, metric_label(head, head), [metric_label(k, head) for k in metrics[1:]]


def main_table(summary: dict, setting: str, last_k: int = LAST_K) -> str:
    """Markdown table of the main algorithms in one section, best test headline first."""
    rows = sorted(((k[1], v) for k, v in summary.items() if k[0] == "main" and k[2] == setting), key=lambda r: -_key(r[1]))
    if not rows:
        return ""
    metrics = rows[0][1]["metrics"]
    head, name, others = _names(metrics)
    lines = _table_head([
        "algorithm", "lr", f"test {headline_label(metrics)}", *(f"test {o}" for o in others), "worst site (test)",
        f"val {name}, final round", f"val {name}, mean of last {last_k}", "up KiB/round", "down KiB/round",
        "wall s/run", "seeds",
    ])
    for label, v in rows:
        lines.append(_row([
            label, _lrs(v["lr"]), *(fmt(v[f"test_{k}"]) for k in metrics), fmt(v["test_worst"]), fmt(v[head]),
            fmt(v["lastk"]), _kb(v["up_kb"]), _kb(v["down_kb"]), f"{v['wall_s'][0]:.0f}", str(v["n"]),
        ]))
    return "\n".join(lines)


def _cells(runs: list[dict[str, Any]], group: str, setting: str, key: str | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """``{label: {seed: {site: test headline (or metric key)}}}`` of one group and section."""
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for run in runs:
        cfg = run["config"]
        if cfg["group"] == group and section(cfg) == setting:
            metric = key or headline(run)
            out[cfg["label"]][cfg["seed"]] = {s: float(m[metric]) for s, m in _test_sites(run).items()}
    return out


def _headline_name(runs: list[dict[str, Any]], setting: str | None = None) -> str:
    """The label of the headline of the runs (of one section): ``Dice``, ``accuracy``, ..."""
    for run in runs:
        if setting is None or section(run["config"]) == setting:
            return metric_label(headline(run), headline(run))
    return metric_label(DEFAULT_HEADLINE, DEFAULT_HEADLINE)


def _modalities(runs: list[dict[str, Any]], setting: str) -> dict[str, str]:
    for run in runs:
        if section(run["config"]) == setting and run.get("sites"):
            return {site: info.get("modality", site) for site, info in run["sites"].items()}
    return {}


def modality_table(runs: list[dict[str, Any]], setting: str) -> str:
    """Test headline per site (its modality), mean over seeds, per main algorithm."""
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
    """Paired test-headline differences ``label - reference`` per label of ``group``, seed and cell units,
    with Holm-adjusted Wilcoxon p-values across the returned comparisons."""
    cells = _cells(runs, group, setting)
    ref = _cells(runs, "main", setting).get(reference, {})
    return _with_holm([_paired(label, cells[label], ref) for label in sorted(cells)
                       if not (label == reference and group == "main")])


def _paired(label: str, mine: dict[int, dict[str, float]], ref: dict[int, dict[str, float]]) -> dict[str, Any]:
    """``mine - ref`` on their common seeds: per seed (site means) and per seed x site cell."""
    seeds = sorted(set(mine) & set(ref))
    by_seed = [_nanmean(list(mine[s].values())) - _nanmean(list(ref[s].values())) for s in seeds]
    by_cell = [mine[s][site] - ref[s][site] for s in seeds for site in mine[s] if site in ref[s]]
    return {"label": label, "seed": paired_summary(by_seed), "cell": paired_summary(by_cell)}


def _with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with Holm-adjusted Wilcoxon p-values across them, per unit."""
    for unit in ("seed", "cell"):
        for row, adjusted in zip(rows, holm([row[unit]["p_wilcoxon"] for row in rows])):
            row[unit]["p_holm"] = adjusted
    return rows


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")


def _ci(summary: dict[str, float]) -> str:
    if math.isnan(summary["mean"]):
        return "n/a"
    ci = "" if math.isnan(summary["ci_low"]) else f" [{summary['ci_low']:+.3f}, {summary['ci_high']:+.3f}]"
    return f"{summary['mean']:+.3f}{ci}"


def comparison_table(runs: list[dict[str, Any]], setting: str, group: str = "main") -> str:
    """Markdown of :func:`comparisons`: Δ test headline vs OmniFM, 95 % CI, Wilcoxon p, Holm p per unit."""
    rows = comparisons(runs, setting, group)
    if not rows:
        return ""
    name = _headline_name(runs, setting)
    lines = [
        f"| {group} vs {REFERENCE} | seeds | Δ test {name} [95 % CI] (seed unit) | p Wilcoxon | p Holm "
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


def baseline_comparisons(runs: list[dict[str, Any]], setting: str, baseline: str, key: str | None = None) -> list[dict[str, Any]]:
    """Paired test differences of each main label between two sections on the same cases
    (:data:`omnifm.bench.settings.BASELINE_SETTINGS`): ``label in setting - label in baseline``, same seeds
    and sites, seed and cell units, Holm across the labels."""
    mine, theirs = _cells(runs, "main", setting, key), _cells(runs, "main", baseline, key)
    return _with_holm([_paired(label, mine[label], theirs[label]) for label in sorted(set(mine) & set(theirs))])


def baseline_table(runs: list[dict[str, Any]], setting: str, baseline: str) -> str:
    """Markdown of :func:`baseline_comparisons`: the headline as :func:`comparison_table` shows it, then each of
    its parts (WT / TC / ET) in the seed × site unit (Δ, 95 % CI, Holm p across the labels)."""
    rows = baseline_comparisons(runs, setting, baseline)
    if not rows:
        return ""
    run = next(r for r in runs if section(r["config"]) == setting)
    metrics, name = metric_names(run), _headline_name(runs, setting)
    parts = [k for k in metrics[1:] if k.startswith(f"{metrics[0]}_")]
    by_part = {k: {r["label"]: r["cell"] for r in baseline_comparisons(runs, setting, baseline, k)} for k in parts}
    lines = _table_head([
        "algorithm", "seeds", f"Δ test {name} [95 % CI] (seed unit)", "p Wilcoxon", "p Holm", "cells",
        "Δ [95 % CI] (seed × site unit)", "p Wilcoxon", "p Holm",
        *(f"Δ {metric_label(k, metrics[0])} [95 % CI] (cells), p Holm" for k in parts),
    ])
    for row in rows:
        s, c = row["seed"], row["cell"]
        lines.append(_row([
            row["label"], str(s["n"]), _ci(s), _p(s["p_wilcoxon"]), _p(s["p_holm"]), str(c["n"]), _ci(c),
            _p(c["p_wilcoxon"]), _p(c["p_holm"]),
            *(f"{_ci(by_part[k][row['label']])}, {_p(by_part[k][row['label']]['p_holm'])}" for k in parts),
        ]))
    return "\n".join(lines)


def _baseline_sections(sections: list[str]) -> list[tuple[str, str]]:
    """``(section, baseline section)`` of every :data:`BASELINE_SETTINGS` pair the report has."""
    def base(name: str) -> str:
        return name.split(" [")[0]

    return [(a, b) for setting, baseline in BASELINE_SETTINGS.items()
            for a in sections if base(a) == setting for b in sections if base(b) == baseline]


def headroom(summary: dict, setting: str) -> dict[str, float]:
    """Central − Local on the test split and on the validation mean of the last K rounds (NaN if missing)."""
    central, local = summary.get(("main", "central", setting)), summary.get(("main", "local", setting))
    if not central or not local:
        return {"test": math.nan, "lastk": math.nan}
    test = f"test_{central['headline']}"
    return {k: central[m][0] - local[m][0] for k, m in (("test", test), ("lastk", "lastk"))}


def ablation_table(runs: list[dict[str, Any]], group: str, setting: str = "cross-modality") -> str:
    """OmniFM (main group) and the ``group`` variants in one section; paired test-headline differences
    vs OmniFM on the same seeds (seed unit; see :func:`comparison_table` for the tests)."""
    summary = summarize(runs)
    cells, ref = _cells(runs, group, setting), _cells(runs, "main", setting).get(REFERENCE, {})
    labels = ([REFERENCE] if ref else []) + sorted(k[1] for k in summary if k[0] == group and k[2] == setting)
    if not labels:
        return ""
    metrics = summary[("main", labels[0], setting) if labels[0] == REFERENCE else (group, labels[0], setting)]["metrics"]
    _, name, others = _names(metrics)
    lines = _table_head(["variant", f"test {name}", *(f"test {o}" for o in others), "seeds", f"{REFERENCE}, same seeds",
                         f"Δ test {name} (paired, mean ± std)"])
    for label in labels:
        key = ("main", label, setting) if label == REFERENCE else (group, label, setting)
        v, mine = summary[key], ref if label == REFERENCE else cells[label]
        seeds = sorted(set(mine) & set(ref))
        ref_mean = _nanmean([_nanmean(list(ref[s].values())) for s in seeds])
        diffs = [_nanmean(list(mine[s].values())) - _nanmean(list(ref[s].values())) for s in seeds]
        delta = "n/a" if not diffs else fmt((float(np.mean(diffs)), statistics.stdev(diffs) if len(diffs) > 1 else math.nan))
        delta = delta if delta.startswith(("-", "n")) else "+" + delta
        lines.append(_row([label, *(fmt(v[f"test_{k}"]) for k in metrics), ",".join(map(str, sorted(mine))),
                           f"{ref_mean:.3f}", delta]))
    return "\n".join(lines)


def diagnostics_summary(runs: list[dict[str, Any]], setting: str) -> dict[str, dict[str, float]]:
    """``{label: {key: final-round mean over sites, then seeds}}`` for the runs' recorded diagnostics."""
    per_label: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        cfg, diag = run["config"], run.get("diagnostics") or []
        if section(cfg) != setting or cfg["group"] not in ("main", "ablation") or not diag:
            continue
        last = diag[-1] if isinstance(diag[-1], dict) else {}
        sites = last.get("sites") or {}
        for key in {k for values in sites.values() for k in values}:
            per_label[cfg["label"]][key].append(_nanmean([values.get(key, math.nan) for values in sites.values()]))
        for key, value in (last.get("bank") or {}).items():
            per_label[cfg["label"]][f"bank_{key}"].append(float(value))
    return {label: {k: _nanmean(v) for k, v in values.items()} for label, values in sorted(per_label.items())}


def diagnostics_table(runs: list[dict[str, Any]], setting: str = "cross-modality") -> str:
    """Markdown of :func:`diagnostics_summary`; algorithms that recorded nothing are left out.

    With partial participation a site that was not sampled in the final round reports nothing for it:
    the means are over the sites that trained then.
    """
    summary = diagnostics_summary(runs, setting)
    present = {k for values in summary.values() for k in values}
    head = next((headline(r) for r in runs if section(r["config"]) == setting), DEFAULT_HEADLINE)
    known = [k.format(headline=head) for k in DIAGNOSTIC_KEYS]
    keys = [k for k in (*known, *(f"bank_{b}" for b in BANK_KEYS)) if k in present]
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
    step covers one step of each. With partial participation the step and retrieval times are over
    the sites that trained, the round time over the rounds.
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
    """The sections in report order: the settings in :data:`SETTINGS` order, then the other sections
    by their setting, full participation first, then by name."""
    known = [s for s in SETTINGS if any(k[2] == s for k in summary)]
    rest = {k[2] for k in summary} - set(known)

    def order(name: str) -> tuple[int, bool, str]:
        base = name.split(" [")[0]
        return (SETTINGS.index(base) if base in SETTINGS else len(SETTINGS), "participation=" in name, name)

    return known + sorted(rest, key=order)


def _primary(sections: list[str]) -> list[str]:
    """The sections of :data:`PRIMARY_SETTING` (diagnostics and costs are shown for them)."""
    return [s for s in sections if s == PRIMARY_SETTING or s.startswith(f"{PRIMARY_SETTING} [")]


def markdown(runs: list[dict[str, Any]], last_k: int = LAST_K) -> str:
    """The whole report: LR selection, per section main / per-site / paired / headroom, ablations,
    sensitivity, diagnostics, costs."""
    reported = [r for r in runs if r["config"]["group"] != "tuning"]
    tuning = tuning_markdown(runs, last_k)
    tuned = _headline_name([r for r in runs if r["config"]["group"] == "tuning"])
    parts = ([f"### Learning rate per method (validation {tuned}, mean of the last {last_k} rounds, tuning seeds)", "",
              tuning, ""] if tuning else [])
    summary = summarize(reported, last_k)
    sections = _settings(summary)
    for setting in sections:
        if not any(k[0] == "main" and k[2] == setting for k in summary):
            continue
        name = _headline_name(reported, setting)
        tested = all(summary[k]["has_test"][0] == 1.0 for k in summary if k[0] == "main" and k[2] == setting)
        what = f"test {name} (once, after the last round)" if tested else \
            f"NO test split: the test columns are final validation {name}"
        parts += [f"### {setting}: {what}, mean ± std over seeds", "", main_table(summary, setting, last_k), ""]
        room = headroom(summary, setting)
        if not math.isnan(room["test"]):
            parts += [f"Central − Local: {room['test']:+.3f} test {name}, {room['lastk']:+.3f} validation {name} "
                      f"(mean of the last {last_k} rounds).", ""]
        parts += [f"Per site (test {name}, mean over seeds):", "", modality_table(reported, setting), ""]
        table = comparison_table(reported, setting)
        if table:
            parts += [f"Paired differences vs {REFERENCE} (test {name}):", "", table, ""]
    for setting, baseline in _baseline_sections(sections):
        name = _headline_name(reported, setting)
        parts += [f"### {setting} vs {baseline}: each method on the same sites, cases, splits and seeds (test {name}, "
                  f"{setting.split(' [')[0]} − {baseline})", "", baseline_table(reported, setting, baseline), ""]
    for group, title in (("ablation", "Ablations (cross-modality)"), ("sensitivity", "Sensitivity: lambda and top-k (cross-modality)")):
        if any(k[0] == group for k in summary):
            parts += [f"### {title}", "", ablation_table(reported, group), "", comparison_table(reported, "cross-modality", group), ""]
    primary = _primary(sections) or sections  # a grid without the primary setting (fusion-pairs): each of its sections
    for setting in primary:
        diagnostics = diagnostics_table(reported, setting)
        if diagnostics:
            parts += [f"### Diagnostics ({setting}, final round, mean over sites and seeds)", "", diagnostics, ""]
    costs = (primary or [PRIMARY_SETTING])[0]
    parts += [f"### Time per step, retrieval, aggregation ({costs}, in-process)", "", cost_table(summary, costs), ""]
    return "\n".join(parts)


def plot_curves(runs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``<headline>_<section>.png`` (main group) and ``<headline>_ablation.png``: the validation headline
    (segmentation: Dice, the mean of WT/TC/ET) and the task's second shown metric (WT; macro-F1) after
    each round's aggregation, averaged over sites; line = mean over seeds, band = ± std. Without
    matplotlib: prints an install hint and returns ``[]``."""
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
    settings = _settings({(r["config"]["group"], r["config"]["label"], section(r["config"])): None for r in runs})
    panels = [(s, "main", s) for s in settings] + [("ablation", "ablation", "cross-modality")]
    for name, group, setting in panels:
        mine = [run for run in runs if run["config"]["group"] == group and section(run["config"]) == setting]
        if not mine:
            continue
        metrics = shown_metrics(mine[0])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, key in zip(axes, metrics[:2]):
            title, ylabel = _panel_labels(metrics, key)
            _plot_panel(ax, _curves(runs, group, setting, key, with_reference=group != "main"))
            ax.set(xlabel="round", ylabel=ylabel, title=f"{name}: {title} after aggregation")
            if len(name) > LONG_TITLE:  # a scenario's section name: smaller, so the two panels' titles do not overlap
                ax.title.set_fontsize(8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"{metrics[0]}_{re.sub(r'[^A-Za-z0-9_.=+-]+', '_', name).strip('_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_baseline_bars(runs: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``<headline>_<setting>_vs_<baseline>.png`` per :data:`BASELINE_SETTINGS` pair in the runs: one panel per
    shown metric (segmentation: Dice, WT, TC, ET), test score per main method, a bar per setting
    (mean over seeds of the site mean, whisker = ± std over seeds). Without matplotlib: ``[]``."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(runs)
    paths = []
    for setting, baseline in _baseline_sections(_settings(summary)):
        labels = sorted({k[1] for k in summary if k[0] == "main" and k[2] == setting}
                        & {k[1] for k in summary if k[0] == "main" and k[2] == baseline})
        if not labels:
            continue
        metrics = summary[("main", labels[0], setting)]["metrics"]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), sharey=True)
        x = np.arange(len(labels))
        for ax, key in zip(np.atleast_1d(axes), metrics):
            for j, name in enumerate((setting, baseline)):
                pairs = [summary[("main", label, name)][f"test_{key}"] for label in labels]
                ax.bar(x + (j - 0.5) * 0.4, [m for m, _ in pairs], 0.4, yerr=[0 if math.isnan(e) else e for _, e in pairs],
                       capsize=2, label=name)
            ax.set_xticks(x, labels, rotation=30, fontsize=8)
            ax.set_title(f"test {metric_label(key, metrics[0])}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=7)
        fig.tight_layout()
        stem = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", f"{setting.split(' [')[0]}_vs_{baseline}").strip("_")
        path = Path(out_dir) / f"{metrics[0]}_{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _panel_labels(metrics: list[str], key: str) -> tuple[str, str]:
    """A panel's title and y label: ``mean of WT/TC/ET`` / ``validation Dice (mean of WT/TC/ET), mean over sites``."""
    head, name, _ = _names(metrics)
    parts = headline_parts(metrics)
    title = (f"mean of {'/'.join(parts)}" if parts else name) if key == head else metric_label(key, head)
    within = key == head and title != name or key.startswith(f"{head}_")
    return title, f"validation {name} ({title}), mean over sites" if within else f"validation {title}, mean over sites"


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
        if wanted and section(cfg) == setting:
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
    reported = [r for r in runs if r["config"]["group"] != "tuning"]
    plots = plot_curves(reported, results_dir)
    plots += plot_baseline_bars(reported, results_dir) if plots else []
    if plots:
        path.write_text(text + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    return path
