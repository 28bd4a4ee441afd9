"""Per-case classes from a spreadsheet (``omnifm-prepare-data --classes labels.csv``).

The CSV's first row is a header. The case column is the one headed ``case`` and the class column
the one headed ``class`` (case-insensitive); without those headers, the first two columns. The
delimiter is the one of ``,`` ``;`` or tab the header uses most (spreadsheets in many locales
write ``;``); the file is UTF-8 (a BOM is fine). Cells are trimmed; empty rows are ignored.

The case cell is the case's **name as it appears in the input folder**
(:func:`case_name`): ``<name>`` of ``<name>_image.nii.gz``, of ``images/<name>.nii.gz`` and of a
case folder ``<name>/image.nii.gz``; the folder holding a DICOM series; the case folder of a paired
case. The class cell is a class name (with ``--class-names``, one of them).

What happens to each problem (:func:`attach_classes`), reported by CSV line number or by case
index and anonymous id, never by the name, a path or the CSV's value (which may be a patient's
name or id):

- a row with a blank case or class cell, a class not in ``--class-names``, or a case name that
  matches no case of the input: the row is ignored;
- two rows giving one case different classes, or a name shared by several cases (in different
  folders): those cases get no class;
- a converted case no row names: it is **converted and listed without a class**. The images are
  kept (conversion can take long; fix the CSV and re-run, or add ``"class"`` to the datalist
  entry by hand); the integrity gate of a case-mode job reports and excludes it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClassTable", "attach_classes", "case_name", "read_class_csv"]

_DELIMITERS = (",", ";", "\t")


@dataclass
class ClassTable:
    """A parsed classes CSV: ``rows[name]`` = ``[(line, class), ...]``; ``problems`` ``(line, text)`` of the
    rows left out; ``ignored[name]`` their lines, by the case they name."""

    rows: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)
    ignored: dict[str, list[int]] = field(default_factory=dict)


def read_class_csv(path: str | Path, class_names: Sequence[str] | None = None) -> ClassTable:
    """Read a classes CSV (see the module docstring).

    Raises:
        ValueError: the file is missing, not UTF-8, has no header, fewer than two columns or no row.
    """
    text = _read_text(Path(path))
    lines = text.splitlines()
    header = next((line for line in lines if line.strip()), None)
    if header is None:
        raise ValueError("--classes: the CSV is empty; write a header row (e.g. case,class) and one row per case")
    delimiter = max(_DELIMITERS, key=header.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    head = [cell.strip().lower() for cell in next(row for row in reader if any(c.strip() for c in row))]
    if len(head) < 2:
        raise ValueError("--classes: the CSV needs two columns, the case and its class (header e.g. case,class)")
    columns = (head.index("case"), head.index("class")) if {"case", "class"} <= set(head) else (0, 1)
    table = ClassTable()
    for row in reader:
        _read_row(reader.line_num, row, columns, class_names, table)
    if not table.rows and not table.problems:
        raise ValueError("--classes: the CSV has a header but no row; add one row per case")
    return table


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ValueError("--classes: no such file; give the CSV of case names and classes")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("--classes: the CSV is not UTF-8 text; save it as 'CSV UTF-8'") from None
    except OSError as err:
        raise ValueError(f"--classes: the CSV cannot be read ({err.strerror or type(err).__name__})") from None


def _read_row(line: int, row: list[str], columns: tuple[int, int], class_names: Sequence[str] | None,
              table: ClassTable) -> None:
    cells = [cell.strip() for cell in row]
    if not any(cells):
        return
    name, value = (cells[i] if i < len(cells) else "" for i in columns)
    if not name:
        problem = "no case name"
    elif not value:
        problem = "blank class"
    elif class_names is not None and value not in class_names:
        problem = f"class is not one of --class-names {list(class_names)}"
    else:
        table.rows.setdefault(name, []).append((line, value))
        return
    table.problems.append((line, f"CSV line {line}: {problem}; row ignored"))
    if name:
        table.ignored.setdefault(name, []).append(line)


def case_name(case: dict[str, Any], root: Path) -> str:
    """A discovered case's name in the input folder (the module docstring); ``""`` when it has none.

    Examples::

        >>> case_name({"image": "/in/images/P17.nii.gz"}, Path("/in"))
        'P17'
        >>> case_name({"image": "/in/a/P17_image.nii.gz"}, Path("/in"))
        'P17'
        >>> case_name({"images": {"ct": "/in/P17/ct.nii.gz"}}, Path("/in"))
        'P17'
    """
    if "images" in case:
        folder = Path(next(iter(case["images"].values()))).parent
    elif isinstance(case["image"], (list, tuple)):  # a DICOM series: the folder holding its files
        folder = Path(case["image"][0]).parent
    else:
        path = Path(case["image"])
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
        if stem.endswith("_image"):
            return stem[: -len("_image")]
        if path.parent.name == "images":
            return stem
        folder = path.parent
    return "" if folder.resolve() == root.resolve() else folder.name


def attach_classes(cases: list[dict[str, Any]], entries: list[dict[str, Any]], table: ClassTable,
                   root: str | Path) -> list[str]:
    """Set ``"class"`` on the datalist ``entries`` of the converted ``cases`` from ``table``; the problems.

    Args:
        cases: every discovered case (``id``, ``image`` or ``images``), in index order.
        entries: the datalist entries of the converted ones (``id``; changed in place).
        table: :func:`read_class_csv`'s result.
        root: the input folder.
    """
    names = [case_name(case, Path(root)) for case in cases]
    index = {case["id"]: i for i, case in enumerate(cases)}
    rows, problems, used = list(table.problems), [], set()
    for entry in entries:
        i = index[entry["id"]]
        value, problem = _class_of(names, i, table)
        used.add(names[i])
        if value is not None:
            entry["class"] = value
        else:
            problems.append(f"case {i} ({entry['id']}): {problem}; converted without a class")
    converted = {index[e["id"]] for e in entries}
    for name, named in table.rows.items():
        if name not in used:
            skipped = [i for i, n in enumerate(names) if n == name and i not in converted]
            why = f"its case ({cases[skipped[0]]['id']}) was skipped" if skipped else "names no case in the input folder"
            rows += [(line, f"CSV line {line}: {why}; row ignored") for line, _ in named]
    return [text for _, text in sorted(rows)] + problems


def _class_of(names: list[str], i: int, table: ClassTable) -> tuple[str | None, str]:
    """``(class, "")`` of case ``i``, or ``(None, why not)``."""
    rows = table.rows.get(names[i]) if names[i] else None
    if not rows:
        ignored = table.ignored.get(names[i]) if names[i] else None
        if ignored:
            return None, f"its CSV row was ignored (line {', '.join(map(str, ignored))})"
        return None, "no row of the CSV names it"
    shared = names.count(names[i])
    if shared > 1:
        return None, f"CSV line {rows[0][0]} names {shared} cases (the same name in several folders; rename them apart)"
    values = {value for _, value in rows}
    if len(values) > 1:
        return None, f"CSV lines {', '.join(str(line) for line, _ in rows)} give it different classes"
    return values.pop(), ""
