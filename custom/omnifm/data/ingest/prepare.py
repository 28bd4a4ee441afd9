"""Preparing a site's dataset: every discovered case converted to anonymous, RAS-oriented NIfTI with
a datalist, one bad case skipped with a path-free reason (:func:`prepare_dataset`,
:class:`PrepareSummary`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor, NibabelWriter
from monai.utils import convert_to_numpy

from omnifm.data.ingest.arguments import _check_modality, _check_spacing
from omnifm.data.ingest.common import CaseError
from omnifm.data.ingest.discovery import _discover
from omnifm.data.ingest.loader import _integral, _load_tensors

DATALIST_NAME = "datalist.json"


@dataclass
class SkippedCase:
    """A case that was not converted: its position, anonymous id and a path-free reason."""

    index: int
    case_id: str
    reason: str


@dataclass
class PrepareSummary:
    """What :func:`prepare_dataset` did; contains no path, name or tag value."""

    cases_found: int
    converted: list[str] = field(default_factory=list)
    skipped: list[SkippedCase] = field(default_factory=list)
    slices: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    class_problems: list[str] = field(default_factory=list)
    classed: int | None = None  # converted cases given a class from a CSV; None: no CSV was given

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_read / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``skipped`` as ``{"index", "id", "reason"}`` dicts; with a classes CSV also
        ``classed`` and ``class_problems``)."""
        return {
            "cases_found": self.cases_found,
            "converted": list(self.converted),
            "skipped": [{"index": s.index, "id": s.case_id, "reason": s.reason} for s in self.skipped],
            "slices": self.slices,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "slices_per_second": round(self.slices_per_second, 1),
            "megabytes_per_second": round(self.megabytes_per_second, 2),
            "notes": list(self.notes),
            **({} if self.classed is None else {"classed": self.classed, "class_problems": list(self.class_problems)}),
        }

    def table(self) -> str:
        """Markdown table of the totals, then one row per skipped case and the notes."""
        rows = [
            ("cases found", self.cases_found),
            ("cases converted", len(self.converted)),
            ("cases skipped", len(self.skipped)),
            ("slices read", self.slices),
            ("MB read", f"{self.bytes_read / 1e6:.1f}"),
            ("seconds", f"{self.seconds:.2f}"),
            ("slices/s", f"{self.slices_per_second:.1f}"),
            ("MB/s", f"{self.megabytes_per_second:.2f}"),
        ]
        lines = ["| item | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        if self.skipped:
            lines += ["", "| # | case | skipped because |", "|---|---|---|"]
            lines += [f"| {s.index} | {s.case_id} | {s.reason} |" for s in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"class: {problem}" for problem in self.class_problems]
        return "\n".join(lines)


def _source_bytes(source: Any) -> int:
    paths = [Path(p) for p in source] if isinstance(source, (list, tuple)) else [Path(source)]
    files = [f for p in paths for f in (p.iterdir() if p.is_dir() else [p])]
    return sum(f.stat().st_size for f in files if f.is_file())


def _save_nifti(tensor: MetaTensor, path: Path, dtype: Any) -> None:
    """Write a ``(1, H, W, D)`` MetaTensor with its affine through MONAI's ``NibabelWriter``."""
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(tensor, channel_dim=0)
    affine = convert_to_numpy(tensor.affine, dtype=np.float64)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.partial.nii.gz")
    writer.write(tmp)
    os.replace(tmp, path)


def _image_dtype(image: np.ndarray) -> type:
    """int16 when every value is an integer in its range (typical for rescaled CT/MR), else float32."""
    if image.size and image.min() >= -32768 and image.max() <= 32767 and np.array_equal(image, np.rint(image)):
        return np.int16
    return np.float32


def _label_dtype(label: np.ndarray) -> type:
    raw = _integral(label)
    return np.uint8 if raw.size == 0 or (raw.min() >= 0 and raw.max() <= 255) else np.int32


def _convert(case: dict[str, Any], out: Path, spacing: tuple[float, float, float] | None) -> tuple[dict, int]:
    """Write one case; returns its datalist entry and the number of slices read."""
    data, slices = _load_tensors(case, spacing)
    entry = {"id": case["id"], "image": f"images/{case['id']}.nii.gz", "label": None, "modality": case["modality"]}
    label_dtype = _label_dtype(convert_to_numpy(data["label"])) if "label" in data else None
    _save_nifti(data["image"], out / entry["image"], _image_dtype(convert_to_numpy(data["image"])))
    if label_dtype is not None:
        entry["label"] = f"labels/{case['id']}.nii.gz"
        _save_nifti(data["label"], out / entry["label"], label_dtype)
    return entry, slices


def _case_modality(case: dict[str, Any], override: str | None) -> str:
    if override is not None:
        return override
    if case["modality"] is not None:
        return case["modality"]
    if case["format"] == "nifti":
        return "t1"
    raise CaseError("unsupported DICOM modality (not MR, CT, PT or NM); pass a modality to force one")


def _check_output(input_dir: str | Path, output_dir: str | Path) -> Path:
    out = Path(output_dir).resolve()
    inp = Path(input_dir).resolve()
    if out == inp or inp in out.parents:
        raise ValueError(f"output_dir must not be inside input_dir, got {str(output_dir)!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} is a file, not a folder: choose a folder path")
    return out


def _make_output(out: Path, output_dir: str | Path) -> None:
    """Create ``images/`` and ``labels/`` in ``out`` and check that files can be written there."""
    try:
        for sub in ("images", "labels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"output_dir {str(output_dir)!r} cannot be created or written ({reason}): choose a writable folder "
            "(an existing images/ or labels/ inside it must be folders)"
        ) from None


def _attach_classes(cases: list[dict[str, Any]], entries: list[dict[str, Any]], class_table: Any,
                    input_dir: str | Path, summary: PrepareSummary) -> None:
    """Give the converted cases their CSV classes (:mod:`omnifm.data.ingest.case_classes`); no table: nothing."""
    if class_table is None:
        return
    from omnifm.data.ingest.case_classes import attach_classes

    summary.class_problems = attach_classes(cases, entries, class_table, input_dir)
    summary.classed = sum(1 for entry in entries if "class" in entry)
    summary.notes.append(f"{summary.classed} of {len(entries)} converted case(s) have a class from the CSV")


def _write_datalist(out: Path, entries: list[dict[str, Any]]) -> None:
    tmp = out / f".{DATALIST_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"cases": entries}, indent=2) + "\n")
    os.replace(tmp, out / DATALIST_NAME)


def _progress_line(index: int, total: int, case_id: str, outcome: str) -> str:
    return f"[{index + 1}/{total}] {case_id} {outcome}"


def prepare_dataset(
    input_dir: str | Path,
    output_dir: str | Path,
    fmt: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    modality: str | None = None,
    progress: bool = True,
    class_table: Any = None,
) -> PrepareSummary:
    """Convert every case under ``input_dir`` to anonymous, RAS-oriented NIfTI in ``output_dir``.

    Writes ``images/<id>.nii.gz`` (values after rescale, e.g. HU, as int16 when they are all
    integers in its range, else float32; no intensity normalisation, which happens at training
    time), ``labels/<id>.nii.gz`` (raw label values, uint8 when they fit, else int32) and
    ``datalist.json`` = ``{"cases": [{"id", "image", "label", "modality"}, ...]}`` with paths
    relative to ``output_dir`` (``label`` is ``null`` for unlabelled cases). Only converted cases
    are listed; ids of skipped cases are not reused.
    A case that fails is skipped with a path-free reason; the run never stops for one case.

    Args:
        input_dir: Folder with the site's data (see :func:`discover_cases`).
        output_dir: Output folder (created; must not be inside ``input_dir``).
        fmt: ``"dicom"``, ``"nifti"`` or ``None`` to look for both.
        spacing: Resample to this voxel spacing in mm, or ``None`` for the native grid.
        modality: Force this modality for every case (else DICOM's ``Modality``; NIfTI: ``"t1"``).
        progress: Print one line per case (index, id, outcome) to stdout.
        class_table: Per-case classes (:func:`~omnifm.data.ingest.case_classes.read_class_csv`): each
            converted case's entry gets ``"class"``; problems go to ``summary.class_problems``.

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        ValueError: If an argument is invalid (not for bad cases), including an ``output_dir``
            that is a file or cannot be created or written.
        OSError: If writing fails later (e.g. the disk fills up).
    """
    start = time.perf_counter()
    spacing = _check_spacing(spacing)
    modality = _check_modality(modality, allow_none=True)
    out = _check_output(input_dir, output_dir)
    summary = PrepareSummary(cases_found=0)
    cases = _discover(input_dir, fmt, summary.notes)
    summary.cases_found = len(cases)
    _make_output(out, output_dir)
    entries = []
    for index, case in enumerate(cases):
        outcome = _prepare_one(index, case, out, spacing, modality, summary, entries)
        if progress:
            print(_progress_line(index, len(cases), case["id"], outcome), flush=True)
    assumed = sum(1 for c in cases if c["format"] == "nifti" and modality is None)
    if assumed:
        summary.notes.append(f"modality t1 assumed for {assumed} NIfTI case(s); pass a modality to set it")
    _attach_classes(cases, entries, class_table, input_dir, summary)
    _write_datalist(out, entries)
    summary.seconds = time.perf_counter() - start
    return summary


def _prepare_one(
    index: int,
    case: dict[str, Any],
    out: Path,
    spacing: tuple[float, float, float] | None,
    modality: str | None,
    summary: PrepareSummary,
    entries: list[dict[str, Any]],
) -> str:
    """Convert one case into ``out``, recording the result in ``summary``/``entries``."""
    tick = time.perf_counter()
    try:
        if case.get("problem"):
            raise CaseError(case["problem"])
        case = {**case, "modality": _case_modality(case, modality)}
        summary.bytes_read += _source_bytes(case["image"]) + (_source_bytes(case["label"]) if case["label"] else 0)
        entry, slices = _convert(case, out, spacing)
    except CaseError as err:
        reason = str(err)
    except Exception as err:  # never let one case stop the run; the class name is path-free
        reason = f"unexpected error: {type(err).__name__}"
    else:
        entries.append(entry)
        summary.converted.append(case["id"])
        summary.slices += slices
        labelled = "labelled" if entry["label"] else "unlabelled"
        return f"ok ({entry['modality']}, {slices} slices, {labelled}, {time.perf_counter() - tick:.2f} s)"
    summary.skipped.append(SkippedCase(index=index, case_id=case["id"], reason=reason))
    return f"skipped: {reason}"
