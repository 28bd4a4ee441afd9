"""Preparing paired cases: one patient in several co-registered modalities sharing one label.

Input layout (:func:`discover_paired`; hidden files and folders are ignored): a *case folder*
holds one image per modality, named by the modality, and the label::

    <input>/<case>/ct.nii.gz         (or ct.nii, or a folder ct/ holding one DICOM series)
    <input>/<case>/t1ce.nii.gz
    <input>/<case>/label.nii.gz

Every image must already lie on the label's grid (register and resample the modalities first):
each is checked against the label exactly as a single case is (``ingest.load_case``: affine,
orientation, shape), and a modality that fails is left out of the case with its reason while the
others are converted. A case without a label, or with no modality that converts, is skipped.
:func:`prepare_paired` writes ``images/<modality>/<id>.nii.gz``, ``labels/<id>.nii.gz`` and
``datalist.json`` with paired entries ``{"id", "images": {modality: path}, "label"}`` (the form the
integrity gate and the fusion models read), under the same privacy rules as
:func:`~omnifm.data.ingest.prepare_dataset` (anonymous ids in path order, no path in any output).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from monai.utils import convert_to_numpy

from omnifm.data.ingest.arguments import _check_spacing
from omnifm.data.ingest.common import CaseError
from omnifm.data.ingest.loader import _load_tensors
from omnifm.data.ingest.prepare import (
    PrepareSummary,
    SkippedCase,
    _attach_classes,
    _check_output,
    _image_dtype,
    _label_dtype,
    _make_output,
    _progress_line,
    _save_nifti,
    _source_bytes,
    _write_datalist,
)
from omnifm.data.modalities import MODALITIES

_LABELS = ("label.nii.gz", "label.nii")


def _modality_source(folder: Path, modality: str) -> Path | None:
    for candidate in (folder / f"{modality}.nii.gz", folder / f"{modality}.nii", folder / modality):
        if candidate.is_file() or (candidate.is_dir() and any(p.is_file() for p in candidate.iterdir())):
            return candidate
    return None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def discover_paired(input_dir: str | Path) -> list[dict[str, Any]]:
    """The case folders under ``input_dir`` (see the module docstring), in relative-path order.

    Returns:
        ``[{"id": "case_000", "images": {modality: path}, "label": path or None}, ...]``.

    Raises:
        ValueError: ``input_dir`` is not a folder.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise ValueError(f"input_dir must be an existing directory, got {str(input_dir)!r}")
    cases = []
    for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and not _hidden(p, root)):
        images = {m: source for m in MODALITIES if (source := _modality_source(folder, m)) is not None}
        if images:
            label = next((folder / name for name in _LABELS if (folder / name).is_file()), None)
            cases.append({"images": images, "label": label})
    return [{"id": f"case_{i:03d}", **case} for i, case in enumerate(cases)]


def prepare_paired(
    input_dir: str | Path,
    output_dir: str | Path,
    spacing: tuple[float, float, float] | None = None,
    progress: bool = True,
    class_table: Any = None,
) -> PrepareSummary:
    """Convert every paired case under ``input_dir`` (see the module docstring); with ``class_table``
    each converted case gets its CSV class, as :func:`~omnifm.data.ingest.prepare_dataset` does.

    Returns:
        A :class:`~omnifm.data.ingest.PrepareSummary` (a modality left out of a converted case is a note).

    Raises:
        ValueError: an invalid argument or an ``output_dir`` that cannot be written.
        OSError: writing failed later (e.g. the disk filled up).
    """
    start = time.perf_counter()
    spacing = _check_spacing(spacing)
    out = _check_output(input_dir, output_dir)
    cases = discover_paired(input_dir)
    summary = PrepareSummary(cases_found=len(cases))
    _make_output(out, output_dir)
    entries = []
    for index, case in enumerate(cases):
        outcome = _prepare_case(index, case, out, spacing, summary, entries)
        if progress:
            print(_progress_line(index, len(cases), case["id"], outcome), flush=True)
    _attach_classes(cases, entries, class_table, input_dir, summary)
    _write_datalist(out, entries)
    summary.seconds = time.perf_counter() - start
    return summary


def _prepare_case(index: int, case: dict[str, Any], out: Path, spacing: tuple[float, float, float] | None,
                  summary: PrepareSummary, entries: list[dict[str, Any]]) -> str:
    """Convert one paired case; a failing modality is left out, a case with none left is skipped."""
    tick = time.perf_counter()
    if case["label"] is None:
        reason = "no label.nii[.gz] in the case folder (a paired case needs the label its images share)"
    else:
        entry, failed, slices = _convert_modalities(case, out, spacing, summary)
        if entry is not None:
            entries.append(entry)
            summary.converted.append(case["id"])
            summary.slices += slices
            summary.notes += [f"{case['id']}: {modality} left out ({why})" for modality, why in failed]
            dropped = f"; left out: {', '.join(m for m, _ in failed)}" if failed else ""
            return f"ok ({'+'.join(entry['images'])}{dropped}, {time.perf_counter() - tick:.2f} s)"
        reason = "no modality converted (" + "; ".join(f"{m}: {why}" for m, why in failed) + ")"
    summary.skipped.append(SkippedCase(index=index, case_id=case["id"], reason=reason))
    return f"skipped: {reason}"


def _convert_modalities(case: dict[str, Any], out: Path, spacing: tuple[float, float, float] | None,
                        summary: PrepareSummary) -> tuple[dict[str, Any] | None, list[tuple[str, str]], int]:
    """``(entry or None, [(modality, reason)] of the failed ones, slices read)``."""
    images, failed, slices, label_written = {}, [], 0, False
    for modality, source in case["images"].items():
        try:
            data, read = _load_tensors({"image": source, "label": case["label"]}, spacing)
        except CaseError as err:
            failed.append((modality, str(err)))
            continue
        except Exception as err:  # never let one modality stop the run; the class name is path-free
            failed.append((modality, f"unexpected error: {type(err).__name__}"))
            continue
        path = out / "images" / modality / f"{case['id']}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        _save_nifti(data["image"], path, _image_dtype(convert_to_numpy(data["image"])))
        if not label_written:
            label = data["label"]
            _save_nifti(label, out / "labels" / f"{case['id']}.nii.gz", _label_dtype(convert_to_numpy(label)))
            label_written = True
        images[modality] = f"images/{modality}/{case['id']}.nii.gz"
        slices += read
        summary.bytes_read += _source_bytes(source)
    if not images:
        return None, failed, 0
    return {"id": case["id"], "images": images, "label": f"labels/{case['id']}.nii.gz"}, failed, slices
