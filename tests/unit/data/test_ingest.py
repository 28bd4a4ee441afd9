"""Ingestion of real files: every DICOM transfer syntax, geometry, malformed input, discovery, prepare.

DICOM files come from pydicom's bundled test data and the ``pydicom-data`` package (``data_store``),
looked up locally by name with ``get_testdata_file(name, download=False)``; a file that is not
installed locally skips its test (nothing is ever downloaded).
"""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from omnifm.data.ingest import (
    CaseError,
    PrepareSummary,
    dicom_modality,
    discover_cases,
    load_case,
    prepare_dataset,
)
from omnifm.data.integrity import resolve_cases
from omnifm.data.modalities import MODALITIES
from omnifm.data.site_config import parse_site_config

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from omnifm.data.dicom_series import write_dicom_series  # noqa: E402

PATIENT = "DOE^JANE^FAKE"
SPACING = (0.8, 0.8, 3.0)  # column spacing (x), row spacing (y), slice gap, in mm


def _prepared_cases(folder: Path) -> list[dict]:
    """Read prepare_dataset's output the way a site's FL client does (site config -> datalist)."""
    config = parse_site_config(
        {"format": "nifti", "data_root": str(folder), "modalities": list(MODALITIES),
         "label_map": {"0": "background", "1": "tumour"}}, folder,
    )
    return resolve_cases(config)



# ------------------------------------------------------------------ helpers


