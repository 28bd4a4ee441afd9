"""Finding the cases of an input folder (NIfTI layouts, DICOM series grouped by
``SeriesInstanceUID``, labels beside them; see :mod:`omnifm.data.ingest`) and guessing the
modality of a DICOM series (:func:`discover_cases`, :func:`dicom_modality`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omnifm.data.ingest.common import _HAS_PYDICOM, _is_nifti, _require_pydicom, pydicom

_FORMATS = ("dicom", "nifti")
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "ECG"}


# NM ImageType value 3 of images that are not a reconstructed volume (projections, planar, dynamic)
_NM_NOT_RECONSTRUCTED = {"STATIC", "DYNAMIC", "GATED", "WHOLE BODY", "TOMO", "GATED TOMO"}
_FLAIR = ("flair", "darkfluid", "dark fluid", "dark-fluid", "tirm")
_CONTRAST = {"ce", "gd", "gad", "gado", "post", "postcontrast", "postgd", "t1c", "t1ce", "t1gd", "t1post"}
_T1 = ("t1", "mprage", "mp-rage", "mp_rage", "spgr", "bravo", "tfl", "tfe")


def _mr_sequence(description: str, contrast_agent: bool) -> str:
    """Guess the MR sequence from a series description; ``"t1"`` when nothing matches."""
    text = description.lower()
    tokens = set(re.split(r"[^a-z0-9+]+", text))
    if any(word in text for word in _FLAIR):
        return "flair"
    if any(token.startswith("t2") for token in tokens):
        return "t2"
    if tokens & _CONTRAST or any(word in text for word in ("+c", "c+", "+gd", "gad", "contrast")):
        return "t1ce"
    if contrast_agent and any(word in text for word in _T1):
        return "t1ce"
    return "t1"


def dicom_modality(ds: Any) -> str | None:
    """The omnifm modality of a DICOM header; ``None`` for modalities other than MR, CT, PT and NM.

    ``CT`` -> ``"ct"``, ``PT`` -> ``"pet"``, ``NM`` -> ``"spect"`` (a reconstructed SPECT; ``None``
    when the NM ``ImageType`` says planar, dynamic, whole-body or raw tomographic projections),
    ``MR`` -> ``"flair"`` if ``SeriesDescription`` or ``ProtocolName`` mentions FLAIR/dark
    fluid/TIRM, else ``"t2"`` for a ``T2*`` token, else ``"t1ce"`` for contrast words (``+C``,
    ``Gd``, ``gad``, ``contrast``, a ``post``, ``CE`` or ``T1C`` token...) or a
    ``ContrastBolusAgent`` on a T1-type series, else ``"t1"`` (also the default for MR series whose
    description says nothing).
    """
    kind = str(ds.get("Modality", "")).upper()
    if kind == "CT":
        return "ct"
    if kind == "PT":
        return "pet"
    if kind == "NM":
        value = ds.get("ImageType") or []
        image_type = [str(v).upper() for v in ([value] if isinstance(value, str) else value)]
        return None if len(image_type) > 2 and image_type[2] in _NM_NOT_RECONSTRUCTED else "spect"
    if kind != "MR":
        return None
    description = f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}"
    return _mr_sequence(description, bool(str(ds.get("ContrastBolusAgent", "")).strip()))


def _visible_files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def _nifti_stem(path: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def _sibling_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _nifti_case(path: Path) -> dict[str, Any] | None:
    """The case an image NIfTI file starts, or ``None`` if the file is not a case image."""
    stem = _nifti_stem(path)
    if stem.endswith("_image"):
        label = _sibling_nifti(path.parent, f"{stem[: -len('_image')]}_label")
    elif path.parent.name == "images":
        label = _sibling_nifti(path.parent.parent / "labels", stem)
    elif stem == "image":
        label = _sibling_nifti(path.parent, "label")
    else:
        return None
    label = None if label is None else str(label)
    return {"image": str(path), "label": label, "modality": None, "format": "nifti", "problem": None}


def _discover_nifti(root: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in _visible_files(root):
        if _is_nifti(path) and (case := _nifti_case(path)) is not None:
            found.append((path.relative_to(root).as_posix(), case))
    return found


_UNREADABLE = object()  # a file that claims to be DICOM but cannot be parsed
_NOT_DICOM_SUFFIXES = (".json", ".txt", ".csv", ".md", ".py", ".zip", ".gz", ".tar", ".xml", ".pdf")


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        return bool(pydicom.misc.is_dicom(path))
    except OSError:
        return False


def _dicom_header(path: Path) -> Any:
    """Header of a DICOM image file; ``None`` for anything else; ``_UNREADABLE`` for broken DICOM.

    Broken means: cannot be parsed but claims to be DICOM (``.dcm`` suffix or ``DICM`` preamble),
    or an image object (SOP class "... Image Storage") without its image attributes (truncated).
    """
    if _is_nifti(path) or path.suffix.lower() in _NOT_DICOM_SUFFIXES:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
            return None
        if all(keyword in ds for keyword in ("SeriesInstanceUID", "Rows", "Columns")):
            return ds
        sop_class = ds.get("SOPClassUID")
        if sop_class is not None:
            return _UNREADABLE if "Image Storage" in getattr(sop_class, "name", "") else None
    except Exception:  # pydicom raises many types on malformed input
        pass
    return _UNREADABLE if _looks_like_dicom(path) else None


def _dicom_label(folder: Path) -> Path | None:
    """``<folder>/label.nii[.gz]``, else ``labels/<case>.nii[.gz]`` for a series in ``images/<case>/``."""
    label = _sibling_nifti(folder, "label")
    if label is None and folder.parent.name == "images":
        label = _sibling_nifti(folder.parent.parent / "labels", folder.name)
    return label


def _dicom_case(files: list[Path], header: Any, label: Path | None, problem: str | None) -> dict[str, Any]:
    return {
        "image": [str(f) for f in files],
        "label": None if label is None else str(label),
        "modality": dicom_modality(header),
        "format": "dicom",
        "problem": problem,
    }


def _discover_dicom(root: Path, notes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    series: dict[str, list[tuple[Path, Any]]] = {}
    unreadable: dict[Path, int] = {}
    for path in _visible_files(root):
        ds = _dicom_header(path)
        if ds is _UNREADABLE:
            unreadable[path.parent] = unreadable.get(path.parent, 0) + 1
        elif ds is not None:
            series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    per_folder: dict[Path, int] = {}
    for members in series.values():
        per_folder[members[0][0].parent] = per_folder.get(members[0][0].parent, 0) + 1
    found, ambiguous = [], 0
    for members in series.values():
        files = sorted(path for path, _ in members)
        folders = {f.parent for f in files}
        folder = files[0].parent
        label = _dicom_label(folder) if len(folders) == 1 else None
        if label is not None and per_folder[folder] > 1:
            label, ambiguous = None, ambiguous + 1
        broken = sum(unreadable.get(f, 0) for f in folders)
        problem = f"{broken} unreadable DICOM file(s) in the series folder" if broken else None
        found.append((files[0].relative_to(root).as_posix(), _dicom_case(files, members[0][1], label, problem)))
    if ambiguous:
        notes.append(f"{ambiguous} DICOM series left unlabelled: their folder holds several series and one label")
    orphans = sum(n for folder, n in unreadable.items() if folder not in per_folder)
    if orphans:
        notes.append(f"{orphans} unreadable DICOM file(s) outside any series folder were ignored")
    return found


def _discover(input_dir: str | Path, fmt: str | None, notes: list[str]) -> list[dict[str, Any]]:
    if fmt is not None and fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {list(_FORMATS)} or None, got {fmt!r}")
    root = Path(input_dir)
    if not root.is_dir():
        raise ValueError(f"input_dir must be an existing directory, got {str(input_dir)!r}")
    found = []
    if fmt in (None, "nifti"):
        found += _discover_nifti(root)
    if fmt in (None, "dicom") and (fmt == "dicom" or _HAS_PYDICOM):
        _require_pydicom()
        found += _discover_dicom(root, notes)
    found.sort(key=lambda item: item[0])
    return [{"id": f"case_{i:03d}", **case} for i, (_, case) in enumerate(found)]


def discover_cases(input_dir: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Find the cases under ``input_dir`` (layouts in the :mod:`omnifm.data.ingest` docstring).

    Args:
        input_dir: Folder to search (recursively).
        fmt: ``"dicom"``, ``"nifti"`` or ``None`` for both.

    Returns:
        ``[{"id": "case_000", "image": path or [paths of one series], "label": path or None,
        "modality": str or None, "format": "dicom" | "nifti", "problem": str or None}, ...]``
        sorted by the relative path of each case's (first) image file; ids follow that order.
        ``modality`` is ``None`` for NIfTI and for DICOM modalities other than MR/CT/PT/NM.
        ``problem`` is a path-free reason not to convert the case (a series whose folder also
        holds files that claim to be DICOM but cannot be parsed, e.g. a truncated slice: such a
        series could silently miss slices); :func:`prepare_dataset` skips those cases.

    Raises:
        ValueError: If ``input_dir`` is not a directory or ``fmt`` is unknown.
    """
    return _discover(input_dir, fmt, [])
