"""The tasks of the pipeline, one folder each, behind the protocol of :mod:`omnifm.tasks.base`.

A run spec's ``task`` entry names its task with ``kind`` (``{"kind": "classification", ...}``; without
one: segmentation, which older specs and checkpoints describe). ``name`` is accepted as an alias, but
job configs use ``kind``: FLARE's component builder treats any dict with a ``name`` as a class to build. :func:`get_task` turns the entry into
the task object; :data:`TASKS` is the registry (adding a task: one folder, one line here).
"""

from __future__ import annotations

from typing import Any

from omnifm.tasks.base import Case, Task

TASKS: dict[str, str] = {
    "segmentation": "omnifm.tasks.segmentation:SegTask",
    "classification": "omnifm.tasks.classification:ClsTask",
    "super_resolution": "omnifm.tasks.super_resolution:SRTask",
    "image_fusion": "omnifm.tasks.image_fusion:FusionTask",
    "vqa": "omnifm.tasks.vqa:VQATask",
}
DEFAULT_TASK = "segmentation"

__all__ = ["Case", "DEFAULT_TASK", "TASKS", "Task", "get_task"]


def task_class(name: str) -> type[Task]:
    """The class registered under ``name`` (imported on first use: a task's network stays unloaded until needed)."""
    import importlib

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def get_task(spec: dict[str, Any] | Task | None) -> Task:
    """The task a run spec's ``task`` entry describes (a :class:`Task` passes through).

    Examples::

        >>> get_task(None).name
        'segmentation'
        >>> get_task({"kind": "segmentation", "classes": ["background", "tumour"]}).regions
        {'tumour': ('tumour',)}
    """
    if isinstance(spec, Task):
        return spec
    if spec is not None and not isinstance(spec, dict):
        raise ValueError(f"task must be a dict, got {type(spec).__name__}")
    spec = dict(spec or {})
    if "name" in spec:  # the alias
        spec.setdefault("kind", spec.pop("name"))
    return task_class(str(spec.get("kind", DEFAULT_TASK))).from_dict(spec)