def _testdata(name: str) -> str:
    """Local path of a pydicom/pydicom-data test file, or skip (never downloads)."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except Exception:  # noqa: BLE001 - any lookup problem means "not available here"
        path = None
    if not path or not Path(path).is_file():
        pytest.skip(f"{name} is not installed locally (pydicom-data missing?); not downloading it")
    return str(path)


def _raw(path: str) -> np.ndarray:
    """Image values as read by ``load_case`` without normalisation, shape (1, H, W, D)."""
    return load_case({"image": path, "modality": "t1"}, normalize=False)["image"]


def _stored_frame(volume: np.ndarray, k: int = 0) -> np.ndarray:
    """Undo RAS orientation for axial files with IOP (1,0,0,0,1,0) or none: back to (rows, cols)."""
    return volume[0, ::-1, ::-1, k].T


def _psnr(test: np.ndarray, reference: np.ndarray) -> float:
    rmse = float(np.sqrt(np.mean((test.astype(np.float64) - reference) ** 2)))
    return 20 * np.log10(float(reference.max() - reference.min()) / rmse) if rmse else float("inf")


def _assert_path_free(message: str, *paths: str | Path, values: tuple[str, ...] = ()) -> None:
    for path in paths:
        path = Path(path)
        for forbidden in (str(path), path.name, path.stem, str(path.parent)):
            assert forbidden not in message, f"{forbidden!r} leaked into {message!r}"
    for value in values:
        if value:
            assert value not in message, f"tag value {value!r} leaked into {message!r}"


ORIGIN = np.array([-20.0, 10.0, -5.0])


def write_series(
    folder: Path,
    stored: np.ndarray,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    seed: int = 0,
    prefix: str = "IM",
    *,
    modality: str = "MR",
    description: str = "AX T1",
    slope: float = 2.0,
    intercept: float = -1024.0,
) -> list[Path]:
    """Write ``stored`` (n, rows, cols) as n slice files in shuffled order with shuffled InstanceNumber."""
    rng = np.random.default_rng(seed)
    names, instances = rng.permutation(len(stored)), rng.permutation(len(stored)) + 1
    return write_dicom_series(
        folder,
        stored.astype("<i2"),
        SPACING,
        modality,
        origin=ORIGIN,
        orientation=orientation,
        slope=slope,
        intercept=intercept,
        patient_name=PATIENT,
        patient_id="FAKE-DOE-0001",
        series_description=description,
        instance_numbers=instances,
        file_name=lambda k, _: f"{prefix}_{names[k]:04d}_DOE.dcm",
    )


def write_enhanced(
    path: Path, stored: np.ndarray, orientation=(1, 0, 0, 0, 1, 0), slope=2.0, intercept=-1024.0
) -> None:
    """The same volume as :func:`write_series`, as one enhanced MR file with frames in shuffled order."""
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    order = np.random.default_rng(1).permutation(len(stored))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedMRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.Modality, ds.SeriesInstanceUID = PATIENT, "MR", generate_uid()
    shared, orient, measures, transform = Dataset(), Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [float(v) for v in iop]
    measures.PixelSpacing, measures.SliceThickness = [SPACING[1], SPACING[0]], SPACING[2]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "US"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orient], [measures]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        position, frame = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in ORIGIN + k * SPACING[2] * normal]
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = len(stored)
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = stored[order].astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def expected_from_world(volume: np.ndarray, affine: np.ndarray, stored: np.ndarray, orientation, slope, intercept):
    """Values each output voxel must have, found through world coordinates (independent of axis order)."""
    iop = np.asarray(orientation, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    index = np.stack(np.meshgrid(*[np.arange(s) for s in volume.shape], indexing="ij"), -1).reshape(-1, 3)
    lps = (index @ affine[:3, :3].T + affine[:3, 3]) * np.array([-1.0, -1.0, 1.0]) - ORIGIN
    col, row, k = lps @ row_dir / SPACING[0], lps @ col_dir / SPACING[1], lps @ normal / SPACING[2]
    coords = np.stack([k, row, col])
    np.testing.assert_allclose(coords, np.rint(coords), atol=1e-3)  # output voxels sit on input voxels
    k, row, col = np.rint(coords).astype(int)
    return (slope * stored[k, row, col].astype(np.float64) + intercept).reshape(volume.shape)


@pytest.fixture(scope="module")
def stored() -> np.ndarray:
    """(12 slices, 20 rows, 16 cols) int16 stored values; rows != cols catches transposition."""
    return np.random.default_rng(7).integers(-300, 1500, size=(12, 20, 16)).astype(np.int16)


# ------------------------------------------------------------------ transfer syntaxes (real files)

LOSSLESS_TWINS = [
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
    ("693_J2KR.dcm", "693_UNCR.dcm"),  # JPEG 2000 lossless, CT with RescaleIntercept -1024
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),  # JPEG 2000 lossless, 1024 x 1024 MR with RescaleSlope
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),  # JPEG 2000 lossless, enhanced multi-frame
    ("JPEG2000.dcm", "JPEG2000_UNC.dcm"),  # JPEG 2000 (lossy syntax) vs its decoded twin
    ("693_J2KI.dcm", "693_UNCI.dcm"),  # JPEG 2000 (lossy syntax) vs its decoded twin
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # JPEG-LS lossless, multi-frame
    ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE lossless
    ("emri_small_RLE.dcm", "emri_small.dcm"),  # RLE lossless, multi-frame
    ("MR_small_implicit.dcm", "MR_small.dcm"),  # implicit VR little endian
    ("MR_small_bigendian.dcm", "MR_small.dcm"),  # explicit VR big endian
    ("emri_small_big_endian.dcm", "emri_small.dcm"),  # explicit VR big endian, multi-frame
]


@pytest.mark.dicom
@pytest.mark.parametrize(("variant", "reference"), LOSSLESS_TWINS)
def test_lossless_transfer_syntaxes_decode_exactly_like_their_twin(variant: str, reference: str) -> None:
    a, b = _raw(_testdata(variant)), _raw(_testdata(reference))
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


@pytest.mark.dicom
@pytest.mark.parametrize("name", ["MR_small.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm", "CT_small.dcm"])
def test_values_are_rescaled_stored_values(name: str) -> None:
    ds = pydicom.dcmread(_testdata(name))
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    out = _raw(_testdata(name))
    assert sorted(out.shape[1:]) == sorted((*ds.pixel_array.shape, 1))  # a single slice is a one-slice volume
    if list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]:  # axial: also pin the RAS axis mapping
        np.testing.assert_allclose(_stored_frame(out), expected, rtol=1e-6)
    else:  # MR2 is an oblique coronal slice
        np.testing.assert_allclose(np.sort(out.ravel()), np.sort(expected.ravel()), rtol=1e-6)


# (lossy file, lossless original, minimum PSNR in dB over the original's value range)
LOSSY = [
    ("MR2_J2KI.dcm", "MR2_UNCR.dcm", 38.0),  # JPEG 2000 irreversible
    ("693_J2KI.dcm", "693_UNCR.dcm", 30.0),  # JPEG 2000 irreversible (strongly compressed CT)
    ("JPGExtended.dcm", "JPEG-LL.dcm", 35.0),  # JPEG extended 12-bit vs the process-14 lossless original
    ("JPEG2000.dcm", "JPEG-LL.dcm", 30.0),  # JPEG 2000 irreversible vs the same original
]


@pytest.mark.dicom
@pytest.mark.parametrize(("lossy", "original", "min_psnr"), LOSSY)
def test_lossy_transfer_syntaxes_stay_close_to_the_original(lossy: str, original: str, min_psnr: float) -> None:
    a, b = _raw(_testdata(lossy)), _raw(_testdata(original))
    assert a.shape == b.shape
    assert _psnr(a, b) >= min_psnr


# Reference pixels (rows, cols of the stored frame) from pydicom's own pixel reference tests.
REFERENCE_PIXELS = [
    ("JPEG-LL.dcm", (400, slice(124, 132)), [60, 58, 61, 68, 59, 65, 64, 67]),  # JPEG lossless P14 SV1, 16-bit
    ("JPEG-LL.dcm", (600, slice(124, 132)), [3, 1, 2, 0, 2, 1, 2, 0]),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", (300, slice(512, 520)), [26, 26, 25, 22, 19, 16, 14, 15]),  # 8-bit
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", (600, slice(512, 520)), [45, 43, 41, 38, 33, 30, 26, 21]),
    ("JPEGLSNearLossless_08.dcm", (slice(0, 45, 5), 0), [255, 125, 65, 30, 15, 5, 5, 0, 0]),  # JPEG-LS near-lossless
    ("JPEGLSNearLossless_16.dcm", (slice(0, 45, 5), 0), [65535, 32765, 16385, 4095, 1025, 255, 65, 15, 5]),
]


@pytest.mark.dicom
@pytest.mark.parametrize(("name", "where", "values"), REFERENCE_PIXELS)
def test_jpeg_lossless_and_jpeg_ls_near_lossless_match_reference_pixels(name: str, where, values) -> None:
    ds = pydicom.dcmread(_testdata(name), stop_before_pixels=True)
    assert ds.get("ImageOrientationPatient") is None  # so _stored_frame's axis mapping applies
    np.testing.assert_array_equal(_stored_frame(_raw(_testdata(name)))[where], values)


@pytest.mark.dicom
def test_deflated_files_decode(tmp_path: Path) -> None:
    real = _testdata("image_dfl.dcm")  # real deflated explicit VR little endian file
    np.testing.assert_array_equal(_stored_frame(_raw(real)), pydicom.dcmread(real).pixel_array)
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))  # a deflated twin of MR_small
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(_raw(str(tmp_path / "deflated.dcm")), _raw(_testdata("MR_small.dcm")))


# Colour twins cannot be ingested (single-channel only) but pass through the same pydicom decoders.
COLOUR_TWINS = [
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm", 0),  # JPEG lossless P14 SV1, RGB
    ("SC_rgb_rle.dcm", "SC_rgb.dcm", 0),  # RLE, RGB
    ("SC_rgb_gdcm_KY.dcm", "SC_rgb_gdcm2k_uncompressed.dcm", 0),  # JPEG 2000, RGB
    ("SC_rgb_jls_lossy_line.dcm", "SC_rgb.dcm", 2),  # JPEG-LS near-lossless (NEAR = 2), line interleaved
    ("SC_rgb_jls_lossy_sample.dcm", "SC_rgb.dcm", 2),  # JPEG-LS near-lossless, sample interleaved
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm", 6),  # JPEG baseline (lossy, YBR_FULL)
]


@pytest.mark.dicom
@pytest.mark.parametrize(("variant", "reference", "max_error"), COLOUR_TWINS)
def test_colour_twins_decode_and_are_rejected_cleanly(variant: str, reference: str, max_error: int) -> None:
    a = pydicom.dcmread(_testdata(variant)).pixel_array.astype(int)
    b = pydicom.dcmread(_testdata(reference)).pixel_array.astype(int)
    assert np.abs(a - b).max() <= max_error
    with pytest.raises(CaseError, match="single-channel") as err:
        _raw(_testdata(variant))
    _assert_path_free(str(err.value), _testdata(variant))


# ------------------------------------------------------------------ multi-frame and series geometry


@pytest.mark.dicom
def test_enhanced_ct_multiframe_geometry_and_rescale() -> None:
    path = _testdata("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    out = load_case({"image": path, "modality": "ct"}, normalize=False)["image"]
    assert out.shape == (1, 512, 512, 2)
    frames = ds.pixel_array.astype(np.float32) - 1024  # PixelValueTransformationSequence: slope 1, -1024
    for k in range(2):  # frames are stacked inferior to superior (z -159 then -149)
        np.testing.assert_array_equal(np.sort(out[0, ..., k].ravel()), np.sort(frames[k].ravel()))
    case = load_case({"image": path, "modality": "ct"}, spacing=(0.388672 * 2, 0.388672 * 2, 10.0), normalize=False)
    assert case["image"].shape == (1, 256, 256, 2)


@pytest.mark.dicom
def test_enhanced_mr_without_geometry_stacks_frames_along_the_last_axis() -> None:
    path = _testdata("emri_small.dcm")
    out = _raw(path)
    frames = pydicom.dcmread(path).pixel_array
    assert out.shape == (1, 64, 64, 10)
    for k in range(10):
        np.testing.assert_array_equal(_stored_frame(out, k), frames[k])


@pytest.mark.dicom
@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1), (0.8660254, 0.5, 0, -0.5, 0.8660254, 0)],
    ids=["axial", "sagittal", "coronal", "oblique"],
)
def test_series_is_sorted_by_position_rescaled_and_oriented_ras(tmp_path: Path, stored, orientation) -> None:
    write_series(tmp_path / "series", stored, orientation)  # file names and InstanceNumbers shuffled
    from omnifm.data.ingest import _load_tensors

    data, slices = _load_tensors({"image": str(tmp_path / "series"), "modality": "t1"}, None)
    image, affine = data["image"].numpy()[0], data["image"].affine.numpy()
    assert slices == 12 and nib.aff2axcodes(affine) == ("R", "A", "S")
    assert sorted(np.round(np.linalg.norm(affine[:3, :3], axis=0), 4)) == [0.8, 0.8, 3.0]
    np.testing.assert_array_equal(image, expected_from_world(image, affine, stored, orientation, 2.0, -1024.0))


@pytest.mark.dicom
@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1)], ids=["axial", "sagittal"])
def test_enhanced_multiframe_matches_the_classic_series(tmp_path: Path, stored, orientation) -> None:
    write_series(tmp_path / "series", stored, orientation)
    write_enhanced(tmp_path / "enhanced.dcm", stored, orientation)
    from omnifm.data.ingest import _load_tensors

    classic, _ = _load_tensors({"image": str(tmp_path / "series"), "modality": "t1"}, None)
    enhanced, _ = _load_tensors({"image": str(tmp_path / "enhanced.dcm"), "modality": "t1"}, None)
    np.testing.assert_array_equal(enhanced["image"].numpy(), classic["image"].numpy())
    np.testing.assert_allclose(enhanced["image"].affine.numpy(), classic["image"].affine.numpy(), atol=1e-4)


@pytest.mark.dicom
def test_monai_series_path_applies_the_rescale(tmp_path: Path, stored) -> None:
    """We rely on MONAI's PydicomReader applying RescaleSlope/Intercept to a series; pin it."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    write_series(tmp_path / "series", stored, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LoadImage also builds the optional nvImageCodec reader
        image = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path / "series"))
    np.testing.assert_array_equal(np.sort(image.numpy().ravel()), np.sort(2.0 * stored.ravel() - 1024.0))


