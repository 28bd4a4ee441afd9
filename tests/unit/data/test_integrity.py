"""Tests of the integrity gate (verify_cases, resolve_cases) with a fake ingestion module."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from omnifm.data.integrity import MIN_GOOD_CASES, DatalistError, IntegrityReport, resolve_cases, verify_cases
from omnifm.data.site_config import SiteConfigError, parse_site_config

CLASSES = ["background", "necrotic", "edema", "enhancing"]
LABEL_MAP = {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}
SHAPE = (6, 5, 4)
NAME = "DOE^JANE"


class CaseError(ValueError):
    """Stands in for ``omnifm.data.ingest.CaseError``."""


def fake_load_case(case: dict, spacing=None, label_values=None, normalize=True) -> dict:
    """Behaves as ``case["fake"]`` says; maps raw labels through ``label_values`` like ingest."""
    kind = case.get("fake", "ok")
    if kind == "case_error":
        raise CaseError(f"cannot decode {case['image']} of {case['id']}")  # a careless message
    if kind == "os_error":
        raise OSError(f"[Errno 13] Permission denied: {case['image']!r}")
    image = np.ones((1, *SHAPE), np.float32)
    raw = np.zeros((1, *SHAPE), np.uint8)
    raw[0, 1, 1, 1], raw[0, 2, 2, 2] = 1, 4
    if kind == "nan":
        image[0, 0, 0, :2] = np.nan
    if kind == "raw7":
        raw[0, 3, 3, 3] = 7
    if kind == "shape":
        raw = raw[:, :-1]
    lut = dict(label_values or {})
    label = np.vectorize(lambda v: lut.get(int(v), int(v)), otypes=[np.uint8])(raw)
    result = {"image": image, "label": label}
    if kind == "spacing":
        result.update(image_spacing=(1.0, 1.0, 1.0), label_spacing=(1.0, 1.0, 3.0))
    if kind == "warn":
        warnings.warn(f"odd header in {case['image']}", stacklevel=1)
    return result


@pytest.fixture
def fake_ingest(monkeypatch) -> types.ModuleType:
    """Install a fake ``omnifm.data.ingest`` (the real one may not exist yet)."""
    module = types.ModuleType("omnifm.data.ingest")
    module.CaseError = CaseError
    module.load_case = fake_load_case
    monkeypatch.setitem(sys.modules, "omnifm.data.ingest", module)
    return module


def _config(root: Path, modalities=("t1",), spacing=None):
    data = {"format": "nifti", "data_root": str(root), "modalities": list(modalities), "label_map": LABEL_MAP}
    return parse_site_config({**data, "spacing": spacing}, root, check_paths=False)


def _case(root: Path, index: int, fake: str = "ok", modality: str = "t1", label: bool = True) -> dict:
    """A case whose folder and id carry a patient's name; its files exist (empty)."""
    folder = root / f"{NAME}_{index}"
    folder.mkdir(parents=True, exist_ok=True)
    case = {"id": f"{NAME}_{index}", "image": str(folder / "t1.nii.gz"), "modality": modality, "fake": fake}
    Path(case["image"]).touch()
    if label:
        case["label"] = str(folder / "seg.nii.gz")
        Path(case["label"]).touch()
    return case


def _verify(tmp_path: Path, kinds: list[str], **kwargs) -> IntegrityReport:
    cases = [_case(tmp_path, i, kind) for i, kind in enumerate(kinds)]
    return verify_cases(cases, _config(tmp_path), CLASSES, fake_load_case, **kwargs)


def _reasons(report: IntegrityReport) -> dict[int, str]:
    return dict(report.bad)


