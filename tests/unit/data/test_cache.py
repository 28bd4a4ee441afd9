"""The phantom site-data cache: a new worker process reads the checked cases back instead of
re-running ingestion, the integrity gate and normalisation; any change to data or config misses."""

from __future__ import annotations

import os

import numpy as np
import pytest

from omnifm.data import cache, site
from omnifm.data.site import load_site_data, simulator_config
from omnifm.tasks.segmentation import SegTask

TASK = SegTask.from_dict(None)


def _load(tmp_path, **overrides):
    args = {"cases": 4, "shape": (16, 16, 8), "val_fraction": 0.25, "seed": 0, **overrides}
    config = simulator_config("site-1", args["cases"], args["shape"], args["val_fraction"], args["seed"])
    site._CACHE.clear()  # what a new simulator worker process starts with
    return load_site_data(config, tmp_path, "site-1", TASK)


def _files(tmp_path):
    return sorted((tmp_path / "omnifm_phantom" / "site-1" / cache.CACHE_DIR).glob("site_data-*.pt"))


def _no_rebuild(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cache should have answered")
    monkeypatch.setattr(site, "_verified_site_data", fail)


def test_a_new_process_reads_the_same_cases_from_the_cache(tmp_path, monkeypatch):
    first = _load(tmp_path)
    assert len(_files(tmp_path)) == 1
    _no_rebuild(monkeypatch)
    second = _load(tmp_path)
    assert second.description == first.description and second.synthetic and second.skipped == first.skipped
    for a, b in zip(first.train + first.val, second.train + second.val, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype


def test_a_changed_setting_or_file_misses(tmp_path):
    _load(tmp_path)
    _load(tmp_path, val_fraction=0.5)
    assert len(_files(tmp_path)) == 2, "another split is another key"
    image = next((tmp_path / "omnifm_phantom" / "site-1" / "images").iterdir())
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _load(tmp_path)
    assert len(_files(tmp_path)) == 3, "a modified image file is a new key"


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    first = _load(tmp_path)
    (path,) = _files(tmp_path)
    path.write_bytes(b"not a torch file")
    again = _load(tmp_path)
    assert again.description == first.description
    assert cache.load_cached(path.parent.parent, path.stem.split("-", 1)[1]) is not None, "rewritten"


def test_an_unwritable_folder_only_skips_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cache.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "denied")))
    data = _load(tmp_path)
    assert data.train and not _files(tmp_path)


@pytest.mark.parametrize("value", [np.float32(1.5), (np.int64(2), 3), "t1"])
def test_plain_values_survive_weights_only_loading(tmp_path, value):
    fields = {"train": [{"image": np.zeros((2, 2), np.float32), "extra": value}], "val": [], "test": [],
              "description": "d", "synthetic": True, "skipped": 0, "problems": []}
    cache.save_cached(tmp_path, "k", fields)
    back = cache.load_cached(tmp_path, "k")
    assert back["train"][0]["extra"] == (value.item() if isinstance(value, np.generic) else
                                         tuple(v.item() if isinstance(v, np.generic) else v for v in value)
                                         if isinstance(value, tuple) else value)