@pytest.mark.dicom
def test_series_given_as_file_list_and_series_problems(tmp_path: Path, stored) -> None:
    files = write_series(tmp_path / "DOE_series", stored)
    as_list = _raw([str(f) for f in files])
    np.testing.assert_array_equal(as_list, _raw(str(tmp_path / "DOE_series")))
    files[5].unlink()  # a missing slice in the middle
    with pytest.raises(CaseError, match="uneven") as err:
        _raw(str(tmp_path / "DOE_series"))
    _assert_path_free(str(err.value), tmp_path / "DOE_series", files[5], values=(PATIENT,))
    write_series(tmp_path / "DOE_two", stored[:4], seed=1)
    write_series(tmp_path / "DOE_two", stored[:4], seed=2, prefix="FL", description="AX FLAIR")  # same folder
    with pytest.raises(CaseError, match="more than one DICOM series"):
        _raw(str(tmp_path / "DOE_two"))
    with pytest.raises(CaseError, match="no DICOM image files"):
        (tmp_path / "empty").mkdir()
        _raw(str(tmp_path / "empty"))


# ------------------------------------------------------------------ malformed input


MALFORMED_REAL = [
    ("no_meta.dcm", "no pixel data"),  # dataset without file meta or pixels
    ("rtplan_truncated.dcm", "no pixel data"),  # truncated non-image object
    ("MR_truncated.dcm", "could not be decoded"),  # pixel data shorter than Rows x Columns
    ("JPEG-lossy.dcm", "could not be decoded"),  # corrupt JPEG codestream
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "no pixel data"),  # broken encapsulation
    ("rtplan.dump", "no pixel data"),  # a text file, not DICOM
]