def test_all_good_cases(tmp_path: Path, fake_ingest):
    report = _verify(tmp_path, ["ok", "ok", "ok"])
    assert (report.good, report.bad, report.site_problems) == ([0, 1, 2], [], [])
    assert report.usable
    assert report.lines() == ["3 good / 0 bad of 3 cases, 0 site problems: usable"]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "image has 2 non-finite values (NaN/inf)"),
        ("shape", "label shape (1, 5, 5, 4) does not match image shape (1, 6, 5, 4)"),
        ("raw7", "label values {7} not in label_map"),
        ("spacing", "image spacing (1.0, 1.0, 1.0) and label spacing (1.0, 1.0, 3.0) differ"),
        ("os_error", "unreadable (OSError; details withheld as they may name files)"),
        ("case_error", "CaseError: cannot decode <redacted> of <redacted>"),
    ],
)
def test_bad_case_reason(tmp_path: Path, fake_ingest, kind: str, reason: str):
    report = _verify(tmp_path, ["ok", kind, "ok"])
    assert report.good == [0, 2]
    assert _reasons(report) == {1: reason}


def test_lines_report_bad_cases_by_index_only(tmp_path: Path, fake_ingest):
    kinds = ["ok", "case_error", "ok", "raw7", "os_error", "nan", "ok", "shape", "warn"]
    report = _verify(tmp_path, kinds)
    lines = report.lines()
    assert report.good == [0, 2, 6, 8]
    assert [line.split(":")[0] for line in lines if line.startswith("case ")] == [
        "case 1",
        "case 3",
        "case 4",
        "case 5",
        "case 7",
    ]
    assert "case 3: label values {7} not in label_map" in lines
    text = "\n".join(lines) + repr(report)
    assert NAME not in text and "DOE" not in text and str(tmp_path) not in text
    assert lines[-1] == "4 good / 5 bad of 9 cases, 0 site problems: usable"


def test_loader_gets_the_config_spacing_and_label_mapping(tmp_path: Path, fake_ingest):
    calls = []

    def loader(case, spacing=None, label_values=None, normalize=True):
        calls.append((case["id"], spacing, label_values, normalize))
        return fake_load_case(case, spacing, label_values, normalize)

    cases = [_case(tmp_path, i) for i in range(2)]
    verify_cases(cases, _config(tmp_path, spacing=[1.0, 1.0, 2.0]), CLASSES, loader)
    assert calls[0] == (f"{NAME}_0", (1.0, 1.0, 2.0), {0: 0, 1: 1, 2: 2, 4: 3}, False)  # raw intensities


def test_default_loader_is_ingest_load_case(tmp_path: Path, fake_ingest):
    fake_ingest.load_case = lambda case, **kwargs: fake_load_case({**case, "fake": "nan"}, **kwargs)
    report = verify_cases([_case(tmp_path, 0), _case(tmp_path, 1)], _config(tmp_path), CLASSES)
    assert [reason for _, reason in report.bad] == ["image has 2 non-finite values (NaN/inf)"] * 2


def test_without_ingest_every_exception_is_withheld(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "omnifm.data.ingest", None)  # import fails
    report = _verify(tmp_path, ["ok", "case_error", "ok"])
    assert _reasons(report) == {1: "unreadable (CaseError; details withheld as they may name files)"}


def test_missing_files_are_not_loaded(tmp_path: Path, fake_ingest):
    cases = [_case(tmp_path, i) for i in range(4)]
    Path(cases[1]["image"]).unlink()
    Path(cases[2]["label"]).unlink()
    del cases[3]["label"]
    loaded = []

    def loader(case, **kwargs):
        loaded.append(case["id"])
        return fake_load_case(case, **kwargs)

    report = verify_cases(cases, _config(tmp_path), CLASSES, loader)
    assert _reasons(report) == {1: "image file missing", 2: "label file missing", 3: "no label in the datalist"}
    assert loaded == [f"{NAME}_0"]


def test_label_not_required(tmp_path: Path, fake_ingest):
    cases = [_case(tmp_path, i, label=False) for i in range(2)]

    def loader(case, **kwargs):
        return {"image": fake_load_case(case, **kwargs)["image"]}

    report = verify_cases(cases, _config(tmp_path), CLASSES, loader, require_label=False)
    assert report.good == [0, 1] and report.usable
    required = verify_cases(cases, _config(tmp_path), CLASSES, loader)
    assert _reasons(required) == {0: "no label in the datalist", 1: "no label in the datalist"}


def test_loader_without_label_output(tmp_path: Path, fake_ingest):
    loader = lambda case, **_: {"image": np.ones((1, 2, 2, 2))}  # noqa: E731
    report = verify_cases([_case(tmp_path, 0)], _config(tmp_path), CLASSES, loader)
    assert _reasons(report) == {0: "the loader returned no label"}


