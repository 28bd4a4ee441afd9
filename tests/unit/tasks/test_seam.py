"""The task seam holds: the engine, the OmniFM wrapper and the FLARE components know no task."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from omnifm.tasks import TASKS, get_task, task_class
from omnifm.tasks.base import Task

PACKAGE = Path(__file__).resolve().parents[3] / "custom" / "omnifm"
TASK_AGNOSTIC = ("engine", "models", "fl", "algorithms", "knowledge", "losses", "modules")
TASK_NAMES = {"DiceCELoss", "DiceMetric", "UNet", "ResNet", "SegTask", "ClsTask", "SliceDataset", "region_dice"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


@pytest.mark.parametrize("package", TASK_AGNOSTIC)
def test_task_agnostic_packages_import_no_task_internals(package):
    offenders = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = {n for n in _imports(path) if n in TASK_NAMES or n.startswith("omnifm.tasks.")}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, f"task internals outside omnifm/tasks (go through omnifm.tasks.get_task): {offenders}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_fills_the_protocol_and_round_trips(name):
    cls = task_class(name)
    assert issubclass(cls, Task) and not getattr(cls, "__abstractmethods__", None)
    task = get_task({"kind": name})
    assert task.name == name and get_task(task.to_dict()) == task
    assert task.label_classes[0] == "background" and task.headline