@pytest.mark.dicom
@pytest.mark.parametrize(("name", "reason"), MALFORMED_REAL)
def test_malformed_real_files_raise_path_free_case_errors(name: str, reason: str) -> None:
    path = _testdata(name)
    with pytest.raises(CaseError, match=reason) as err:
        load_case({"image": path, "modality": "t1"})
    header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    values = tuple(str(header.get(k, "")) for k in ("PatientName", "PatientID", "SeriesInstanceUID", "SOPInstanceUID"))
    _assert_path_free(str(err.value), path, values=values)
    assert str(err.value).startswith("image")


def _truncated_copy(src: str, dst: Path, fraction: float) -> Path:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.dicom
def test_truncated_and_non_dicom_files_raise_path_free_case_errors(tmp_path: Path) -> None:
    patient_dir = tmp_path / "DOE_JANE"
    patient_dir.mkdir()
    bad = [
        _truncated_copy(_testdata("693_J2KR.dcm"), patient_dir / "DOE_cut_pixels.dcm", 0.5),
        _truncated_copy(_testdata("MR_small.dcm"), patient_dir / "DOE_cut_header.dcm", 0.05),
        _truncated_copy(_testdata("CT_small.dcm"), patient_dir / "DOE_cut_end.dcm", 0.98),
    ]
    (patient_dir / "DOE_notes.dcm").write_text("Patient DOE^JANE^FAKE, not an image\n")
    (patient_dir / "DOE_random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (patient_dir / "DOE_empty.dcm").write_bytes(b"")
    (patient_dir / "DOE_scan.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    bad += [patient_dir / n for n in ("DOE_notes.dcm", "DOE_random.dcm", "DOE_empty.dcm", "DOE_scan.nii.gz")]
    for path in bad:
        with pytest.raises(CaseError) as err:
            load_case({"image": str(path), "modality": "ct"})
        _assert_path_free(str(err.value), path, values=("DOE", "JANE", PATIENT))


# ------------------------------------------------------------------ NIfTI cases and labels


def _nifti(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)
    return str(path)


@pytest.fixture
def nifti_case(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, size=(9, 11, 6)).astype(np.float32)
    label = np.zeros((9, 11, 6), dtype=np.uint8)
    label[2:4, 2:5, 1:3], label[5:7, 5:8, 3:5] = 2, 4
    return {
        "image": _nifti(tmp_path / "img.nii.gz", image),
        "label": _nifti(tmp_path / "lab.nii.gz", label),
        "modality": "t2",
    }


def test_load_case_returns_plain_numpy_with_raw_or_mapped_labels(nifti_case) -> None:
    raw = load_case(nifti_case)
    assert type(raw["image"]) is np.ndarray and raw["image"].dtype == np.float32 and raw["image"].shape == (1, 9, 11, 6)
    assert type(raw["label"]) is np.ndarray and raw["label"].dtype == np.uint8
    assert set(np.unique(raw["label"])) == {0, 2, 4}
    mapped = load_case(nifti_case, label_values={2: 1, 4: 2})
    np.testing.assert_array_equal(mapped["label"], np.select([raw["label"] == 2, raw["label"] == 4], [1, 2], 0))
    np.testing.assert_array_equal(mapped["image"], raw["image"])


def test_unknown_label_value_names_the_value_not_the_path(nifti_case) -> None:
    with pytest.raises(CaseError, match="label value 4 is not in label_values") as err:
        load_case(nifti_case, label_values={2: 1})
    _assert_path_free(str(err.value), nifti_case["label"], nifti_case["image"])


def test_spacing_resamples_image_bilinear_and_label_nearest(nifti_case) -> None:
    case = load_case(nifti_case, spacing=(2.0, 2.0, 2.0), normalize=False)
    assert case["image"].shape == case["label"].shape == (1, 5, 6, 6)  # 8 mm and 10 mm extents at 2 mm
    assert set(np.unique(case["label"])) <= {0, 2, 4}
    assert 100 <= case["image"].min() and case["image"].max() <= 200


def test_normalisation_follows_the_modality(nifti_case) -> None:
    ct = load_case({**nifti_case, "modality": "ct"})["image"]
    assert 0 <= ct.min() and ct.max() <= 1
    mr = load_case(nifti_case)["image"]
    assert abs(float(np.median(mr))) < 0.1


def test_label_geometry_must_match(tmp_path: Path, nifti_case) -> None:
    shifted = _nifti(tmp_path / "shifted.nii.gz", np.zeros((9, 11, 6), np.uint8), np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(CaseError, match="does not match the image"):
        load_case({**nifti_case, "label": shifted})
    small = _nifti(tmp_path / "small.nii.gz", np.zeros((8, 8, 6), np.uint8))
    with pytest.raises(CaseError, match="label shape"):
        load_case({**nifti_case, "label": small})
    flipped = _nifti(tmp_path / "flip.nii.gz", np.zeros((9, 11, 6), np.uint8), np.diag([-1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(CaseError, match="does not match"):
        load_case({**nifti_case, "label": flipped})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"case": {"image": "x.nii.gz"}}, "case must"),
        ({"case": {"image": "x.nii.gz", "modality": "xray"}}, "modality"),
        ({"spacing": (1.0, 0.0, 1.0)}, r"spacing\[1\]"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"label_values": {1: 300}}, "label_values"),
        ({"label_values": [1, 2]}, "label_values"),
    ],
)
def test_load_case_rejects_bad_arguments(nifti_case, kwargs: dict, match: str) -> None:
    args = {"case": nifti_case, **kwargs}
    with pytest.raises(ValueError, match=match) as err:
        load_case(**args)
    assert not isinstance(err.value, CaseError)


# ------------------------------------------------------------------ discovery


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("AX T1 MPRAGE", "t1"),
        ("t1_mprage_sag_p2_iso", "t1"),
        ("T1 POST GD", "t1ce"),
        ("Ax T1 +C", "t1ce"),
        ("t1_mprage_ce", "t1ce"),
        ("T1C", "t1ce"),
        ("AX FLAIR", "flair"),
        ("t2_tirm_tra_dark-fluid", "flair"),
        ("T2W_TSE_TRA", "t2"),
        ("", "t1"),
        ("localizer", "t1"),
        ("T1 SE posterior fossa", "t1"),
        ("T1_MPRAGE_POST", "t1ce"),
    ],
)
def test_mr_sequence_from_series_description(description: str, expected: str) -> None:
    ds = Dataset()
    ds.Modality, ds.SeriesDescription = "MR", description
    assert dicom_modality(ds) == expected