def test_modality_checks(tmp_path: Path, fake_ingest):
    modalities = ["t1", "ct", NAME, "t1"]
    cases = [_case(tmp_path, i, modality=m) for i, m in enumerate(modalities)]
    del cases[3]["modality"]
    report = verify_cases(cases, _config(tmp_path), CLASSES, fake_load_case)
    assert _reasons(report) == {
        1: "modality 'ct' is not in the site's \"modalities\" ['t1']",
        2: "modality an unknown modality is not in the site's \"modalities\" ['t1']",
        3: 'no "modality" in the datalist',
    }
    assert NAME not in "\n".join(report.lines())


def test_configured_modality_without_good_case_is_a_site_problem(tmp_path: Path, fake_ingest):
    cases = [_case(tmp_path, 0), _case(tmp_path, 1), _case(tmp_path, 2, "nan", modality="flair")]
    report = verify_cases(cases, _config(tmp_path, modalities=("t1", "flair")), CLASSES, fake_load_case)
    assert report.good == [0, 1]
    assert report.site_problems == [
        "modality 'flair' is in \"modalities\" but has no good case — fix its cases or remove it from \"modalities\""
    ]
    assert not report.usable
    assert report.lines()[-2].startswith("site: modality 'flair'")
    assert report.lines()[-1].endswith("NOT usable")


def test_too_few_good_cases_is_a_site_problem(tmp_path: Path, fake_ingest):
    report = _verify(tmp_path, ["ok", "nan"])
    assert report.good == [0] and not report.usable
    assert report.site_problems == [f"1 good cases; at least {MIN_GOOD_CASES} are needed for a train/val split"]


def test_no_good_case_is_unusable(tmp_path: Path, fake_ingest):
    report = _verify(tmp_path, ["nan", "os_error"])
    assert report.good == [] and not report.usable
    assert len(report.site_problems) == 2  # modality t1 has no good case, 0 good cases


def test_no_cases(tmp_path: Path, fake_ingest):
    report = verify_cases([], _config(tmp_path), CLASSES, fake_load_case)
    assert report.site_problems == ["the datalist has no cases — run omnifm-prepare-data"]
    assert not report.usable


def test_duplicate_image(tmp_path: Path, fake_ingest):
    cases = [_case(tmp_path, 0), _case(tmp_path, 1)]
    cases.append({**cases[0], "id": "other"})
    report = verify_cases(cases, _config(tmp_path), CLASSES, fake_load_case)
    assert _reasons(report) == {2: "same image file as case 0"}


def test_keep_loaded(tmp_path: Path, fake_ingest):
    report = _verify(tmp_path, ["ok", "nan", "ok"], keep_loaded=True, normalize=False)
    assert sorted(report.loaded) == [0, 2]
    assert report.loaded[0]["label"].max() == 3  # raw 4 -> "enhancing" -> index 3
    np.testing.assert_array_equal(report.loaded[0]["image"], fake_load_case({})["image"])
    assert _verify(tmp_path, ["ok", "ok"]).loaded == {}


def test_kept_images_are_normalised_like_load_case(tmp_path: Path, fake_ingest):
    from omnifm.data.normalize import normalize_intensity

    raw = np.random.default_rng(0).uniform(0, 100, (1, *SHAPE)).astype(np.float32)
    loader = lambda case, **kwargs: {**fake_load_case(case, **kwargs), "image": raw.copy()}  # noqa: E731
    cases = [_case(tmp_path, i) for i in range(2)]
    report = verify_cases(cases, _config(tmp_path), CLASSES, loader, keep_loaded=True)
    np.testing.assert_allclose(report.loaded[1]["image"], normalize_intensity(raw, "t1"))
    assert report.loaded[1]["image"].dtype == np.float32


