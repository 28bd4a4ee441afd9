"""Tests of the ``omnifm-verify-data`` console command."""

from __future__ import annotations

import json
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest

from omnifm.tools.verify_data import main, verify_site

ROOT = Path(__file__).resolve().parents[3]
NAME = "DOE^JANE"
LABEL_MAP = {"0": "background", "2": "edema", "1": "necrotic"}


class CaseError(ValueError):
    """Stands in for ``omnifm.data.ingest.CaseError``."""


def _load_case(case: dict, spacing=None, label_values=None, normalize=True) -> dict:
    if "broken" in case["image"]:
        raise CaseError("not a volume")
    image = np.zeros((1, 4, 4, 3), np.float32)
    if "nan" in case["image"]:
        image[0, 0, 0, 0] = np.inf
    label = np.zeros((1, 4, 4, 3), np.uint8)
    label[0, 1, 1, 1] = label_values[2]
    return {"image": image, "label": label}


@pytest.fixture(autouse=True)
def fake_ingest(monkeypatch) -> None:
    module = types.ModuleType("omnifm.data.ingest")
    module.CaseError, module.load_case = CaseError, _load_case
    monkeypatch.setitem(sys.modules, "omnifm.data.ingest", module)


def _site(tmp_path: Path, images: list[str], **overrides) -> Path:
    """A site config + datalist; each case's files live in a folder named after a patient."""
    data = tmp_path / "data"
    cases = []
    for i, image in enumerate(images):
        folder = data / f"{NAME}_{i}"
        folder.mkdir(parents=True)
        (folder / image).touch()
        (folder / "label.nii.gz").touch()
        cases.append({"id": f"{NAME}_{i}", "image": f"{folder.name}/{image}", "label": f"{folder.name}/label.nii.gz"})
    (data / "datalist.json").write_text(json.dumps({"cases": cases}))
    config = {"format": "nifti", "data_root": "data", "modalities": ["t2"], "label_map": LABEL_MAP, **overrides}
    path = tmp_path / "omnifm_site.json"
    path.write_text(json.dumps(config))
    return path


def test_usable_site_exits_0_and_prints_one_line_per_bad_case(tmp_path: Path, capsys):
    config = _site(tmp_path, ["a.nii.gz", "broken.nii.gz", "b.nii.gz", "nan.nii.gz", "c.nii.gz"])
    assert main(["--site-config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "case 1: CaseError: not a volume",
        "case 3: image has 1 non-finite values (NaN/inf)",
        "3 good / 2 bad of 5 cases, 0 site problems: usable",
    ]


def test_output_never_names_patients_or_paths(tmp_path: Path, capsys):
    config = _site(tmp_path, ["broken.nii.gz", "nan.nii.gz", "x.nii.gz"])
    main(["--site-config", str(config)])
    captured = capsys.readouterr()
    assert NAME not in captured.out + captured.err and str(tmp_path) not in captured.out + captured.err


def test_unusable_site_exits_1(tmp_path: Path, capsys):
    config = _site(tmp_path, ["broken.nii.gz", "nan.nii.gz"])
    assert main(["--site-config", str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("case ")] == [
        "case 0: CaseError: not a volume",
        "case 1: image has 1 non-finite values (NaN/inf)",
    ]
    assert any(line.startswith("site: ") for line in out)
    assert out[-1].endswith("NOT usable")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"split": {"val_fraction": 1.5}}, '"split.val_fraction" must be in (0, 1), got 1.5'),
        ({"modalities": ["xray"]}, '"modalities[0]"'),
        ({"datalist": "other.json"}, '"datalist" \'other.json\' does not exist'),
        ({"labelmap": {}}, '"labelmap" is not a known field'),
    ],
)
def test_bad_config_exits_2_with_the_field(tmp_path: Path, capsys, overrides: dict, fragment: str):
    config = _site(tmp_path, ["a.nii.gz", "b.nii.gz"], **overrides)
    assert main(["--site-config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: omnifm_site.json: ") and fragment in captured.err


def test_missing_config_and_broken_datalist_exit_2(tmp_path: Path, capsys):
    assert main(["--site-config", str(tmp_path / "nothing.json")]) == 2
    config = _site(tmp_path, ["a.nii.gz"])
    (tmp_path / "data" / "datalist.json").write_text("{")
    assert main(["--site-config", str(config)]) == 2
    assert "error: datalist: " in capsys.readouterr().err


def test_classes_option(tmp_path: Path, capsys):
    config = _site(tmp_path, ["a.nii.gz", "b.nii.gz"])
    assert main(["--site-config", str(config), "--classes", "background", "necrotic", "edema", "enhancing"]) == 0
    assert main(["--site-config", str(config), "--classes", "background", "edema"]) == 2
    assert "uses class name(s) ['necrotic']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--site-config", str(config), "--classes", "background", "background"])
    assert info.value.code == 2


def test_default_classes_follow_raw_values(tmp_path: Path):
    seen = []

    def loader(case, spacing=None, label_values=None, normalize=True):
        seen.append(label_values)
        return _load_case(case, spacing, label_values, normalize)

    report = verify_site(_site(tmp_path, ["a.nii.gz", "b.nii.gz"]), loader=loader)
    assert report.usable
    assert seen[0] == {0: 0, 1: 1, 2: 2}  # background, necrotic, edema by raw value


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["omnifm-verify-data"] == "omnifm.tools.verify_data:main"
