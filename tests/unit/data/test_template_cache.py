"""The prepared MNI template's file cache: bit-identical to a fresh preparation, and never in the way."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from omnifm.data.phantom import template as T


def _small_mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 24^3 stand-in for nilearn's templates: a ball of white matter in a shell of grey matter."""
    grid = np.indices((24, 24, 24)).astype(np.float32) - 11.5
    radius = np.sqrt((grid**2).sum(0))
    wm = (radius < 7).astype(np.float32)
    gm = ((radius >= 7) & (radius < 10)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -24.0
    return gm, wm, radius < 10, affine


@pytest.fixture
def small(monkeypatch, tmp_path):
    """The small stand-in behind ``_template()``, a fresh cache folder; the real template restored after."""
    calls = []

    def load():
        calls.append(1)
        return _small_mni()

    monkeypatch.setattr(T, "_load_mni152", load)
    monkeypatch.setenv("OMNIFM_CACHE_DIR", str(tmp_path / "cache"))
    T._template.cache_clear()
    yield calls
    T._template.cache_clear()


def _assert_identical(a: T._Template, b: T._Template) -> None:
    for name in T._FIELDS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    assert isinstance(b.voxel, float) and isinstance(b.z_range[0], float)


def test_a_cached_template_is_bit_identical_and_skips_the_preparation(small, tmp_path):
    fresh = T._prepare_template()
    first = T._template()
    assert len(small) == 2, "the first call prepares the template (and writes the cache)"
    files = list((tmp_path / "cache").glob("mni152_template-*.npz"))
    assert len(files) == 1
    T._template.cache_clear()
    again = T._template()
    assert len(small) == 2, "a new process (cleared in-memory cache) reads the file, not nilearn"
    _assert_identical(fresh, first)
    _assert_identical(fresh, again)
    assert not again.channels.flags.writeable, "the shared template stays read-only"


def test_a_corrupt_cache_file_is_ignored_and_rewritten(small, tmp_path, caplog):
    T._template()
    (path,) = (tmp_path / "cache").glob("*.npz")
    path.write_bytes(b"not an npz file")
    T._template.cache_clear()
    with caplog.at_level(logging.WARNING):
        template = T._template()
    assert len(small) == 2 and "unreadable template cache" in caplog.text and str(path) in caplog.text
    _assert_identical(T._prepare_template(), template)
    T._template.cache_clear()
    T._template()
    assert len(small) == 3, "the rewritten file is read back (the third call was _prepare_template above)"


def test_an_empty_cache_dir_setting_disables_the_file(small, monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIFM_CACHE_DIR", "")
    assert T.cache_dir() is None
    T._template()
    T._template.cache_clear()
    T._template()
    assert len(small) == 2, "prepared in every process"
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_dir_still_gives_the_template(small, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OMNIFM_CACHE_DIR", str(blocker / "cache"))
    template = T._template()
    assert template.channels.shape[0] == 3
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file is left behind"


def test_the_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("OMNIFM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert T.cache_dir() == tmp_path / "omnifm"
