"""Phantom sites on disk: one site folder (images, labels, ``datalist.json`` and the manifest that
lets an identical request reuse the files, :func:`write_phantom_site`) and a federation of them
(:func:`make_phantom_federation`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from omnifm.data.phantom.acquisition import Acquisition, acquisition_spacing, site_acquisition
from omnifm.data.phantom.anatomy import make_phantom_anatomy
from omnifm.data.phantom.conventions import (
    _STREAM_CASE,
    BRATS_LABELS,
    DEFAULT_SHAPE,
    _check_format,
    _check_modality,
    _check_shape,
    modality_for_site,
)
from omnifm.data.phantom.render import render_modality
from omnifm.data.phantom.volume_files import _save_nifti, _SeriesInfo, _write_dicom_series
from omnifm.validation import check_int

GENERATOR_VERSION = 2
MANIFEST_NAME = "phantom_manifest.json"
DATALIST_NAME = "datalist.json"


def _case_rng(seed: int, site_index: int, index: int) -> np.random.Generator:
    """Independent generator per case: a case depends on (seed, site, index) only."""
    return np.random.default_rng([_STREAM_CASE, seed, site_index, index])


def _relative_paths(index: int, fmt: str) -> dict[str, str]:
    """Datalist entry of case ``index`` with paths relative to the site folder."""
    case_id = f"case_{index:03d}"
    image = f"images/{case_id}.nii.gz" if fmt == "nifti" else f"images/{case_id}"
    return {"id": case_id, "image": image, "label": f"labels/{case_id}.nii.gz"}


def _absolute(out: Path, entry: dict[str, str], modality: str) -> dict[str, str]:
    """A relative datalist entry with absolute paths under ``out`` and the modality."""
    paths = {key: str(out / entry[key]) for key in ("image", "label")}
    return {"id": entry["id"], **paths, "modality": modality}


def write_json(path: Path, payload: dict[str, Any], keep_if_same: bool = False) -> None:
    """Write JSON via a temporary file and a rename; with ``keep_if_same`` a file that already holds
    exactly this content is left alone (its modification time is part of the site-data cache key)."""
    text = json.dumps(payload, indent=2) + "\n"
    if keep_if_same and path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_phantom_manifest(site_dir: str | Path) -> dict[str, Any] | None:
    """Return a site folder's phantom manifest, or ``None`` if it is missing or unreadable.

    The manifest holds ``generator``, ``version``, ``request`` (the arguments of
    :func:`write_phantom_site`), ``acquisition``, ``spacing``, ``seconds`` and per-case
    ``cases`` entries (``id``, ``tumour_free``, ``label_voxels``).
    """
    try:
        manifest = json.loads((Path(site_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_current(out: Path, request: dict[str, Any], entries: list[dict[str, str]]) -> bool:
    """Whether ``out`` holds a complete phantom for exactly this request and generator version."""
    manifest = read_phantom_manifest(out)
    if manifest is None or manifest.get("version") != GENERATOR_VERSION or manifest.get("request") != request:
        return False
    paths = [out / DATALIST_NAME] + [out / e[key] for e in entries for key in ("image", "label")]
    return all(p.exists() for p in paths)


_STALE = re.compile(r"case_\d+(\.nii\.gz)?|\.case_\d+\..*tmp.*")  # cases and left-over temporary files


def _remove_stale(out: Path, entries: list[dict[str, str]]) -> None:
    """Remove phantom case files (and temporary files) that the new datalist does not list."""
    keep = {out / e[key] for e in entries for key in ("image", "label")}
    for folder in (out / "images", out / "labels"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _STALE.fullmatch(path.name) and path not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _write_case(out: Path, entry: dict[str, str], request: dict[str, Any], acq: Acquisition) -> dict[str, Any]:
    """Generate and write one case; returns its manifest record."""
    index = int(entry["id"].split("_")[1])
    rng = _case_rng(request["seed"], request["site_index"], index)
    anatomy = make_phantom_anatomy(rng, request["shape"], acq)
    image = render_modality(anatomy, request["modality"], acq, rng)
    if request["format"] == "nifti":
        _save_nifti(image, anatomy.affine, out / entry["image"])
    else:
        fingerprint = json.dumps(request, sort_keys=True)
        info = _SeriesInfo(request["modality"], acq, request["site_index"] + 1, index, fingerprint)
        _write_dicom_series(out / entry["image"], image, anatomy.affine, info)
    _save_nifti(anatomy.label, anatomy.affine, out / entry["label"])
    counts = {str(v): int((anatomy.label == v).sum()) for v in BRATS_LABELS[1:]}
    return {"id": entry["id"], "tumour_free": anatomy.tumour_free, "label_voxels": counts}


def site_request(num_cases: int, seed: int, shape: Sequence[int], site_index: int, fmt: str) -> dict[str, Any]:
    """The checked arguments every phantom site request holds (the manifest's ``request`` after the modalities)."""
    return {
        "num_cases": check_int("num_cases", num_cases),
        "seed": check_int("seed", seed, 0),
        "shape": list(_check_shape(shape)),
        "site_index": check_int("site_index", site_index, 0),
        "format": _check_format(fmt),
    }


def write_phantom_site(
    out_dir: str | Path,
    modality: str,
    num_cases: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    site_index: int = 0,
    fmt: str = "nifti",
) -> list[dict[str, str]]:
    """Write one simulated site's phantom cases and return its datalist.

    Layout: ``images/case_000.nii.gz`` (NIfTI) or ``images/case_000/`` (DICOM series, one file
    per axial slice), ``labels/case_000.nii.gz`` (always NIfTI, same geometry),
    ``datalist.json`` (``{"cases": [...]}``, paths relative to ``out_dir``) and
    ``phantom_manifest.json``. If the manifest matches this request and generator version and
    all files exist, nothing is written. Case ``i`` depends only on ``(seed, site_index, i)``;
    the acquisition on ``(seed, site_index, modality)``.

    Args:
        out_dir: Site folder (created if missing).
        modality: One of ``MODALITIES``.
        num_cases: Number of cases, >= 1.
        seed: Non-negative seed.
        shape: Output shape ``(H, W, D)``.
        site_index: Zero-based site index (acquisition, anatomy and DICOM patient names).
        fmt: ``"nifti"`` or ``"dicom"``.

    Returns:
        ``[{"id", "image", "label", "modality"}, ...]`` with absolute paths, one per case.

    Raises:
        ValueError: If an argument is invalid.
    """
    request = {"modality": _check_modality(modality), **site_request(num_cases, seed, shape, site_index, fmt)}
    out = Path(out_dir).resolve()
    entries = [_relative_paths(i, request["format"]) for i in range(request["num_cases"])]
    result = [_absolute(out, e, request["modality"]) for e in entries]
    if _is_current(out, request, entries):
        return result
    _generate_site(out, request, entries)
    return result


def _generate_site(out: Path, request: dict[str, Any], entries: list[dict[str, str]]) -> None:
    """Write every case, the datalist and, last, the manifest."""
    start = time.perf_counter()
    for folder in (out, out / "images", out / "labels"):
        folder.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    _remove_stale(out, entries)
    acq = site_acquisition(request["modality"], request["seed"], request["site_index"])
    cases = [_write_case(out, e, request, acq) for e in entries]
    write_json(out / DATALIST_NAME, {"cases": [{**e, "modality": request["modality"]} for e in entries]})
    manifest = {
        "generator": "omnifm.data.phantom",
        "version": GENERATOR_VERSION,
        "request": request,
        "acquisition": asdict(acq),
        "spacing": list(acquisition_spacing(acq, request["shape"])),
        "seconds": round(time.perf_counter() - start, 3),
        "cases": cases,
    }
    write_json(out / MANIFEST_NAME, manifest)


def make_phantom_federation(
    out_dir: str | Path,
    sites: int,
    cases: int,
    seed: int,
    modalities: Sequence[str] | None = None,
    fmt: str = "nifti",
    shape: Sequence[int] = DEFAULT_SHAPE,
    on_site: Callable[[str, list[dict[str, str]], float], None] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Write a phantom federation: folders ``site-1``, ``site-2``, ... under ``out_dir``.

    Args:
        out_dir: Root folder (created if missing).
        sites: Number of sites, >= 1.
        cases: Cases per site, >= 1.
        seed: Non-negative seed shared by all sites (each site also uses its index).
        modalities: Modality per site, cycled if shorter than ``sites``; ``None`` for
            :func:`modality_for_site`.
        fmt: ``"nifti"`` or ``"dicom"``.
        shape: Output shape ``(H, W, D)``.
        on_site: Called after each site as ``on_site(name, entries, seconds)``.

    Returns:
        ``{"site-1": entries, ...}`` as returned by :func:`write_phantom_site`.

    Raises:
        ValueError: If an argument is invalid (checked before anything is written).
    """
    sites = check_int("sites", sites)
    if modalities is not None:
        if isinstance(modalities, str) or len(modalities) == 0:
            raise ValueError(f"modalities must be a non-empty list of modality names, got {modalities!r}")
        for modality in modalities:
            _check_modality(modality)
    check_int("cases", cases)
    check_int("seed", seed, 0)
    _check_format(fmt)
    _check_shape(shape)
    result = {}
    for index in range(sites):
        name = f"site-{index + 1}"
        modality = modalities[index % len(modalities)] if modalities else modality_for_site(index)
        start = time.perf_counter()
        result[name] = write_phantom_site(Path(out_dir) / name, modality, cases, seed, shape, index, fmt)
        if on_site is not None:
            on_site(name, result[name], time.perf_counter() - start)
    return result
