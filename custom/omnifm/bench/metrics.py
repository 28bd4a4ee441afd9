"""What a benchmark run is scored by: its task's headline metric and metric names, and its scenario.

Every run record names its task (``record["task"]``: ``name``, ``headline``, ``metrics``, written by
:func:`omnifm.bench.runner.run_one`). Older records have no such entry: their task is the one of
their run spec (``spec["task"]``; no name: segmentation) and their metric names are the keys of
their test scores (or, without a test split, the per-round keys that start with the headline).

A run's **section** (:func:`section`) is what the report puts in one table: the data setting, plus
the task when it is not segmentation, the task settings the preset set (e.g. ``class_skew=0.1``)
and the client participation when it is below 1, e.g.
``cross-modality [classification, class_skew=0.1, participation=0.5]``. Segmentation runs at full
participation keep the bare setting name (and their old run ids).

Examples::

    >>> section({"setting": "cross-modality"})
    'cross-modality'
    >>> section({"setting": "cross-modality", "participation": 0.5,
    ...          "spec_args": {"task": {"name": "classification", "class_skew": 0.1}}})
    'cross-modality [classification, class_skew=0.1, participation=0.5]'
    >>> metric_label("dice_WT", "dice"), metric_label("macro_f1", "accuracy")
    ('WT', 'macro-F1')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omnifm.tasks import DEFAULT_TASK, task_class

DEFAULT_HEADLINE = task_class(DEFAULT_TASK).headline  # the headline of records that name no task

# How tables name a metric; a key not listed is shown as it is (a headline's sub-metric
# ``<headline>_<X>`` as ``X``).
LABELS = {"dice": "Dice", "accuracy": "accuracy", "macro_f1": "macro-F1", "auc": "AUC",
          "ssim_w_avg": "ssim_w of (A+B)/2", "ssim_w_max": "ssim_w of max(A,B)"}
# Metrics the tables show per task (the JSON and CSV keep every metric); a task not listed shows all.
SHOWN = {"classification": ("accuracy", "macro_f1", "auc"),
         "image_fusion": ("ssim_w", "mi", "ssim", "l1", "ssim_w_avg", "ssim_w_max"),
         "vqa": ("accuracy", "majority", *(f"accuracy_{t}" for t in ("modality", "tumour", "hemisphere", "rim", "oedema", "size")),
                 "accuracy_unanswerable")}


def task_name(run: Mapping[str, Any]) -> str:
    """The run's task name (``record["task"]``, else its spec's, else segmentation)."""
    if isinstance(run.get("task"), Mapping):
        return str(run["task"]["name"])
    return _spec_task_name((run.get("spec") or {}).get("task"))


def _spec_task_name(task: Any) -> str:
    """A task entry's task: ``kind`` (or its alias ``name``); none: segmentation."""
    if not isinstance(task, Mapping):
        return DEFAULT_TASK
    return str(task.get("kind", task.get("name", DEFAULT_TASK)))


def headline(run: Mapping[str, Any]) -> str:
    """The metric the run is ranked, tuned and compared by (``dice``, ``accuracy``, ...)."""
    if isinstance(run.get("task"), Mapping):
        return str(run["task"]["headline"])
    name = task_name(run)
    return DEFAULT_HEADLINE if name == DEFAULT_TASK else task_class(name).headline


def metric_names(run: Mapping[str, Any]) -> list[str]:
    """The run's metric keys, headline first (see the module docstring for older records)."""
    if isinstance(run.get("task"), Mapping):
        names = list(run["task"]["metrics"])
    elif run.get("test"):
        names = list(next(iter(run["test"].values())))
    else:
        head = headline(run)
        names = [k for k in next(iter(run["rounds"][-1]["sites"].values()))
                 if k.startswith(head) and k != local_key(head)]
    head = headline(run)
    return [head] + [k for k in names if k != head]


def shown_metrics(run: Mapping[str, Any]) -> list[str]:
    """The metrics the report's tables show for this run, headline first."""
    names = metric_names(run)
    wanted = SHOWN.get(task_name(run))
    return [k for k in names if wanted is None or k in wanted]


def local_key(head: str) -> str:
    """The per-round key of a site's score right after local training (``dice_local``)."""
    return f"{head}_local"


def metric_label(key: str, head: str) -> str:
    """``Dice``, ``WT`` (a sub-metric ``dice_WT`` of headline ``dice``), ``macro-F1``, ..."""
    if key in LABELS:
        return LABELS[key]
    return key[len(head) + 1:] if key.startswith(f"{head}_") else key


def headline_parts(metrics: list[str]) -> list[str]:
    """Labels of the headline's parts (``WT``, ``TC``, ``ET``) when every other metric is one
    (``<headline>_<part>``: the headline is their mean), else ``[]``."""
    head, parts = metrics[0], [k for k in metrics[1:] if k.startswith(f"{metrics[0]}_")]
    return [metric_label(k, head) for k in parts] if parts and len(parts) == len(metrics) - 1 else []


def headline_label(metrics: list[str]) -> str:
    """The headline column: ``Dice (WT/TC/ET mean)`` when the other metrics are its parts, else its label."""
    label, parts = metric_label(metrics[0], metrics[0]), headline_parts(metrics)
    return f"{label} ({'/'.join(parts)} mean)" if parts else label


def section(config: Mapping[str, Any]) -> str:
    """The report section of a run config (see the module docstring)."""
    parts = scenario_parts(config)
    return config["setting"] + (f" [{', '.join(parts)}]" if parts else "")


def scenario_parts(config: Mapping[str, Any]) -> list[str]:
    """What sets a run apart from a segmentation run of its setting: task, task settings, participation.

    A segmentation task's ``classes`` / ``regions`` equal to the default task's are left out; a mapping
    or list setting is shown by its entries (``inputs`` of FedUNetMM: ``inputs=t1+t1ce+t2+flair``).

    Examples::

        >>> scenario_parts({"spec_args": {"task": {"kind": "segmentation", "inputs": {"t1": ["t1"], "t2": ["t2"]}}}})
        ['inputs=t1+t2']
    """
    task = (config.get("spec_args") or {}).get("task")
    parts = []
    if _spec_task_name(task) != DEFAULT_TASK:
        parts.append(_spec_task_name(task))
    if isinstance(task, Mapping):
        default = _DEFAULT_TASK_SETTINGS if _spec_task_name(task) == DEFAULT_TASK else {}
        parts += [f"{k}={_setting_text(v)}" for k, v in task.items()
                  if k not in ("kind", "name") and not (k in default and _plain(v) == default[k])]
    participation = float(config.get("participation", 1.0))
    if not math.isclose(participation, 1.0):
        parts.append(f"participation={participation:g}")
    return parts


def _setting_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "+".join(str(k) for k in value)
    if isinstance(value, (list, tuple)):
        return "+".join(str(v[0] if isinstance(v, (list, tuple)) and v else v) for v in value)
    return str(value)


def _plain(value: Any) -> Any:
    """JSON-like value with tuples as lists (for comparing a task setting with the default's)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_DEFAULT_TASK_SETTINGS = _plain(task_class(DEFAULT_TASK).from_dict(None).to_dict())