@pytest.mark.parametrize(
    ("kind", "expected"), [("CT", "ct"), ("PT", "pet"), ("NM", "spect"), ("US", None), ("XA", None)]
)
def test_dicom_modality_kinds(kind: str, expected) -> None:
    ds = Dataset()
    ds.Modality = kind
    assert dicom_modality(ds) == expected


@pytest.mark.parametrize(
    ("image_type", "expected"),
    [(None, "spect"), (["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"], "spect"),
     (["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"], None), (["ORIGINAL", "PRIMARY", "WHOLE BODY"], None)],
)
def test_nm_is_spect_unless_it_is_not_a_reconstructed_volume(image_type, expected) -> None:
    ds = Dataset()
    ds.Modality = "NM"
    if image_type is not None:
        ds.ImageType = image_type
    assert dicom_modality(ds) == expected


def test_contrast_agent_makes_a_t1_series_t1ce() -> None:
    ds = Dataset()
    ds.Modality, ds.SeriesDescription, ds.ContrastBolusAgent = "MR", "AX T1 SE", "GADOVIST"
    assert dicom_modality(ds) == "t1ce"


def test_discover_nifti_layouts(tmp_path: Path) -> None:
    vol = np.ones((4, 4, 4), np.float32)
    _nifti(tmp_path / "SMITH_image.nii.gz", vol)
    _nifti(tmp_path / "SMITH_label.nii.gz", vol)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _nifti(tmp_path / "images" / "DOE.nii", vol)
    _nifti(tmp_path / "labels" / "DOE.nii", vol)
    _nifti(tmp_path / "images" / "ROE.nii.gz", vol)  # unlabelled
    (tmp_path / "ZED").mkdir()
    _nifti(tmp_path / "ZED" / "image.nii.gz", vol)
    _nifti(tmp_path / "ZED" / "label.nii.gz", vol)
    _nifti(tmp_path / "stray.nii.gz", vol)  # matches no layout
    cases = discover_cases(tmp_path)
    assert [c["id"] for c in cases] == ["case_000", "case_001", "case_002", "case_003"]
    # sorted by relative path: SMITH_image.nii.gz, ZED/image.nii.gz, images/DOE.nii, images/ROE.nii.gz
    assert [Path(c["image"]).name for c in cases] == ["SMITH_image.nii.gz", "image.nii.gz", "DOE.nii", "ROE.nii.gz"]
    assert [Path(c["label"]).name if c["label"] else None for c in cases] == [
        "SMITH_label.nii.gz",
        "label.nii.gz",
        "DOE.nii",
        None,
    ]
    assert all(c["format"] == "nifti" and c["modality"] is None for c in cases)
    assert discover_cases(tmp_path, fmt="dicom") == []


