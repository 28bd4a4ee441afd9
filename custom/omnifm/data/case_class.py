"""Checking a datalist entry's per-case class (``"class"``) for the integrity gate.

In case mode (a classification task with ``labels: "case"``) every datalist entry carries
``"class"``: one of the task's class names (surrounding spaces ignored), or that name's integer
index (0-based, in the order of the task's ``classes``). :func:`class_index` turns a value into the
index or a reason the gate reports by case index. Like the gate's other reasons, a reason never
repeats the datalist's value unless it is from the known vocabulary (a free-text field could hold a
patient's name or id): an unknown name or an out-of-range index is described, not quoted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MISSING", "class_index", "class_notes"]

MISSING = object()  # the entry has no "class" key
_JSON_TYPES = {float: "a number that is not an integer", list: "a list", dict: "an object", bool: "true/false"}


def class_index(value: Any, classes: Sequence[str]) -> tuple[int | None, str | None]:
    """``(index, None)`` for a valid ``"class"`` value, else ``(None, reason)``.

    Examples::

        >>> class_index("malignant", ("benign", "malignant"))
        (1, None)
        >>> class_index(0, ("benign", "malignant"))
        (0, None)
        >>> class_index("Malignant", ("benign", "malignant"))[1]
        "class name is not one of the task's classes ['benign', 'malignant'] (names are case-sensitive)"
    """
    names = list(classes)
    if value is MISSING or value is None:
        return None, f'no "class" in the datalist (the classifier needs each case\'s class, one of {names})'
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = _JSON_TYPES.get(type(value), f"a {type(value).__name__}")
        return None, f'"class" must be a class name (string) or its integer index, got {kind}'
    if isinstance(value, int):
        if 0 <= value < len(names):
            return value, None
        return None, f"class index out of range: must be 0 to {len(names) - 1} (the task's classes {names})"
    if not value.strip():
        return None, f'"class" is blank (one of {names} is needed)'
    if value.strip() in names:
        return names.index(value.strip()), None
    return None, f"class name is not one of the task's classes {names} (names are case-sensitive)"


def class_notes(case_class: Mapping[int, int], classes: Sequence[str]) -> list[str]:
    """Notes on the classes a site's good cases cover (``case_class``: case index -> class index).

    A site whose usable cases cover only one class still trains (its model then sees one class);
    the note says so. Names come from the task's classes, never from the datalist.

    Examples::

        >>> class_notes({0: 1, 3: 1}, ("benign", "malignant"))[0]
        "the usable cases cover only one class ('malignant', 2 cases): the site trains, but its model sees no other class"
    """
    counts = Counter(case_class.values())
    if len(counts) != 1:
        return []
    (only, n), = counts.items()
    return [f"the usable cases cover only one class ({classes[only]!r}, {n} cases): the site trains, "
            "but its model sees no other class"]


def class_counts(case_class: Mapping[int, int], classes: Sequence[str]) -> str:
    """``"benign 10, malignant 4"``: how many good cases each class has (for the site log).

    Examples::

        >>> class_counts({0: 0, 1: 1, 2: 1}, ("benign", "malignant"))
        'benign 1, malignant 2'
    """
    counts = Counter(case_class.values())
    return ", ".join(f"{name} {counts[c]}" for c, name in enumerate(classes))
