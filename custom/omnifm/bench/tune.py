"""Per-method learning-rate selection on the validation split (never the test split).

A tuning run's score is its validation headline metric (the task's: segmentation Dice,
classification accuracy; mean over sites, NaN sites left out) averaged over the last ``last_k`` rounds; a learning rate's score is the mean over the tuning seeds; the
algorithm keeps the learning rate with the highest score (ties: the smaller learning rate). When the
tuning runs span several settings (a preset whose settings run different networks, e.g.
``fedunetmm-quick``), the choice is per algorithm *and setting*, keyed ``algorithm@setting``
(:func:`tuning_key`).

Examples::

    >>> runs = [{"config": {"algorithm": "fedavg", "group": "tuning", "train": {"learning_rate": lr}},
    ...          "rounds": [{"sites": {"a": {"dice": d}}}]} for lr, d in ((0.01, 0.3), (0.03, 0.2))]
    >>> select_learning_rates(runs, last_k=1)
    {'fedavg': 0.01}
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from omnifm.bench.metrics import headline


def last_k_score(run: dict[str, Any], last_k: int, key: str | None = None) -> float:
    """Validation ``key`` (default: the run's headline; mean over sites) averaged over the run's last
    ``last_k`` rounds (NaN if none)."""
    key = key or headline(run)
    values = []
    for record in run["rounds"][-last_k:]:
        site_values = [float(m[key]) for m in record["sites"].values() if not math.isnan(float(m[key]))]
        if site_values:
            values.append(float(np.mean(site_values)))
    return float(np.mean(values)) if values else math.nan


def tuning_key(algorithm: str, setting: str) -> str:
    """The key of a learning rate tuned per setting: ``omnifm@sequence-subsets``."""
    return f"{algorithm}@{setting}"


def tuning_scores(runs: Sequence[dict[str, Any]], last_k: int) -> dict[str, dict[float, float]]:
    """``{algorithm: {learning_rate: score}}`` over the ``tuning`` group's runs (mean over seeds); the keys are
    :func:`tuning_key` ``algorithm@setting`` when the tuning runs span several settings."""
    scores: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    tuning = [run["config"] for run in runs if run["config"].get("group") == "tuning"]
    per_setting = len({cfg.get("setting") for cfg in tuning}) > 1
    for run in runs:
        cfg = run["config"]
        if cfg.get("group") == "tuning":
            key = tuning_key(cfg["algorithm"], cfg["setting"]) if per_setting else cfg["algorithm"]
            scores[key][float(cfg["train"]["learning_rate"])].append(last_k_score(run, last_k))
    return {
        algorithm: {lr: _nanmean(values) for lr, values in sorted(by_lr.items())}
        for algorithm, by_lr in sorted(scores.items())
    }


def select_learning_rates(runs: Sequence[dict[str, Any]], last_k: int) -> dict[str, float]:
    """The best learning rate per algorithm (see the module docstring)."""
    chosen = {}
    for algorithm, by_lr in tuning_scores(runs, last_k).items():
        ranked = sorted(by_lr.items(), key=lambda item: (-(item[1] if not math.isnan(item[1]) else -1.0), item[0]))
        chosen[algorithm] = ranked[0][0]
    return chosen


def tuning_markdown(runs: Sequence[dict[str, Any]], last_k: int) -> str:
    """Markdown table: validation score per algorithm and learning rate, the chosen one in bold."""
    scores = tuning_scores(runs, last_k)
    if not scores:
        return ""
    rates = sorted({lr for by_lr in scores.values() for lr in by_lr})
    chosen = select_learning_rates(runs, last_k)
    lines = ["| algorithm | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |", "|---|" + "---|" * (len(rates) + 1)]
    for algorithm, by_lr in scores.items():
        cells = []
        for lr in rates:
            value = by_lr.get(lr, math.nan)
            text = "n/a" if math.isnan(value) else f"{value:.3f}"
            cells.append(f"**{text}**" if lr == chosen[algorithm] else text)
        lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {chosen[algorithm]:g} |")
    return "\n".join(lines)


def _nanmean(values: Sequence[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return float(np.mean(valid)) if valid else math.nan