@pytest.mark.dicom
def test_discover_dicom_groups_series_and_matches_labels(tmp_path: Path, stored) -> None:
    write_series(tmp_path / "DOE_JANE", stored[:3], description="AX T1 MPRAGE")
    write_series(tmp_path / "DOE_JANE", stored[:3], seed=1, prefix="FL", description="AX FLAIR")
    _nifti(tmp_path / "DOE_JANE" / "label.nii.gz", np.zeros((3, 3, 3), np.uint8))  # ambiguous: two series
    write_series(tmp_path / "ROE_RICHARD" / "study", stored[:4], modality="CT", description="HEAD")
    _nifti(tmp_path / "ROE_RICHARD" / "study" / "label.nii.gz", np.zeros((3, 3, 3), np.uint8))
    shutil.copy(_testdata("rtplan.dcm"), tmp_path / "ROE_RICHARD" / "plan.dcm")  # not an image: ignored
    write_series(tmp_path / "images" / "ZOE", stored[:2], description="T2 TSE")  # images/<case>/ layout
    (tmp_path / "labels").mkdir()
    _nifti(tmp_path / "labels" / "ZOE.nii.gz", np.zeros((3, 3, 3), np.uint8))
    (tmp_path / "README.txt").write_text("export of DOE^JANE^FAKE")
    cases = discover_cases(tmp_path)
    assert [c["id"] for c in cases] == ["case_000", "case_001", "case_002", "case_003"]
    assert sorted(c["modality"] for c in cases[:2]) == ["flair", "t1"]
    assert cases[2]["modality"] == "ct" and cases[2]["label"].endswith("study/label.nii.gz")
    assert cases[3]["modality"] == "t2" and cases[3]["label"].endswith("labels/ZOE.nii.gz")
    assert cases[0]["label"] is None and cases[1]["label"] is None
    assert all(c["format"] == "dicom" and len(c["image"]) in (2, 3, 4) and c["problem"] is None for c in cases)


def test_discover_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_dir"):
        discover_cases(tmp_path / "missing")
    with pytest.raises(ValueError, match="fmt"):
        discover_cases(tmp_path, fmt="png")


# ------------------------------------------------------------------ prepare_dataset


@pytest.fixture
def site_input(tmp_path: Path, stored) -> Path:
    """A DICOM site export: one good series with a NIfTI label in the series folder, one broken series."""
    root = tmp_path / "export_DOE"
    write_series(root / "DOE_JANE", stored)
    first = pydicom.dcmread(next((root / "DOE_JANE").iterdir()))
    assert str(first.PatientName) == PATIENT
    # label in the DICOM's own (non-RAS) voxel order: (cols, rows, slices), LPS affine turned RAS
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = [SPACING[0], 0, 0], [0, SPACING[1], 0]
    affine[:3, 2], affine[:3, 3] = [0, 0, SPACING[2]], ORIGIN
    label = (np.transpose(stored, (2, 1, 0)) > 1000).astype(np.uint8)
    _nifti(root / "DOE_JANE" / "label.nii.gz", label, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine)
    broken = write_series(root / "SMITH_JOHN", stored[:3], seed=5)
    _truncated_copy(str(broken[1]), broken[1], 0.5)
    (root / "notes.txt").write_text("DOE^JANE^FAKE")
    return root


def _output_text(out: Path) -> str:
    text = (out / "datalist.json").read_text()
    for path in out.rglob("*.nii.gz"):
        text += gzip.decompress(path.read_bytes()).decode("latin-1")
    return text + " ".join(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.mark.dicom
def test_prepare_dataset_round_trip(tmp_path: Path, site_input: Path, stored, capsys) -> None:
    out = tmp_path / "prepared"
    summary = prepare_dataset(site_input, out)
    log = capsys.readouterr().out
    assert isinstance(summary, PrepareSummary)
    assert summary.cases_found == 2 and summary.converted == ["case_000"] and summary.slices == 12
    assert [(s.index, s.case_id) for s in summary.skipped] == [(1, "case_001")]
    assert summary.skipped[0].reason == "1 unreadable DICOM file(s) in the series folder"
    assert summary.bytes_read > stored.nbytes and summary.seconds > 0
    assert log.count("[1/2] case_000 ok") == 1 and "[2/2] case_001 skipped" in log

    datalist = json.loads((out / "datalist.json").read_text())
    entry = {"id": "case_000", "image": "images/case_000.nii.gz", "label": "labels/case_000.nii.gz", "modality": "t1"}
    assert datalist == {"cases": [entry]}
    image = nib.load(out / "images" / "case_000.nii.gz")
    assert image.shape == (16, 20, 12) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    np.testing.assert_allclose(image.header.get_zooms(), SPACING, rtol=1e-5)
    values = np.asarray(image.dataobj)
    expected = expected_from_world(values, image.affine, stored, (1, 0, 0, 0, 1, 0), 2.0, -1024.0)
    np.testing.assert_array_equal(values, expected)
    label = np.asarray(nib.load(out / "labels" / "case_000.nii.gz").dataobj)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, (values > 2.0 * 1000 - 1024).astype(np.uint8))  # same voxels

    public = log + summary.table() + json.dumps(summary.to_dict()) + _output_text(out)
    for secret in ("DOE", "JANE", "SMITH", "IM_", str(site_input), str(tmp_path), "notes.txt", "label.nii.gz"):
        assert secret not in public, f"{secret!r} leaked"
    loaded = load_case(_prepared_cases(out)[0], label_values={1: 1})
    assert loaded["image"].shape == (1, 16, 20, 12) and set(np.unique(loaded["label"])) == {0, 1}


