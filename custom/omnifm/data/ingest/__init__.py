"""Ingest real site data: DICOM series or NIfTI volumes into oriented, anonymous NIfTI cases.

Reading goes through MONAI: ``LoadImage`` with ``NibabelReader`` for ``.nii``/``.nii.gz`` and
with a :class:`~monai.data.PydicomReader` subclass for DICOM (pixel data decoded by pydicom's
handlers, so every transfer syntax with an installed plugin works: RLE, deflate, JPEG lossless
and baseline, JPEG-LS and JPEG 2000 through the pylibjpeg plugins). Then
``Orientation(RAS)`` and optionally ``Spacing``. The subclass fixes what MONAI 1.6's
``PydicomReader`` does not do itself (each is covered by a test):

- a classic series is stacked in *position* order along the slice normal (MONAI sorts by
  ``InstanceNumber``, which need not follow position), and duplicate positions (multi-echo or
  multi-phase series) or uneven gaps (missing slices) are rejected;
- an enhanced multi-frame file (one file, many frames) gets its geometry and its
  ``RescaleSlope``/``RescaleIntercept`` from the functional groups (MONAI stacks its frames along
  the wrong axis with an identity affine and no rescale);
- a single-slice file becomes a one-slice 3D volume whose third axis is the slice normal;
- slices (or enhanced frames) with different ``ImageOrientationPatient`` (a localizer or a
  rotated slice mixed into the series) are rejected: MONAI would use slice 0's orientation for all.

Geometry is checked before it is used: an affine (voxel-to-world matrix) holding NaN/Inf or
singular is rejected, for a NIfTI on the matrix its header declares (MONAI silently replaces a
broken sform by the qform or the pixel sizes); the image/label affine comparison fails on NaN;
a target ``spacing`` outside ``SPACING_RANGE_MM`` or one that would resample a case beyond
4096 voxels per side / 2**29 voxels is refused before anything is allocated.

MONAI's own series path applies ``RescaleSlope``/``RescaleIntercept`` per slice, so values are
``slope * stored + intercept`` (e.g. Hounsfield units) in every case.

Supported input layouts (:func:`discover_cases`; hidden files and folders are ignored):

- NIfTI: ``<any>/<case>_image.nii[.gz]`` with an optional ``<case>_label.nii[.gz]`` beside it;
  ``<any>/images/<case>.nii[.gz]`` with an optional ``<any>/labels/<case>.nii[.gz]``; or
  ``<any>/<case>/image.nii[.gz]`` with an optional ``label.nii[.gz]`` beside it.
- DICOM: files anywhere below the input folder, grouped by ``SeriesInstanceUID``; one series is
  one case. A ``label.nii[.gz]`` in the folder holding a series' files is that series' label
  (typical layout ``<input>/<case>/*.dcm`` plus ``<input>/<case>/label.nii.gz``), as is
  ``<any>/labels/<case>.nii[.gz]`` for a series in ``<any>/images/<case>/`` (the layout of the
  DICOM phantom); a label is ignored (with a note) when its folder holds several series. Non-image objects (SR, RT, SEG,
  presentation states, ...) are skipped. A series whose folder also holds a file that claims to
  be DICOM but cannot be parsed (e.g. a truncated slice) is skipped rather than converted with a
  slice missing. Only single-channel (grayscale) images are supported. A DICOM label may be a
  label series or a DICOM SEG (read by MONAI's own SEG support; segment ``c`` becomes ``c + 1``).

Modality (:func:`dicom_modality`): DICOM ``Modality`` ``CT`` -> ``"ct"``, ``PT`` -> ``"pet"``,
``NM`` -> ``"spect"``, ``MR`` -> an MR sequence guessed from ``SeriesDescription``/``ProtocolName``
(FLAIR, T2, T1 with contrast, T1), ``"t1"`` when nothing matches. NIfTI carries no modality: pass
one (``modality=`` or ``--modality``), else ``"t1"`` is assumed and the summary says so. An
explicit modality always overrides.

Privacy: case ids are ``case_000``, ``case_001``, ... in the order of the cases' relative paths;
no file name, path, patient name or DICOM tag value appears in ids, outputs, the datalist, the
progress log, the summary or :class:`CaseError` messages. MONAI and pydicom warnings (which
quote file names) are suppressed while reading.

The package, by concern (each name below is importable from ``omnifm.data.ingest``):

- :mod:`~omnifm.data.ingest.common`: :class:`CaseError` and the optional pydicom import;
- :mod:`~omnifm.data.ingest.arguments`: checks of the public functions' arguments;
- :mod:`~omnifm.data.ingest.dicom_reader`: the MONAI ``PydicomReader`` subclass and its DICOM helpers;
- :mod:`~omnifm.data.ingest.geometry`: affine, image/label geometry and resampled-size checks;
- :mod:`~omnifm.data.ingest.loader`: reading one case through MONAI (:func:`load_case`);
- :mod:`~omnifm.data.ingest.discovery`: input layouts and DICOM modality (:func:`discover_cases`);
- :mod:`~omnifm.data.ingest.prepare`: conversion of a whole input folder (:func:`prepare_dataset`);
- :mod:`~omnifm.data.ingest.paired`: the same for paired cases, one image per modality and a shared
  label per case folder (:func:`~omnifm.data.ingest.paired.prepare_paired`).
- :mod:`~omnifm.data.ingest.case_classes`: per-case classes from a CSV into the datalist's ``"class"``
  (``omnifm-prepare-data --classes``; :func:`~omnifm.data.ingest.case_classes.read_class_csv`).
"""

from __future__ import annotations

from omnifm.data.ingest.common import CaseError
from omnifm.data.ingest.discovery import dicom_modality, discover_cases
from omnifm.data.ingest.loader import _load_tensors  # noqa: F401 - tests import it from here
from omnifm.data.ingest.loader import load_case
from omnifm.data.ingest.prepare import DATALIST_NAME, PrepareSummary, SkippedCase, prepare_dataset

__all__ = [
    "DATALIST_NAME",
    "CaseError",
    "PrepareSummary",
    "SkippedCase",
    "dicom_modality",
    "discover_cases",
    "load_case",
    "prepare_dataset",
]
