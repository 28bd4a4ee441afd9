"""Tests of the site data configuration (omnifm_site.json)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from omnifm.data.site_config import (
    DEFAULT_DATALIST,
    PhantomSpec,
    SiteConfig,
    SiteConfigError,
    check_classes,
    load_site_config,
    parse_site_config,
)

BRATS = ["background", "necrotic", "edema", "enhancing"]
NIFTI = {
    "format": "nifti",
    "data_root": "data",
    "modalities": ["t1", "flair"],
    "label_map": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"},
    "split": {"val_fraction": 0.2, "seed": 3},
    "spacing": [1.0, 1.0, 2.5],
}
PHANTOM = {"format": "phantom", "modalities": ["ct"], "label_map": {"0": "background", "1": "tumour"}}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A config folder with ``data/datalist.json`` next to it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / DEFAULT_DATALIST).write_text('{"cases": []}')
    return tmp_path


def _with(config: dict, **changes) -> dict:
    result = copy.deepcopy(config)
    for key, value in changes.items():
        if value is _DROP:
            result.pop(key, None)
        else:
            result[key] = value
    return result


_DROP = object()

BAD = [
    # (config, field named in the message, another expected fragment)
    (_with(NIFTI, format=_DROP), '"format"', "is missing"),
    (_with(NIFTI, format="analyze"), '"format"', "nifti, dicom, phantom"),
    (_with(NIFTI, modalites=["t1"]), '"modalites"', "allowed: format, data_root"),
    (_with(NIFTI, modalities=[]), '"modalities"', "non-empty list"),
    (_with(NIFTI, modalities=_DROP), '"modalities"', "non-empty list"),
    (_with(NIFTI, modalities=["t1", "mri"]), '"modalities[1]"', "'mri'"),
    (_with(NIFTI, modalities=["t1", "t1"]), '"modalities"', "twice"),
    (_with(NIFTI, label_map={"1": "tumour"}), '"label_map"', 'map "0" to "background"'),
    (_with(NIFTI, label_map={"0": "tumour", "1": "background"}), '"label_map"', '"0" to "background"'),
    (_with(NIFTI, label_map={"0": "background", "one": "tumour"}), '"label_map" key', "'one'"),
    (_with(NIFTI, label_map={"0": "background", "-1": "tumour"}), '"label_map" key', "'-1'"),
    (_with(NIFTI, label_map={"0": "background", "1": ""}), '"label_map.1"', "class name"),
    (_with(NIFTI, label_map={}), '"label_map"', "non-empty object"),
    (_with(NIFTI, split={"val_fraction": 1.5}), '"split.val_fraction"', "must be in (0, 1), got 1.5"),
    (_with(NIFTI, split={"val_fraction": 0}), '"split.val_fraction"', "got 0"),
    (_with(NIFTI, split={"val_fraction": "0.2"}), '"split.val_fraction"', "got '0.2'"),
    (_with(NIFTI, split={"seed": -1}), '"split.seed"', ">= 0"),
    (_with(NIFTI, split={"fraction": 0.2}), '"split.fraction"', "allowed: val_fraction, test_fraction, seed"),
    (_with(NIFTI, split={"test_fraction": -0.1}), '"split.test_fraction"', "got -0.1"),
    (_with(NIFTI, split={"test_fraction": 1}), '"split.test_fraction"', "got 1"),
    (_with(NIFTI, split={"val_fraction": 0.5, "test_fraction": 0.5}), '"split.val_fraction" + "split.test_fraction"', "< 1"),
    (_with(NIFTI, normalization={"ct_window": [80, 0]}), '"normalization.ct_window"', "low < high"),
    (_with(NIFTI, normalization={"ct_window": [0, "80"]}), '"normalization.ct_window"', "[low, high]"),
    (_with(NIFTI, normalization={"ct_window": [0, float("inf")]}), '"normalization.ct_window"', "inf"),
    (_with(NIFTI, normalization={"window": [0, 80]}), '"normalization.window"', "allowed: ct_window"),
    (_with(NIFTI, normalization=[0, 80]), '"normalization"', "object"),
    (_with(NIFTI, split=0.2), '"split"', "object"),
    (_with(NIFTI, spacing=[1.0, -1.0, 1.0]), '"spacing[1]"', "got -1.0"),
    (_with(NIFTI, spacing=[1.0, 1.0]), '"spacing"', "[x, y, z]"),
    (_with(NIFTI, spacing=[1.0, 1.0, float("nan")]), '"spacing[2]"', "nan"),
    (_with(NIFTI, data_root=_DROP), '"data_root"', "is missing"),
    (_with(NIFTI, data_root="no_such_folder"), '"data_root"', "not an existing folder"),
    (_with(NIFTI, data_root=7), '"data_root"', "folder path"),
    (_with(NIFTI, datalist="missing.json"), '"datalist"', "does not exist"),
    (_with(NIFTI, datalist="/abs/datalist.json"), '"datalist"', "file name inside"),
    (_with(NIFTI, phantom={"cases": 4}), '"phantom"', "only used with format"),
    (_with(PHANTOM, phantom={"cases": 1}), '"phantom.cases"', ">= 2"),
    (_with(PHANTOM, phantom={"shape": [64, 64, 4]}), '"phantom.shape"', ">= 8"),
    (_with(PHANTOM, phantom={"size": 4}), '"phantom.size"', "allowed: cases, seed, shape"),
]


@pytest.mark.parametrize(("config", "field", "fragment"), BAD, ids=[f"{f}-{m}" for _, f, m in BAD])
def test_bad_config_names_the_field(base: Path, config: dict, field: str, fragment: str):
    with pytest.raises(SiteConfigError) as info:
        parse_site_config(config, base)
    message = str(info.value)
    assert message.startswith(f"omnifm_site.json: {field}")
    assert fragment in message
    assert "—" in message, "every error says how to fix it"
    assert message.endswith("(see site_configs/README.md)")


def test_error_wording_matches_the_documented_example(base: Path):
    expected = r'"split.val_fraction" must be in \(0, 1\), got 1.5 — set it to e.g. 0.2'
    with pytest.raises(SiteConfigError, match=expected):
        parse_site_config(_with(NIFTI, split={"val_fraction": 1.5}), base)


def test_site_config_error_is_a_value_error():
    assert issubclass(SiteConfigError, ValueError)


def test_good_nifti_config(base: Path):
    config = parse_site_config(NIFTI, base)
    assert config.format == "nifti"
    assert config.data_root == (base / "data").resolve()
    assert config.datalist_path == config.data_root / DEFAULT_DATALIST
    assert config.modalities == ("t1", "flair")
    assert config.label_map == ((0, "background"), (1, "necrotic"), (2, "edema"), (4, "enhancing"))
    assert (config.val_fraction, config.split_seed) == (0.2, 3)
    assert config.spacing == (1.0, 1.0, 2.5)
    assert config.phantom is None


def test_good_dicom_config_with_defaults_and_absolute_root(base: Path):
    data = {"format": "dicom", "data_root": str(base / "data"), "modalities": ["ct"], "label_map": {"0": "background"}}
    config = parse_site_config(data, "/somewhere/else")
    assert config.data_root == (base / "data").resolve()
    assert (config.val_fraction, config.split_seed, config.spacing) == (0.2, 0, None)
    assert (config.test_fraction, config.ct_window) == (0.0, None)


def test_test_split_and_ct_window(base: Path):
    config = parse_site_config(_with(NIFTI, split={"val_fraction": 0.2, "test_fraction": 0.25},
                                     normalization={"ct_window": [-20, 100]}), base)
    assert (config.val_fraction, config.test_fraction, config.ct_window) == (0.2, 0.25, (-20.0, 100.0))


def test_good_phantom_config_needs_no_paths(tmp_path: Path):
    config = parse_site_config(_with(PHANTOM, phantom={"cases": 6, "shape": [16, 16, 8]}), tmp_path)
    assert config.data_root is None and config.datalist_path is None
    assert config.phantom == PhantomSpec(cases=6, seed=0, shape=(16, 16, 8))
    assert parse_site_config(PHANTOM, tmp_path).phantom == PhantomSpec()
    rooted = parse_site_config(_with(PHANTOM, data_root="not_yet"), tmp_path)
    assert rooted.data_root == (tmp_path / "not_yet").resolve()


def test_comment_keys_are_ignored(base: Path):
    assert parse_site_config(_with(NIFTI, _comment="hello"), base) == parse_site_config(NIFTI, base)


def test_check_paths_false_skips_existence(tmp_path: Path):
    config = parse_site_config(_with(NIFTI, data_root="/no/such/root"), tmp_path, check_paths=False)
    assert config.data_root == Path("/no/such/root").resolve()


def test_config_is_frozen_and_hashable(base: Path):
    config = parse_site_config(NIFTI, base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.format = "dicom"  # type: ignore[misc]
    assert hash(config) == hash(parse_site_config(NIFTI, base))


def test_load_site_config_resolves_relative_to_the_file(base: Path):
    path = base / "omnifm_site.json"
    path.write_text(json.dumps(NIFTI))
    assert load_site_config(path) == parse_site_config(NIFTI, base)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("{not json", r"is not valid JSON \(line 1"), ("[1, 2]", "must contain a JSON object")],
)
def test_load_site_config_bad_file(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "omnifm_site.json"
    path.write_text(text)
    with pytest.raises(SiteConfigError, match=fragment):
        load_site_config(path)


def test_load_site_config_missing_file(tmp_path: Path):
    with pytest.raises(SiteConfigError, match="no config file at .* copy a template from site_configs/"):
        load_site_config(tmp_path / "omnifm_site.json")


def test_label_values_map_raw_values_to_federation_indices(base: Path):
    config = parse_site_config(NIFTI, base)
    assert config.label_values(BRATS) == {0: 0, 1: 1, 2: 2, 4: 3}
    assert config.label_values(["background", "enhancing", "edema", "necrotic", "other"]) == {0: 0, 1: 3, 2: 2, 4: 1}


def test_label_values_merge_raw_values_into_one_class(base: Path):
    merged = {"0": "background", "1": "tumour", "2": "tumour", "4": "tumour"}
    config = parse_site_config(_with(NIFTI, label_map=merged), base)
    assert config.class_names() == ["background", "tumour"]
    assert config.label_values(["background", "tumour"]) == {0: 0, 1: 1, 2: 1, 4: 1}


def test_label_values_unknown_class_is_named(base: Path):
    config = parse_site_config(NIFTI, base)
    with pytest.raises(SiteConfigError, match=r'"label_map" uses class name\(s\) \[\'necrotic\'\]'):
        config.label_values(["background", "edema", "enhancing"])


@pytest.mark.parametrize("classes", [[], ["background", "background"], ["background", ""], "background"])
def test_bad_classes(classes):
    with pytest.raises(ValueError, match="classes"):
        check_classes(classes)


def test_class_names_in_raw_value_order(base: Path):
    shuffled = {"4": "enhancing", "0": "background", "2": "edema", "1": "necrotic"}
    assert parse_site_config(_with(NIFTI, label_map=shuffled), base).class_names() == BRATS


def test_describe_is_one_line_without_paths(tmp_path: Path):
    root = tmp_path / "DOE^JANE"
    root.mkdir()
    (root / "dl.json").write_text("{}")
    config = parse_site_config(_with(NIFTI, data_root=str(root), datalist="dl.json"), tmp_path)
    text = config.describe()
    assert text == "format nifti, modalities t1+flair, 4 classes, spacing 1x1x2.5, val_fraction 0.2"
    assert "DOE" not in text and str(tmp_path) not in text and "\n" not in text


def test_site_config_defaults_are_consistent():
    config = SiteConfig(format="phantom", modalities=("t1",), label_map=((0, "background"),))
    assert config.datalist == DEFAULT_DATALIST and config.spacing is None