@pytest.mark.dicom
def test_prepare_dataset_resamples_and_overrides_modality(tmp_path: Path, site_input: Path) -> None:
    out = tmp_path / "prepared"
    summary = prepare_dataset(site_input, out, spacing=(1.6, 1.6, 3.0), modality="flair", progress=False)
    assert summary.converted == ["case_000"]
    image = nib.load(out / "images" / "case_000.nii.gz")
    assert image.shape == (8, 10, 12)
    np.testing.assert_allclose(image.header.get_zooms(), (1.6, 1.6, 3.0), rtol=1e-5)
    assert nib.load(out / "labels" / "case_000.nii.gz").shape == (8, 10, 12)
    assert _prepared_cases(out)[0]["modality"] == "flair"


@pytest.mark.dicom
def test_phantom_spect_dicom_reads_back_as_spect(tmp_path: Path) -> None:
    from omnifm.data.phantom import write_phantom_site

    shape = (24, 24, 6)
    nifti = write_phantom_site(tmp_path / "n", "spect", 1, seed=2, shape=shape, site_index=1)[0]
    write_phantom_site(tmp_path / "d", "spect", 1, seed=2, shape=shape, site_index=1, fmt="dicom")
    [case] = discover_cases(tmp_path / "d")
    assert case["modality"] == "spect" and case["problem"] is None and len(case["image"]) == shape[2]
    assert pydicom.dcmread(case["image"][0]).Modality == "NM"
    raw = load_case(case, normalize=False)["image"]
    reference = load_case(nifti, normalize=False)["image"]
    np.testing.assert_allclose(raw, reference, atol=float(reference.max()) / 60000.0)
    brats = {1: 1, 2: 2, 4: 3}
    loaded, expected = load_case(case, label_values=brats), load_case(nifti, label_values=brats)
    # 16-bit storage zeroes the faintest voxels, which moves the percentiles of the reference a little
    np.testing.assert_allclose(loaded["image"], expected["image"], rtol=0.01, atol=1e-3)
    np.testing.assert_array_equal(loaded["label"], expected["label"])
    assert 0.0 <= loaded["image"].min() and 1.0 < loaded["image"].max() <= 5.0  # perfusion ratio
    summary = prepare_dataset(tmp_path / "d", tmp_path / "prepared", progress=False)
    assert summary.converted == ["case_000"] and _prepared_cases(tmp_path / "prepared")[0]["modality"] == "spect"


def test_prepare_dataset_nifti_defaults_to_t1_with_a_note(tmp_path: Path, nifti_case) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(nifti_case["image"], src / "PATIENT_image.nii.gz")
    shutil.copy(nifti_case["label"], src / "PATIENT_label.nii.gz")
    summary = prepare_dataset(src, tmp_path / "out", fmt="nifti", progress=False)
    assert summary.converted == ["case_000"] and any("t1 assumed" in n for n in summary.notes)
    entry = _prepared_cases(tmp_path / "out")[0]
    assert entry["modality"] == "t1"
    written, original = nib.load(entry["label"]), nib.load(nifti_case["label"])
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))


def test_prepare_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="output_dir"):
        prepare_dataset(tmp_path / "in", tmp_path / "in" / "out")
    with pytest.raises(ValueError, match="modality"):
        prepare_dataset(tmp_path / "in", tmp_path / "out", modality="xray")
    with pytest.raises(ValueError, match="input_dir"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out")
    empty = prepare_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    assert empty.cases_found == 0 and empty.converted == []
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == {"cases": []}


# ------------------------------------------------------------------ geometry that cannot be trusted (issue 13)


def _raw_affine_nifti(path: Path, data: np.ndarray, affine) -> str:
    """A NIfTI whose sform holds ``affine`` exactly as given: nibabel refuses to write NaN itself."""
    import struct

    img = nib.Nifti1Image(data, np.eye(4))
    img.set_qform(None)
    img.set_sform(np.eye(4), code=1)
    img.header.set_data_offset(352)
    raw = bytearray(img.header.binaryblock)
    for row, offset in zip(np.asarray(affine, dtype=float)[:3], (280, 296, 312)):
        raw[offset : offset + 16] = struct.pack("<4f", *row)
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw) + b"\0" * 4 + data.astype(img.get_data_dtype()).tobytes(order="F"))
    return str(path)


