"""Paired phantom sites: every case rendered in several modalities of one anatomy on one grid.

A multi-modality fusion model (the CT+MRI classifier of :mod:`omnifm.tasks.classification.fusion`)
needs each case in several co-registered modalities, as a real site provides them after
registration. :func:`write_paired_phantom_site` draws each case's anatomy once, on the grid of the
*first* modality's acquisition (its slice thickness and field of view), and renders it through every
modality's own physics (sequence timing, PSF, noise, gain of that modality at this site). The images
of one case therefore share the label volume and the affine voxel for voxel; their intensities and
noise differ as the modalities do.

Layout: ``images/<modality>/case_000.nii.gz`` (or a DICOM series folder), ``labels/case_000.nii.gz``,
``datalist.json`` with paired entries ``{"id", "images": {<modality>: path, ...}, "label"}`` and the
manifest (an identical request reuses the files). Case ``i`` depends on ``(seed, site_index, i)``
and the modality list only.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnifm.data.modalities import MODALITIES
from omnifm.data.phantom.acquisition import Acquisition, acquisition_spacing, site_acquisition
from omnifm.data.phantom.anatomy import make_phantom_anatomy
from omnifm.data.phantom.conventions import DEFAULT_SHAPE, _check_modality
from omnifm.data.phantom.render import render_modality
from omnifm.data.phantom.site_writer import (
    DATALIST_NAME,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    _case_rng,
    write_json,
    read_phantom_manifest,
    site_request,
)
from omnifm.data.phantom.volume_files import _save_nifti, _SeriesInfo, _write_dicom_series

_STREAM_PAIRED = 7  # stream of the per-modality render generators (the anatomy uses the site writer's)


def paired_acquisitions(modalities: Sequence[str], seed: int, site_index: int) -> list[Acquisition]:
    """Each modality's acquisition at this site, all on the first modality's grid.

    Examples::

        >>> ct, t1 = paired_acquisitions(["ct", "t1"], seed=0, site_index=0)
        >>> (ct.slice_thickness, ct.fov_margin) == (t1.slice_thickness, t1.fov_margin)
        True
    """
    own = [site_acquisition(m, seed, site_index) for m in modalities]
    grid = {"slice_thickness": own[0].slice_thickness, "fov_margin": own[0].fov_margin}
    return [dataclasses.replace(acq, **grid) for acq in own]


def _entries(modalities: Sequence[str], num_cases: int, fmt: str) -> list[dict[str, Any]]:
    """Datalist entries with paths relative to the site folder."""
    suffix = ".nii.gz" if fmt == "nifti" else ""
    return [
        {"id": f"case_{i:03d}", "images": {m: f"images/{m}/case_{i:03d}{suffix}" for m in modalities},
         "label": f"labels/case_{i:03d}.nii.gz"}
        for i in range(num_cases)
    ]


def _paths(out: Path, entry: dict[str, Any]) -> list[Path]:
    return [out / p for p in entry["images"].values()] + [out / entry["label"]]


def write_paired_phantom_site(
    out_dir: str | Path,
    modalities: Sequence[str],
    num_cases: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    site_index: int = 0,
    fmt: str = "nifti",
) -> list[dict[str, Any]]:
    """Write a site whose cases are rendered in every one of ``modalities`` (see the module docstring).

    Args:
        out_dir: Site folder (created if missing).
        modalities: Two or more distinct modalities; the first fixes the grid.
        num_cases: Number of cases, >= 1.
        seed: Non-negative seed.
        shape: Output shape ``(H, W, D)``.
        site_index: Zero-based site index (acquisition and anatomy).
        fmt: ``"nifti"`` or ``"dicom"`` (labels are always NIfTI).

    Returns:
        ``[{"id", "images": {modality: absolute path}, "label": absolute path}, ...]``.

    Raises:
        ValueError: an argument is invalid.
    """
    modalities = [_check_modality(m) for m in modalities]
    if len(modalities) < 2 or len(set(modalities)) != len(modalities):
        raise ValueError(f"a paired phantom needs two or more distinct modalities, got {modalities}")
    request = {"paired": modalities, **site_request(num_cases, seed, shape, site_index, fmt)}
    out = Path(out_dir).resolve()
    entries = _entries(modalities, request["num_cases"], request["format"])
    if not _is_current(out, request, entries):
        _generate(out, request, entries)
    return [{"id": e["id"], "images": {m: str(out / p) for m, p in e["images"].items()}, "label": str(out / e["label"])}
            for e in entries]


def _is_current(out: Path, request: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
    manifest = read_phantom_manifest(out)
    if manifest is None or manifest.get("version") != GENERATOR_VERSION or manifest.get("request") != request:
        return False
    return (out / DATALIST_NAME).exists() and all(p.exists() for e in entries for p in _paths(out, e))


def _generate(out: Path, request: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Write every case, the datalist and, last, the manifest."""
    start = time.perf_counter()
    for folder in [out / "labels", *(out / "images" / m for m in request["paired"])]:
        folder.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    acquisitions = paired_acquisitions(request["paired"], request["seed"], request["site_index"])
    cases = [_write_case(out, i, e, request, acquisitions) for i, e in enumerate(entries)]
    write_json(out / DATALIST_NAME, {"cases": entries})
    manifest = {
        "generator": "omnifm.data.phantom.paired",
        "version": GENERATOR_VERSION,
        "request": request,
        "acquisitions": [dataclasses.asdict(a) for a in acquisitions],
        "spacing": list(acquisition_spacing(acquisitions[0], request["shape"])),
        "seconds": round(time.perf_counter() - start, 3),
        "cases": cases,
    }
    write_json(out / MANIFEST_NAME, manifest)


def _write_case(out: Path, index: int, entry: dict[str, Any], request: dict[str, Any],
                acquisitions: list[Acquisition]) -> dict[str, Any]:
    """Draw case ``index``'s anatomy once and write it in every modality."""
    seed, site = request["seed"], request["site_index"]
    anatomy = make_phantom_anatomy(_case_rng(seed, site, index), request["shape"], acquisitions[0])
    for acq in acquisitions:
        rng = np.random.default_rng([_STREAM_PAIRED, seed, site, index, MODALITIES.index(acq.modality)])
        image = render_modality(anatomy, acq.modality, acq, rng)
        path = out / entry["images"][acq.modality]
        if request["format"] == "nifti":
            _save_nifti(image, anatomy.affine, path)
        else:
            info = _SeriesInfo(acq.modality, acq, site + 1, index, json.dumps(request, sort_keys=True))
            _write_dicom_series(path, image, anatomy.affine, info)
    _save_nifti(anatomy.label, anatomy.affine, out / entry["label"])
    return {"id": entry["id"], "tumour_free": anatomy.tumour_free}
