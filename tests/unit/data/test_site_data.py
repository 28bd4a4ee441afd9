from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omnifm.data.phantom import write_phantom_site
from omnifm.data.site import (
    find_site_config,
    load_site_data,
    simulator_config,
    site_index,
)
from omnifm.data.integrity import resolve_cases
from omnifm.data.loading import load_volumes
from omnifm.data.site_config import SiteConfigError, parse_site_config
from omnifm.tasks.segmentation import SegTask

SHAPE = (32, 32, 8)


@pytest.mark.parametrize("name, index", [("site-1", 0), ("site-3", 2), ("hospital-12", 11)])
def test_site_index_from_the_name(name, index):
    assert site_index(name) == index


def test_named_sites_get_a_stable_index():
    assert site_index("charite") == site_index("charite")


def test_a_real_site_without_config_stops_with_instructions(tmp_path):
    with pytest.raises(SiteConfigError, match="no omnifm_site.json in its local/ folder.*site_configs"):
        find_site_config(tmp_path, simulate=False, fallback=simulator_config("site-1", 4, SHAPE, 0.25, 0))


def test_only_the_simulator_falls_back_to_the_phantom(tmp_path):
    config, source = find_site_config(tmp_path, simulate=True, fallback=simulator_config("site-2", 4, SHAPE, 0.25, 0))
    assert config.format == "phantom" and config.modalities == ("ct",)
    assert "simulator default" in source


def test_a_site_config_wins_over_the_simulator_default(tmp_path):
    (tmp_path / "omnifm_site.json").write_text(json.dumps({
        "format": "phantom", "modalities": ["pet"], "label_map": {"0": "background", "1": "necrotic"},
        "phantom": {"cases": 4, "seed": 1, "shape": list(SHAPE)},
    }))
    config, source = find_site_config(tmp_path, simulate=True, fallback=simulator_config("site-1", 4, SHAPE, 0.25, 0))
    assert config.modalities == ("pet",) and source == "local/omnifm_site.json"


def test_phantom_site_is_generated_checked_and_split(tmp_path):
    config = simulator_config("site-3", 6, SHAPE, 0.34, 0)
    data = load_site_data(config, tmp_path, "site-3", SegTask())
    assert data.synthetic and data.skipped == 0
    assert len(data.train) == 4 and len(data.val) == 2 and data.test == []
    assert max(int(c["label"].max()) for c in data.train + data.val) <= 3, "BraTS 4 is mapped to class 3"
    assert "SYNTHETIC" in data.description and str(tmp_path) not in data.description
    assert load_site_data(config, tmp_path, "site-3", SegTask()) is data, "cached: the gate runs once per process"


def test_bad_cases_are_skipped_and_reported_by_index_only(tmp_path):
    root = tmp_path / "Doe_Jane_data"
    entries = write_phantom_site(root, "t1", 5, seed=0, shape=SHAPE)
    Path(entries[2]["image"]).write_bytes(b"not a nifti")
    (tmp_path / "omnifm_site.json").write_text(json.dumps({
        "format": "nifti", "data_root": str(root), "modalities": ["t1"],
        "label_map": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"},
        "split": {"val_fraction": 0.25, "seed": 0},
    }))
    config, _ = find_site_config(tmp_path, simulate=False, fallback=simulator_config("x", 4, SHAPE, 0.25, 0))
    data = load_site_data(config, tmp_path, "site-1", SegTask())
    assert data.skipped == 1 and not data.synthetic
    assert len(data.problems) == 1 and data.problems[0].startswith("case 2:")
    assert "Doe" not in data.problems[0] and "case_002" not in data.problems[0]
    assert len(data.train) + len(data.val) == 4


def test_a_test_fraction_holds_out_a_test_split(tmp_path):
    config = simulator_config("site-2", 8, SHAPE, 0.25, 0, test_fraction=0.25)
    data = load_site_data(config, tmp_path, "site-2", SegTask())
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    assert "4 train / 2 val / 2 test cases" in data.description
    ids = {id(c["image"]) for c in data.train} | {id(c["image"]) for c in data.val}
    assert not ids & {id(c["image"]) for c in data.test}


CT_CONFIG = {"format": "nifti", "modalities": ["ct"], "label_map": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}}


def _ct_site(tmp_path, normalization):
    raw = {**CT_CONFIG, "data_root": str(tmp_path / "ct"), **({"normalization": normalization} if normalization else {})}
    return load_site_data(parse_site_config(raw, tmp_path), tmp_path, "site-1", SegTask())


def test_ct_sites_use_the_brain_window_unless_their_config_sets_one(tmp_path):
    write_phantom_site(tmp_path / "ct", "ct", 3, seed=0, shape=SHAPE)
    raw = load_volumes(resolve_cases(parse_site_config({**CT_CONFIG, "data_root": str(tmp_path / "ct")}, tmp_path)),
                       normalize=False)
    hu = np.concatenate([v["image"].ravel() for v in raw])
    for normalization, (low, high) in [(None, (0, 80)), ({"ct_window": [-100, 200]}, (-100, 200))]:
        data = _ct_site(tmp_path, normalization)
        values = np.concatenate([v["image"].ravel() for v in data.train + data.val])  # every case, split order aside
        np.testing.assert_allclose(np.sort(values), np.sort(np.clip((hu - low) / (high - low), 0, 1)), atol=1e-5)