NAN_ORIGIN = [[1, 0, 0, np.nan], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("image_affine", "label_affine", "match"),
    [
        (NAN_ORIGIN, [[1, 0, 0, 40.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "image geometry.*NaN or Inf"),
        (NAN_ORIGIN, None, "image geometry.*NaN or Inf"),
        (np.eye(4), np.diag([1, np.inf, 1, 1.0]), "label geometry.*NaN or Inf"),
        (np.diag([1, 0, 1, 1.0]), None, "image geometry.*singular"),
        (np.eye(4), [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "label geometry.*singular"),
    ],
    ids=["nan-origin-other-grid-label", "nan-origin-no-label", "inf-label", "zero-column", "parallel-axes-label"],
)
def test_non_finite_or_singular_affines_are_refused(tmp_path: Path, image_affine, label_affine, match) -> None:
    """A NaN affine used to pass the label check (``nan > tol`` is False) and MONAI rewrites a broken sform."""
    rng = np.random.default_rng(0)
    case = {"image": _raw_affine_nifti(tmp_path / "i.nii.gz", rng.random((9, 11, 6)).astype(np.float32), image_affine),
            "modality": "t1"}
    if label_affine is not None:
        case["label"] = _raw_affine_nifti(tmp_path / "l.nii.gz", np.zeros((9, 11, 6), np.uint8), label_affine)
    with pytest.raises(CaseError, match=match) as err:
        load_case(case)
    _assert_path_free(str(err.value), case["image"], case.get("label", case["image"]))


def test_a_nan_affine_is_a_bad_case_of_the_integrity_gate(tmp_path: Path) -> None:
    from omnifm.data.integrity import verify_cases

    rng = np.random.default_rng(0)
    cases = []
    for i, affine in enumerate([np.eye(4), NAN_ORIGIN, np.eye(4)]):
        image = _raw_affine_nifti(tmp_path / f"i{i}.nii.gz", rng.random((9, 11, 6)).astype(np.float32), affine)
        label = _raw_affine_nifti(tmp_path / f"l{i}.nii.gz", np.zeros((9, 11, 6), np.uint8), np.eye(4))
        cases.append({"image": image, "label": label, "modality": "t1"})
    config = parse_site_config({"format": "nifti", "data_root": str(tmp_path), "modalities": ["t1"],
                                "label_map": {"0": "background", "1": "tumour"}}, tmp_path, check_paths=False)
    report = verify_cases(cases, config, ["background", "tumour"])
    assert report.good == [0, 2] and [i for i, _ in report.bad] == [1]
    assert "image geometry is invalid" in report.bad[0][1]


def _rotate_slice(path: Path, orientation) -> None:
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.save_as(path)


_TILT = np.radians(20)


@pytest.mark.dicom
@pytest.mark.parametrize(
    ("slice_index", "orientation"),
    [(3, (0, 1, 0, -1, 0, 0)), (0, (0, 1, 0, -1, 0, 0)), (5, (1, 0, 0, 0, np.cos(_TILT), np.sin(_TILT)))],
    ids=["middle-slice-90deg", "first-slice-90deg", "tilted-20deg"],
)
def test_a_series_with_slices_of_different_orientations_is_refused(tmp_path: Path, stored, slice_index, orientation):
    files = sorted(write_series(tmp_path / "s", stored))
    _rotate_slice(files[slice_index], orientation)
    with pytest.raises(CaseError, match="2 different orientations") as err:
        load_case({"image": str(tmp_path / "s"), "modality": "t1"})
    _assert_path_free(str(err.value), tmp_path, values=(PATIENT,))
    summary = prepare_dataset(tmp_path / "s", tmp_path / "out", fmt="dicom", progress=False)
    assert not summary.converted and "different orientations" in summary.skipped[0].reason


@pytest.mark.dicom
def test_orientations_equal_up_to_rounding_are_one_orientation(tmp_path: Path, stored) -> None:
    files = sorted(write_series(tmp_path / "s", stored))
    _rotate_slice(files[2], (1, 0, 0, 0, 1, 1e-5))  # DS rounding noise, well below 0.1 degree
    assert load_case({"image": str(tmp_path / "s"), "modality": "t1"})["image"].shape[-1] == len(stored)


@pytest.mark.parametrize("spacing", [(0.001, 0.001, 0.001), (1.0, 1.0, 500.0)])
def test_implausible_target_spacing_is_refused_naming_the_field(nifti_case, spacing) -> None:
    with pytest.raises(ValueError, match=r"spacing\[\d\] \(mm\) must be in \[0.05, 20.0\]"):
        load_case(nifti_case, spacing=spacing)


def test_a_resampled_grid_beyond_the_size_bound_is_refused_before_allocating(tmp_path: Path) -> None:
    # 9 x 11 x 6 voxels of 400 mm (a broken export) at 0.1 mm would be 36000 x 44000 x 24000 voxels
    huge = np.diag([400.0, 400.0, 400.0, 1.0])
    case = {"image": _nifti(tmp_path / "i.nii.gz", np.ones((9, 11, 6), np.float32), huge), "modality": "t1"}
    with pytest.raises(CaseError, match=r'resampling to "spacing" \[0.1, 0.1, 0.1\] mm would make a \(36000, 44000, 24000\)'):
        load_case(case, spacing=(0.1, 0.1, 0.1))