def test_non_finite_voxels_are_found_before_normalisation(tmp_path: Path, fake_ingest):
    """Normalisation would zero NaN voxels, so the gate must see the raw intensities."""

    def loader(case, normalize=True, **kwargs):
        loaded = fake_load_case({**case, "fake": "nan"}, **kwargs)
        if normalize:
            loaded["image"] = np.nan_to_num(loaded["image"])
        return loaded

    report = verify_cases([_case(tmp_path, 0)], _config(tmp_path), CLASSES, loader)
    assert _reasons(report) == {0: "image has 2 non-finite values (NaN/inf)"}


def test_case_error_text_keeps_generic_words_and_drops_names(tmp_path: Path, fake_ingest):
    folder = tmp_path / "labels" / NAME
    folder.mkdir(parents=True)
    case = {"id": "case_000", "image": str(folder / "image.nii.gz"), "label": str(folder / "label.nii.gz")}
    for key in ("image", "label"):
        Path(case[key]).touch()

    def loader(case, **kwargs):
        raise CaseError(f"label shape mismatch in labels/{NAME} (case_000)")

    report = verify_cases([{**case, "modality": "t1"}], _config(tmp_path), CLASSES, loader)
    assert _reasons(report) == {0: "CaseError: label shape mismatch in labels/<redacted> (<redacted>)"}


def test_unknown_class_is_a_config_error(tmp_path: Path, fake_ingest):
    with pytest.raises(SiteConfigError, match="necrotic"):
        verify_cases([_case(tmp_path, 0)], _config(tmp_path), ["background", "edema", "enhancing"], fake_load_case)


def test_loader_warnings_do_not_escape(tmp_path: Path, fake_ingest):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = _verify(tmp_path, ["warn", "warn"])
    assert report.good == [0, 1]


# --------------------------------------------------------------------------- resolve_cases


def _write_datalist(root: Path, data) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "datalist.json").write_text(data if isinstance(data, str) else json.dumps(data))


def test_resolve_cases(tmp_path: Path):
    root = tmp_path / "data"
    cases = [
        {"id": "a", "image": "imgs/a.nii.gz", "label": "labels/a.nii.gz", "modality": "t1", "extra": 1},
        {"image": "/abs/b.nii.gz"},
        {"id": "case_002", "image": "images/case_002.nii.gz", "label": None, "modality": "t1"},  # unlabelled
    ]
    _write_datalist(root, {"cases": cases})
    resolved = resolve_cases(_config(root))
    assert resolved[0] == {
        "id": "a",
        "image": str(root / "imgs/a.nii.gz"),
        "label": str(root / "labels/a.nii.gz"),
        "modality": "t1",
        "extra": 1,
    }
    assert resolved[1] == {"id": "case_001", "image": "/abs/b.nii.gz", "modality": "t1"}
    assert resolved[2]["label"] is None


def test_resolve_cases_keeps_missing_modality_with_several_modalities(tmp_path: Path):
    _write_datalist(tmp_path, {"cases": [{"image": "a.nii.gz"}]})
    assert "modality" not in resolve_cases(_config(tmp_path, modalities=("t1", "t2")))[0]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (None, '"datalist.json" does not exist in "data_root"'),
        ("{oops", '"datalist.json" is not valid JSON'),
        ([], 'must be an object with a "cases" list'),
        ({"items": []}, 'must be an object with a "cases" list'),
        ({"cases": [{"image": "a"}, {"label": "b"}]}, '"cases\\[1\\].image" must be a non-empty path string'),
        ({"cases": ["a.nii.gz"]}, '"cases\\[0\\].image"'),
        ({"cases": [{"image": "a", "label": 3}]}, '"cases\\[0\\].label"'),
    ],
)
def test_resolve_cases_errors(tmp_path: Path, data, fragment: str):
    if data is not None:
        _write_datalist(tmp_path, data)
    with pytest.raises(DatalistError, match=fragment) as info:
        resolve_cases(_config(tmp_path))
    assert isinstance(info.value, SiteConfigError)
    assert str(info.value).startswith("datalist: ") and "site_configs/README.md" in str(info.value)


def test_resolve_cases_phantom_without_root(tmp_path: Path):
    config = parse_site_config({"format": "phantom", "modalities": ["t1"], "label_map": {"0": "background"}}, tmp_path)
    with pytest.raises(DatalistError, match='"data_root" is not set'):
        resolve_cases(config)
